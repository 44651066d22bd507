"use strict";
// The releases pages: ask for the page again every few seconds and redraw its live part when the
// orchestrator's answer changed (times are absolute, so an unchanged rollout redraws nothing).
(() => {
  const EVERY_MS = 2000;
  const mark = document.getElementById("live-mark");
  const tick = async () => {
    try {
      const r = await fetch(location.pathname, { headers: { Accept: "text/html" }, credentials: "same-origin" });
      if (r.ok) {
        const doc = new DOMParser().parseFromString(await r.text(), "text/html");
        const fresh = doc.getElementById("live"), here = document.getElementById("live");
        if (fresh && here && fresh.innerHTML !== here.innerHTML) here.innerHTML = fresh.innerHTML;
        if (mark) mark.textContent = `live · ${new Date().toLocaleTimeString()}`;
      } else if (mark) mark.textContent = `reconnecting… (${r.status})`;
    } catch (e) {
      if (mark) mark.textContent = "reconnecting…";
    }
    setTimeout(tick, EVERY_MS);
  };
  setTimeout(tick, EVERY_MS);
})();
