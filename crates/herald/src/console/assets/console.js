// Herald console: the Now page refreshes its figures every 5 s. Everything
// else is plain HTML forms and works without this script.
(function () {
  "use strict";
  var now = document.getElementById("now");
  if (!now) { return; }
  var url = now.getAttribute("data-refresh");
  function refresh() {
    fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) { if (html !== null) { now.innerHTML = html; } })
      .catch(function () { /* the next refresh tries again */ });
  }
  setInterval(refresh, 5000);
})();
