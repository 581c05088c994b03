// Live updates by short polling: every 2 s the page is fetched again and its #live part
// replaced. Without JavaScript the pages read the same, only without refreshing.
(function () {
  var live = document.getElementById("live");
  var box = document.getElementById("follow");
  if (!live || !box) return;
  box.disabled = false;
  function tick() {
    if (!box.checked) return;
    fetch(window.location.href, { credentials: "same-origin", headers: { "X-Live": "1" } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (!html) return;
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = doc.getElementById("live");
        if (fresh) live.replaceChildren.apply(live, Array.from(fresh.childNodes));
        live.setAttribute("data-updated", String(Date.now()));
      })
      .catch(function () {});
  }
  setInterval(tick, 2000);
})();
