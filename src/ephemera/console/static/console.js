// ephemera console: live updates. Every page works without this file; it only refreshes
// parts of a page when something happens, instead of waiting for a reload.
//
// An element with data-events="<url>" follows that Server-Sent Events stream; on each event
// it sends htmx's "refresh" to every element matching its data-refresh selector (those carry
// hx-get with hx-trigger="refresh").
(function () {
  "use strict";

  function follow(element) {
    var url = element.getAttribute("data-events");
    var selector = element.getAttribute("data-refresh") || "[data-live]";
    if (!url || !window.EventSource) return;
    var source = new EventSource(url);
    var pending = null;
    function refresh() {
      // Coalesce a burst of events (a task's progress) into one refresh per 250 ms.
      if (pending) return;
      pending = setTimeout(function () {
        pending = null;
        document.querySelectorAll(selector).forEach(function (target) {
          if (window.htmx) window.htmx.trigger(target, "refresh");
        });
      }, 250);
    }
    source.onmessage = refresh;
    // The event types the server sends (ephemera.http.events.EVENT_TYPES).
    ["session.opened", "session.closing", "session.closed", "artifact.created",
     "artifact.deleted", "task.state", "task.progress", "reset"].forEach(function (type) {
      source.addEventListener(type, refresh);
    });
  }

  function start() {
    document.querySelectorAll("[data-events]").forEach(follow);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
