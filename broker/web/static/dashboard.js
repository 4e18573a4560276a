// Refresh the dashboard's numbers every 5 seconds from the JSON API.
(function () {
  function pick(data, path) {
    return path.split(".").reduce(function (o, k) { return o == null ? o : o[k]; }, data);
  }
  function refresh() {
    fetch("/api/dashboard", {credentials: "same-origin"})
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) {
        if (!data) { return; }
        document.querySelectorAll("[data-key]").forEach(function (el) {
          var value = pick(data, el.getAttribute("data-key"));
          if (value === undefined) { return; }
          var target = el.querySelector("a") || el;
          target.textContent = value;
        });
      })
      .catch(function () {});
  }
  setInterval(refresh, 5000);
})();
