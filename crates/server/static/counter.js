// Counter barcode page: reloads itself when the serial runs out (and every few minutes before, so
// the session stays alive while the person waits), and counts the time down. Without script the
// page's refresh link does the same by hand.
(function () {
  "use strict";
  var box = document.getElementById("refresh");
  if (!box) { return; }
  var secs = parseInt(box.getAttribute("data-seconds"), 10);
  if (!(secs > 0)) { return; }
  var left = document.getElementById("serial-left");
  var endsIn = parseInt(box.getAttribute("data-serial-seconds"), 10);
  var started = Date.now();
  function tick() {
    var gone = Math.floor((Date.now() - started) / 1000);
    if (left && endsIn > 0) {
      var s = Math.max(0, endsIn - gone);
      left.textContent = Math.floor(s / 60) + ":" + ("0" + (s % 60)).slice(-2);
    }
    if (gone >= secs) { window.location.reload(); return; }
    window.setTimeout(tick, 1000);
  }
  tick();
}());
