// cloudpilot's pages: times in the browser's zone, and live regions refreshed every 5 s.
// No inline script anywhere (the Content-Security-Policy forbids it): this file is all there is.
"use strict";

const POLL_MS = 5000;

function localTimes(root) {
  for (const el of root.querySelectorAll("time[datetime]")) {
    const at = new Date(el.getAttribute("datetime"));
    if (!isNaN(at)) {
      el.textContent = at.toLocaleString();
      el.title = el.getAttribute("datetime");
    }
  }
}

// Replace a live region with its fragment from the server; skipped while the user is in a form inside it, so
// typing or tabbing through it is never interrupted.
async function refresh(region) {
  if (document.hidden || region.contains(document.activeElement)) return;
  let response;
  try {
    response = await fetch(region.dataset.live, { credentials: "same-origin", headers: { Accept: "text/html" } });
  } catch (err) {
    region.dataset.stale = "true"; // offline for a moment: keep what is shown
    return;
  }
  if (response.status === 401) {
    window.location.assign("/ui/login");
    return;
  }
  if (!response.ok) {
    region.dataset.stale = "true";
    return;
  }
  const html = await response.text();
  if (region.contains(document.activeElement)) return;
  region.innerHTML = html;
  delete region.dataset.stale;
  localTimes(region);
}

document.addEventListener("DOMContentLoaded", () => {
  localTimes(document);
  for (const region of document.querySelectorAll("[data-live]")) {
    window.setInterval(() => refresh(region), POLL_MS);
  }
});
