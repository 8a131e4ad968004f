// Passkeys (TW FidO, level 2): asks the platform for WebAuthn options, has this device create or
// use a passkey (the device checks the person by fingerprint, face or screen lock), then submits
// the device's answer with the form, CSRF token included. Binary fields travel as base64url.
(function () {
  "use strict";
  var form = document.getElementById("passkey-form");
  if (!form) { return; }
  var status = document.getElementById("passkey-status");
  var say = function (text) { status.textContent = text; };
  var signIn = form.dataset.mode === "sign-in";
  var busy = false;

  function toBuf(b64url) {
    var s = b64url.replace(/-/g, "+").replace(/_/g, "/");
    while (s.length % 4) { s += "="; }
    var bin = atob(s);
    var out = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) { out[i] = bin.charCodeAt(i); }
    return out.buffer;
  }
  function toB64(buf) {
    var bytes = new Uint8Array(buf);
    var bin = "";
    for (var i = 0; i < bytes.length; i++) { bin += String.fromCharCode(bytes[i]); }
    return btoa(bin).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }
  function ids(list) {
    return (list || []).map(function (c) {
      var copy = Object.assign({}, c);
      copy.id = toBuf(c.id);
      return copy;
    });
  }
  function creationOptions(o) {
    var pk = Object.assign({}, o.publicKey);
    pk.challenge = toBuf(pk.challenge);
    pk.user = Object.assign({}, pk.user, { id: toBuf(pk.user.id) });
    pk.excludeCredentials = ids(pk.excludeCredentials);
    return { publicKey: pk };
  }
  function requestOptions(o) {
    var pk = Object.assign({}, o.publicKey);
    pk.challenge = toBuf(pk.challenge);
    pk.allowCredentials = ids(pk.allowCredentials);
    return { publicKey: pk };
  }
  function created(c) {
    return {
      id: c.id, rawId: toB64(c.rawId), type: c.type,
      response: {
        attestationObject: toB64(c.response.attestationObject),
        clientDataJSON: toB64(c.response.clientDataJSON),
        transports: c.response.getTransports ? c.response.getTransports() : undefined
      },
      extensions: c.getClientExtensionResults ? c.getClientExtensionResults() : {}
    };
  }
  function asserted(c) {
    return {
      id: c.id, rawId: toB64(c.rawId), type: c.type,
      response: {
        authenticatorData: toB64(c.response.authenticatorData),
        clientDataJSON: toB64(c.response.clientDataJSON),
        signature: toB64(c.response.signature),
        userHandle: c.response.userHandle ? toB64(c.response.userHandle) : null
      },
      extensions: c.getClientExtensionResults ? c.getClientExtensionResults() : {}
    };
  }

  form.addEventListener("submit", function (ev) {
    if (form.elements.credential.value) { return; }
    ev.preventDefault();
    if (busy) { return; }
    if (!window.PublicKeyCredential || !navigator.credentials) { say(form.dataset.msgUnsupported); return; }
    busy = true;
    say(form.dataset.msgBusy);
    var body = signIn ? JSON.stringify({ id_number: form.elements.id_number.value.trim() }) : null;
    var headers = { "x-csrf-token": form.elements.csrf.value };
    if (body) { headers["content-type"] = "application/json"; }
    fetch(form.dataset.options, { method: "POST", headers: headers, body: body, credentials: "same-origin" })
      .then(function (r) {
        return r.json().catch(function () { return {}; }).then(function (j) {
          if (!r.ok) { var e = new Error("platform"); e.code = j.code; throw e; }
          return j;
        });
      })
      .then(function (started) {
        form.elements.ceremony_id.value = started.ceremony_id;
        var call = signIn
          ? navigator.credentials.get(requestOptions(started.options)).then(asserted)
          : navigator.credentials.create(creationOptions(started.options)).then(created);
        return call.catch(function (err) {
          var e = new Error("device"); e.code = err && err.name; throw e;
        });
      })
      .then(function (answer) {
        form.elements.credential.value = JSON.stringify(answer);
        form.submit();
      })
      .catch(function (e) {
        busy = false;
        var code = e && e.code;
        if (code === "passkey_not_registered" && form.dataset.msgNone) { say(form.dataset.msgNone); }
        else if (code === "locked_out" && form.dataset.msgLocked) { say(form.dataset.msgLocked); }
        else if (code === "NotAllowedError" || code === "InvalidStateError") { say(form.dataset.msgCancelled); }
        else { say(form.dataset.msgFailed); }
      });
  });
}());
