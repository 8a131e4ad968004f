// Self-download pages: live progress without reloading, and one consent per click. The pages
// work without this script (a refresh link, and the server refuses a second transfer anyway).
(function () {
  "use strict";
  var form = document.getElementById("consent-form");
  if (form) {
    form.addEventListener("submit", function () {
      var b = document.getElementById("consent");
      if (b) { b.disabled = true; b.setAttribute("aria-busy", "true"); }
    });
  }
  var box = document.getElementById("progress");
  if (!box || box.getAttribute("data-fetching") !== "1") { return; }
  var url = box.getAttribute("data-status-url");
  var polls = 0;
  var MAX_POLLS = 2400; // 2 hours at 3 s: the email says when it is ready after that.
  function apply(p) {
    var summary = document.getElementById("summary");
    if (summary && summary.textContent !== p.summary) { summary.textContent = p.summary; }
    p.datasets.forEach(function (d) {
      var row = box.querySelector('tr[data-ds="' + d.id + '"]');
      if (!row) { return; }
      row.className = "tone-" + d.tone;
      var st = row.querySelector(".st");
      if (st && st.textContent !== d.label) { st.textContent = d.label; }
      var dt = row.querySelector(".detail");
      if (dt && dt.textContent !== d.detail) { dt.textContent = d.detail; }
      if (d.retry_href && !row.querySelector("a.retry")) {
        var a = document.createElement("a");
        a.className = "retry";
        a.href = d.retry_href;
        a.textContent = document.documentElement.lang === "en" ? "Request this dataset again" : "重新申請這項資料";
        row.querySelector(".dt").appendChild(document.createTextNode(" "));
        row.querySelector(".dt").appendChild(a);
      }
    });
    box.setAttribute("data-settled", String(p.settled));
  }
  function poll() {
    polls += 1;
    if (polls > MAX_POLLS) { return; }
    fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (p) {
        if (!p) { setTimeout(poll, 10000); return; }
        apply(p);
        // The next step (preview, save) needs the page itself: load it once.
        if (p.next_step) { window.location.reload(); return; }
        setTimeout(poll, 3000);
      })
      .catch(function () { setTimeout(poll, 10000); });
  }
  setTimeout(poll, 1000);
})();
