// Certificate sign-in: fetch a challenge from the platform, have `mydata card-agent` sign it with
// the card after the person enters the PIN, then submit the signature and certificate chain.
// The PIN goes only to the card agent on this computer, never to the platform.
(function () {
  "use strict";
  var form = document.getElementById("cert-form");
  if (!form) { return; }
  var status = document.getElementById("cert-status");
  var say = function (text) { status.textContent = text; };
  var busy = false;
  form.addEventListener("submit", function (ev) {
    if (form.elements.signature.value) { return; }
    ev.preventDefault();
    if (busy) { return; }
    busy = true;
    say(form.dataset.msgBusy);
    var pin = document.getElementById("pin").value;
    var csrf = form.elements.csrf.value;
    fetch(form.dataset.challenge, { method: "POST", headers: { "x-csrf-token": csrf }, credentials: "same-origin" })
      .then(function (r) { if (!r.ok) { throw new Error("challenge"); } return r.json(); })
      .then(function (ch) {
        form.elements.challenge_id.value = ch.challenge_id;
        return fetch(form.dataset.agent + "/v1/sign", {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ pin: pin, to_be_signed: ch.to_be_signed })
        }).catch(function () { throw new Error("agent"); });
      })
      .then(function (r) {
        if (r.status === 401) { throw new Error("pin"); }
        if (r.status === 423) { throw new Error("locked"); }
        if (!r.ok) { throw new Error("agent"); }
        return r.json();
      })
      .then(function (signed) {
        form.elements.signature.value = signed.signature;
        form.elements.x5c.value = JSON.stringify(signed.x5c);
        document.getElementById("pin").value = "";
        form.submit();
      })
      .catch(function (e) {
        busy = false;
        var m = e && e.message;
        say(m === "pin" ? form.dataset.msgPin : m === "locked" ? form.dataset.msgLocked : form.dataset.msgAgent);
      });
  });
}());
