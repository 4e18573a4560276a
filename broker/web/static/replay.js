// A replay's progress: poll its JSON (data-url) every second until every message has an
// outcome, updating the bar and the counts; then fill in the summary (still failing by
// reason). Text only (textContent): nothing from the server is parsed as HTML.
(function () {
  var box = document.getElementById("replay-progress");
  if (!box || box.dataset.finished === "true") { return; }
  function field(name) { return box.querySelector("[data-key='" + name + "']"); }
  function show(run) {
    var bar = field("bar");
    bar.max = run.total || 1;
    bar.value = run.total ? run.done : 1;
    ["done", "total", "percent", "passed", "failing", "waiting"].forEach(function (k) {
      field(k).textContent = String(run[k]);
    });
    field("failing").classList.toggle("bad", run.failing > 0);
    field("state").textContent = run.finished ? "finished" : "running";
    if (!run.finished) { return; }
    var body = field("reasons");
    body.replaceChildren();
    run.reasons.forEach(function (r) {
      var row = document.createElement("tr");
      var reason = document.createElement("td");
      reason.className = "mono wrap";
      reason.textContent = r.reason;
      var count = document.createElement("td");
      count.className = "num";
      count.textContent = String(r.count);
      row.append(reason, count);
      body.append(row);
    });
    field("no-failures").hidden = run.reasons.length > 0;
    field("summary").hidden = false;
  }
  function poll() {
    fetch(box.dataset.url, {credentials: "same-origin", headers: {"Accept": "application/json"}})
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (run) {
        if (run) { show(run); }
        if (!run || !run.finished) { setTimeout(poll, 1000); }
      })
      .catch(function () { setTimeout(poll, 2000); });
  }
  poll();
})();
