// zen-gateway console: refreshes elements that carry data-refresh (a URL
// of an HTML fragment) every data-every ms, while the tab is visible.
"use strict";
document.querySelectorAll("[data-refresh]").forEach(function (el) {
  var url = el.getAttribute("data-refresh");
  var every = parseInt(el.getAttribute("data-every"), 10) || 5000;
  function refresh() {
    if (document.hidden) return;
    fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (r) {
        if (r.status === 401) { window.location.assign("/console/login"); return null; }
        return r.ok ? r.text() : null;
      })
      .then(function (html) { if (html !== null) el.innerHTML = html; })
      .catch(function () {});
  }
  setInterval(refresh, every);
});
