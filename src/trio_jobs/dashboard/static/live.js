// trio_jobs dashboard: live updates. The server renders every fragment (escaped);
// this only swaps the element marked data-live for the HTML each event carries.
(function () {
  "use strict";
  var box = document.querySelector("[data-live]");
  if (!box || !window.EventSource) return;
  var source = new EventSource(box.getAttribute("data-live"));
  source.addEventListener("overview", function (event) {
    var fresh = JSON.parse(event.data).html;
    if (fresh !== box.innerHTML) box.innerHTML = fresh;
    box.setAttribute("data-updated", String(Date.now()));
  });
  // EventSource reconnects by itself after a lost connection.
})();
