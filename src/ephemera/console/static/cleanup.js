// The cleanup form: show only the parameters the chosen operation reads (and send no others).
// Without this file every parameter shows, each with a hint naming the operations that read it.
(function () {
  "use strict";

  function start() {
    var select = document.getElementById("operation");
    if (!select) return;
    var groups = document.querySelectorAll("[data-operations]");
    function update() {
      groups.forEach(function (group) {
        var used = group.getAttribute("data-operations").split(" ").indexOf(select.value) >= 0;
        group.hidden = !used;
        group.querySelectorAll("input").forEach(function (input) {
          input.disabled = !used;
        });
      });
    }
    select.addEventListener("change", update);
    update();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
