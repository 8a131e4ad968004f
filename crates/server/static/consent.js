// OAuth wait step: asks for the same page in the background (the server holds each request a few
// seconds until the agencies answer) and shows the confirmation once it is there. A reload every
// few seconds would move a screen reader's place and the keyboard focus back to the top each time;
// without script the page still refreshes itself (noscript).
(function () {
  "use strict";
  if (!document.querySelector("h1[data-step=wait]")) { return; }
  var rounds = 0;
  function again() {
    // About an hour; after that the page's reload link is still there.
    if (rounds < 1200) { window.setTimeout(poll, 3000); }
  }
  function poll() {
    rounds += 1;
    fetch(window.location.href, { credentials: "same-origin", headers: { accept: "text/html" } })
      .then(function (r) {
        if (!r.ok) { window.location.reload(); return null; }
        return r.text();
      })
      .then(function (html) {
        if (html === null) { return; }
        if (html.indexOf('data-step="wait"') === -1) { window.location.reload(); return; }
        again();
      })
      .catch(again);
  }
  again();
}());
