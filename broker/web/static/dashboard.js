// Keep the dashboard current: every 10 seconds, fetch the page again and swap in the
// panels marked data-live (matched by id). The server renders them, chart included.
(function () {
  function refresh() {
    fetch(window.location.href, {credentials: "same-origin", headers: {"Accept": "text/html"}})
      .then(function (r) { return r.ok && !r.redirected ? r.text() : null; })
      .then(function (html) {
        if (!html) { return; }
        var fresh = new DOMParser().parseFromString(html, "text/html");
        document.querySelectorAll("[data-live]").forEach(function (panel) {
          var next = fresh.getElementById(panel.id);
          if (next) { panel.replaceWith(document.importNode(next, true)); }
        });
      })
      .catch(function () {});
  }
  setInterval(refresh, 10000);
})();
