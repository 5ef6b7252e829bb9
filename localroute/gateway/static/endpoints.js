// localroute dashboard, engine endpoints panel: polls the public /health and lists every endpoint of
// every rung served by engine servers elsewhere (docs/scale-out.md). Hidden when no rung has endpoints.
// As dashboard.js: no libraries, no eval, no innerHTML; data reaches the page through textContent only.
(function () {
  "use strict";

  var POLL_MS = 2000;
  var FETCH_TIMEOUT_MS = 5000;

  function cell(text, cls, testid) {
    var td = document.createElement("td");
    if (cls) td.className = cls;
    if (testid) td.setAttribute("data-testid", testid);
    td.textContent = text === null || text === undefined ? "–" : String(text);
    return td;
  }

  function pill(text, cls) {
    var td = document.createElement("td");
    var span = document.createElement("span");
    span.className = "pill " + cls;
    span.textContent = text;
    td.appendChild(span);
    return td;
  }

  function rows(health) {
    var out = [];
    var engines = (health && health.engines) || {};
    Object.keys(engines).forEach(function (model) {
      (engines[model].endpoints || []).forEach(function (ep) {
        var tr = document.createElement("tr");
        tr.setAttribute("data-testid", "endpoint-row");
        tr.setAttribute("data-endpoint", String(ep.url));
        tr.appendChild(cell(model, "mono"));
        tr.appendChild(cell(ep.url, "mono", "endpoint-url"));
        tr.appendChild(pill(String(ep.state), ep.state === "up" ? "ok" : "err"));
        tr.appendChild(pill(String(ep.circuit), ep.circuit === "closed" ? "ok" : "err"));
        tr.appendChild(cell(ep.outstanding, "n", "endpoint-outstanding"));
        tr.appendChild(cell(ep.served, "n", "endpoint-served"));
        tr.appendChild(cell(ep.failures, "n", "endpoint-failures"));
        var trust = ep.trusted === true ? "trusted" : ep.trusted === false ? "untrusted" : "not reached";
        tr.appendChild(cell((ep.peer || "–") + " · " + trust, "mono"));
        out.push(tr);
      });
    });
    return out;
  }

  function poll() {
    var ctl = new AbortController();
    var kill = setTimeout(function () {
      ctl.abort();
    }, FETCH_TIMEOUT_MS);
    fetch("/health", { cache: "no-store", credentials: "same-origin", signal: ctl.signal })
      .then(function (r) {
        return r.ok ? r.json() : null;
      })
      .then(function (health) {
        var list = rows(health);
        var body = document.getElementById("endpoints-body");
        document.getElementById("endpoints-panel").hidden = list.length === 0;
        body.replaceChildren.apply(body, list);
      })
      .catch(function () {
        /* the stats poll reports the connection state; this panel keeps its last rows */
      })
      .then(function () {
        clearTimeout(kill);
        setTimeout(poll, POLL_MS);
      });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", poll);
  else poll();
})();
