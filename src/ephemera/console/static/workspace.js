// ephemera console: uploads of a workspace over tus (resumable, one <progress> per file).
//
// Without this file the upload form posts one file as multipart. With it, choosing files
// (several at once) or dropping them on the drop zone uploads each over tus at once, to the
// console's tus routes, which take the sign-in cookie and the form token (X-CSRF-Token); an
// upload cut off resumes where it stopped when the same file is chosen again.
(function () {
  "use strict";

  function refresh(form) {
    var selector = form.getAttribute("data-refresh");
    var targets = selector ? document.querySelectorAll(selector) : [];
    if (window.htmx && targets.length) {
      targets.forEach(function (target) { window.htmx.trigger(target, "refresh"); });
    } else {
      window.location.reload();
    }
  }

  function setUp(form) {
    if (!window.tus || !window.tus.isSupported) return;
    var endpoint = form.getAttribute("data-tus");
    var csrf = form.getAttribute("data-csrf");
    var input = form.querySelector("input[type=file]");
    var kind = form.querySelector("select[name=kind]");
    var list = form.querySelector(".uploads");
    var zone = form.querySelector(".dropzone");
    var button = form.querySelector("button[type=submit]");
    var running = 0;

    input.multiple = true;
    if (button) button.hidden = true;
    form.classList.add("scripted");

    function upload(file) {
      var item = document.createElement("li");
      var name = document.createElement("span");
      name.className = "name";
      name.textContent = file.name;
      var bar = document.createElement("progress");
      bar.max = 100;
      bar.value = 0;
      bar.setAttribute("aria-label", "Upload of " + file.name);
      var status = document.createElement("span");
      status.className = "status";
      status.textContent = "starting";
      item.appendChild(name);
      item.appendChild(bar);
      item.appendChild(status);
      list.appendChild(item);
      running += 1;

      var transfer = new window.tus.Upload(file, {
        endpoint: endpoint,
        headers: { "X-CSRF-Token": csrf },
        metadata: {
          filename: file.name,
          filetype: file.type || "application/octet-stream",
          kind: kind ? kind.value : "input"
        },
        retryDelays: [0, 1000, 3000, 5000],
        removeFingerprintOnSuccess: true,
        onProgress: function (sent, total) {
          bar.value = total ? Math.floor((sent / total) * 100) : 100;
          status.textContent = bar.value + "%";
        },
        onSuccess: function () {
          bar.value = 100;
          status.textContent = "stored";
          item.classList.add("done");
          running -= 1;
          refresh(form);
        },
        onError: function (error) {
          var answer = error && error.originalResponse;
          var text = "failed";
          if (answer) {
            try {
              text = "failed: " + JSON.parse(answer.getBody()).error.message;
            } catch (ignored) {
              text = "failed (" + answer.getStatus() + ")";
            }
          }
          status.textContent = text;
          item.classList.add("failed");
          running -= 1;
        }
      });
      transfer.findPreviousUploads().then(function (previous) {
        if (previous.length) transfer.resumeFromPreviousUpload(previous[0]);
        transfer.start();
      });
    }

    function uploadAll(files) {
      Array.prototype.forEach.call(files, upload);
    }

    input.addEventListener("change", function () {
      uploadAll(input.files);
      input.value = "";
    });
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      uploadAll(input.files);
      input.value = "";
    });
    if (zone) {
      zone.addEventListener("dragover", function (event) {
        event.preventDefault();
        zone.classList.add("over");
      });
      zone.addEventListener("dragleave", function () { zone.classList.remove("over"); });
      zone.addEventListener("drop", function (event) {
        event.preventDefault();
        zone.classList.remove("over");
        if (event.dataTransfer && event.dataTransfer.files) uploadAll(event.dataTransfer.files);
      });
    }
    window.addEventListener("beforeunload", function (event) {
      // Leaving would cut the uploads off (they resume when chosen again, but say so).
      if (running > 0) event.preventDefault();
    });
  }

  function start() {
    document.querySelectorAll("form[data-tus]").forEach(setUp);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
