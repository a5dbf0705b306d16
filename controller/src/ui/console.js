// berth console: the live parts of its pages. Served by the controller from
// /ui/static/console.js; the pages carry no inline script (their CSP allows none), only
// data- attributes saying what to follow.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  for (const el of document.querySelectorAll("[data-refresh]")) refresh(el);
  const log = document.getElementById("log");
  if (log && log.dataset.stream) follow(log);
});

// Replaces el's content with the HTML fragment at data-refresh every second (the server
// escaped it). A redirect (the session ended) or an error status reloads the page, which
// then shows the login or the error page; a network error is tried again.
function refresh(el) {
  const tick = async () => {
    try {
      const r = await fetch(el.dataset.refresh, { cache: "no-store" });
      if (r.redirected || !r.ok) {
        location.reload();
        return;
      }
      el.innerHTML = await r.text();
    } catch (e) {
      // Controller restarting or network gone: the next tick tries again.
    }
    setTimeout(tick, 1000);
  };
  setTimeout(tick, 1000);
}

// Appends a step's log from its event stream (see ui/logs.rs for the events) and keeps
// the state badge and the detail line current. The EventSource resumes by itself after a
// dropped connection; on `end` it is closed, or it would start the stream over.
function follow(pre) {
  const badge = document.getElementById("step-state");
  const detail = document.getElementById("step-detail");
  const status = document.getElementById("stream-status");
  const show = (s) => {
    badge.textContent = s.state;
    badge.className = "badge st-" + s.state;
    detail.textContent = s.detail;
  };
  const append = (text) => {
    const atBottom = window.innerHeight + window.scrollY >= document.body.scrollHeight - 40;
    pre.append(document.createTextNode(text));
    if (atBottom) window.scrollTo(0, document.body.scrollHeight);
  };
  status.textContent = "following";
  const es = new EventSource(pre.dataset.stream);
  es.addEventListener("log", (e) => append(JSON.parse(e.data)));
  es.addEventListener("attempt", (e) => append(`\n--- attempt ${JSON.parse(e.data)} ---\n`));
  es.addEventListener("state", (e) => show(JSON.parse(e.data)));
  es.addEventListener("end", (e) => {
    es.close();
    show(JSON.parse(e.data));
    status.textContent = "complete";
    pre.classList.add("ended");
  });
  es.addEventListener("error", () => {
    if (es.readyState === EventSource.CLOSED) status.textContent = "disconnected; reload to follow again";
    else status.textContent = "reconnecting";
  });
  es.addEventListener("open", () => {
    status.textContent = "following";
  });
}
