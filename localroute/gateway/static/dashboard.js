// localroute dashboard: polls /v1/localroute/stats and draws it. No libraries, no eval, no innerHTML:
// every piece of data reaches the page through textContent or setAttribute.
(function () {
  "use strict";

  var POLL_MS = 2000;
  var STALE_MS = 6000; // no fresh data for this long: say so
  var FETCH_TIMEOUT_MS = 5000;
  var NS = "http://www.w3.org/2000/svg";

  var state = { data: null, lastOk: 0, error: null, timer: 0, inflight: false, seq: 0 };

  // ---- formatting (tests/test_dashboard.py mirrors fmtUSD and fmtPct) ----

  function fmtUSD(v) {
    if (typeof v !== "number" || !isFinite(v)) return "–";
    var a = Math.abs(v);
    var s;
    if (a === 0) s = "0.00";
    else if (a >= 1) s = a.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
    else s = a.toFixed(Math.min(10, 2 - Math.floor(Math.log10(a)))); // three significant digits
    return (v < 0 ? "−$" : "$") + s;
  }

  function fmtAxisUSD(v) {
    return fmtUSD(v).replace(/(\.\d\d\d*?)0+$/, "$1");
  }

  function fmtPct(percent) {
    if (typeof percent !== "number" || !isFinite(percent)) return "–";
    var s = Math.abs(percent).toFixed(1);
    if (s.slice(-2) === ".0") s = s.slice(0, -2);
    return (percent < 0 && s !== "0" ? "−" : "") + s + "%";
  }

  function fmtShare(fraction) {
    return typeof fraction === "number" ? fmtPct(fraction * 100) : "–";
  }

  function fmtInt(v) {
    return typeof v === "number" && isFinite(v) ? Math.round(v).toLocaleString("en-US") : "–";
  }

  function fmtCompact(v) {
    if (typeof v !== "number" || !isFinite(v)) return "–";
    if (v >= 1e6) return (v / 1e6).toFixed(1).replace(/\.0$/, "") + "M";
    if (v >= 1e4) return (v / 1e3).toFixed(1).replace(/\.0$/, "") + "k";
    return fmtInt(v);
  }

  function fmtMs(v) {
    if (typeof v !== "number" || !isFinite(v)) return "–";
    if (v >= 1000) return (v / 1000).toFixed(2) + " s";
    if (v >= 10) return Math.round(v) + " ms";
    return v.toFixed(1) + " ms";
  }

  function fmtBound(ms) {
    return ms >= 1000 ? String(ms / 1000) + "s" : String(ms);
  }

  function pad2(n) {
    return n < 10 ? "0" + n : String(n);
  }

  function fmtClock(t, withSeconds) {
    var d = new Date(t);
    if (isNaN(d.getTime())) return "–";
    var s = pad2(d.getHours()) + ":" + pad2(d.getMinutes());
    return withSeconds ? s + ":" + pad2(d.getSeconds()) : s;
  }

  function fmtDay(t) {
    var d = new Date(t);
    return d.toLocaleDateString("en-US", { month: "short", day: "numeric" });
  }

  function str(v) {
    return v === null || v === undefined ? "–" : String(v);
  }

  // ---- DOM helpers ----

  function $(id) {
    return document.getElementById(id);
  }

  function el(tag, attrs, text) {
    var n = document.createElement(tag);
    if (attrs) for (var k in attrs) if (attrs[k] !== undefined) n.setAttribute(k, String(attrs[k]));
    if (text !== undefined && text !== null) n.textContent = String(text);
    return n;
  }

  function sv(tag, attrs, text) {
    var n = document.createElementNS(NS, tag);
    if (attrs) for (var k in attrs) if (attrs[k] !== undefined) n.setAttribute(k, String(attrs[k]));
    if (text !== undefined && text !== null) n.textContent = String(text);
    return n;
  }

  function setText(id, text, value) {
    var n = $(id);
    if (!n) return;
    n.textContent = text;
    if (value === undefined || value === null) n.removeAttribute("data-value");
    else n.setAttribute("data-value", String(value));
  }

  function none(node, text) {
    node.replaceChildren(el("div", { class: "none" }, text));
  }

  function widthOf(node) {
    return Math.max(280, Math.floor(node.clientWidth || 600));
  }

  function clip(s, n) {
    s = String(s);
    return s.length > n ? s.slice(0, n - 1) + "…" : s;
  }

  // A round step (1, 2, 2.5 or 5 times a power of ten) giving about four ticks up to v.
  function niceStep(v) {
    if (!(v > 0)) return 1;
    var raw = v / 4;
    var p = Math.pow(10, Math.floor(Math.log10(raw)));
    var steps = [1, 2, 2.5, 5, 10];
    for (var i = 0; i < steps.length; i++) if (steps[i] * p >= raw) return steps[i] * p;
    return 10 * p;
  }

  // ---- charts ----

  function drawSavings(node, d) {
    var series = d.series || [];
    if (!series.length) return none(node, "No traffic in this window yet.");
    var W = widthOf(node);
    var H = 230;
    var m = { l: 72, r: 18, t: 14, b: 28 };
    var bucket = (d.bucket_s || 60) * 1000;
    var until = Date.parse(d.until);
    var t0 = d.since ? Date.parse(d.since) : Date.parse(series[0].t);
    var pts = [{ t: t0, c: 0, b: 0 }];
    var c = 0;
    var b = 0;
    series.forEach(function (p) {
      var t = Math.max(Date.parse(p.t), t0);
      pts.push({ t: t, c: c, b: b });
      c += p.cost_usd || 0;
      b += p.baseline_usd || 0;
      pts.push({ t: Math.max(t, Math.min(t + bucket, until)), c: c, b: b });
    });
    var t1 = Math.max(until, pts[pts.length - 1].t);
    pts.push({ t: t1, c: c, b: b });
    if (t1 - t0 < 1000) t0 = t1 - 60000;
    var step = niceStep(Math.max(b, c));
    var ticks = Math.max(1, Math.ceil(Math.max(b, c) / step - 1e-9));
    var ymax = step * ticks;
    var x = function (t) {
      return m.l + ((t - t0) / (t1 - t0)) * (W - m.l - m.r);
    };
    var y = function (v) {
      return m.t + (1 - v / ymax) * (H - m.t - m.b);
    };
    var svg = sv("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": "Cumulative cost and baseline" });
    for (var i = 0; i <= ticks; i++) {
      var v = step * i;
      svg.appendChild(sv("line", { class: i ? "gridline" : "axis", x1: m.l, x2: W - m.r, y1: y(v), y2: y(v) }));
      svg.appendChild(sv("text", { x: m.l - 8, y: y(v) + 4, "text-anchor": "end" }, fmtAxisUSD(v)));
    }
    var span = t1 - t0;
    for (var j = 0; j <= 4; j++) {
      var t = t0 + (span * j) / 4;
      var label = span > 36 * 3600 * 1000 ? fmtDay(t) : fmtClock(t, span < 20 * 60 * 1000);
      var anchor = j === 0 ? "start" : j === 4 ? "end" : "middle";
      svg.appendChild(sv("text", { x: x(t), y: H - 8, "text-anchor": anchor }, label));
    }
    var line = function (key) {
      return pts
        .map(function (p, k) {
          return (k ? "L" : "M") + x(p.t).toFixed(1) + "," + y(p[key]).toFixed(1);
        })
        .join("");
    };
    var back = pts
      .slice()
      .reverse()
      .map(function (p) {
        return "L" + x(p.t).toFixed(1) + "," + y(p.c).toFixed(1);
      })
      .join("");
    svg.appendChild(sv("path", { class: "saved-area", d: line("b") + back + "Z" }));
    svg.appendChild(sv("path", { class: "line-base", d: line("b") }));
    svg.appendChild(sv("path", { class: "line-cost", d: line("c") }));
    var last = pts[pts.length - 1];
    svg.appendChild(sv("circle", { class: "dot-base", cx: x(last.t), cy: y(last.b), r: 3.5 }));
    svg.appendChild(sv("circle", { class: "dot-cost", cx: x(last.t), cy: y(last.c), r: 3.5 }));
    var tip = sv("title", {}, "baseline " + fmtUSD(b) + " · cost " + fmtUSD(c) + " · saved " + fmtUSD(b - c));
    svg.appendChild(tip);
    node.replaceChildren(svg);
  }

  // rows: [{label, sub, value, text, cls}] drawn as labelled horizontal bars.
  function hbars(rows, W, opts) {
    var rowH = 32;
    var labelW = Math.min(220, Math.floor(W * 0.38));
    var valueW = 92;
    var top = opts && opts.title ? 20 : 0;
    var H = top + rows.length * rowH;
    var max = Math.max.apply(
      null,
      rows.map(function (r) {
        return r.value;
      }).concat([1])
    );
    var svg = sv("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": (opts && opts.title) || "bars" });
    if (top) svg.appendChild(sv("text", { x: 0, y: 12 }, opts.title));
    rows.forEach(function (r, i) {
      var y0 = top + i * rowH;
      var g = sv("g", {});
      var fit = Math.max(8, Math.floor((labelW - 8) / 7)); // ~7 px a character at 12 px
      var lab = sv("text", { class: "label", x: 0, y: y0 + (r.sub ? 13 : 20) }, clip(r.label, fit));
      g.appendChild(lab);
      if (r.sub) g.appendChild(sv("text", { x: 0, y: y0 + 26 }, clip(r.sub, fit + 4)));
      var bw = W - labelW - valueW;
      g.appendChild(sv("rect", { class: "track", x: labelW, y: y0 + 9, width: bw, height: 12, rx: 3 }));
      var w = Math.max(r.value > 0 ? 3 : 0, (r.value / max) * bw);
      g.appendChild(sv("rect", { class: "bar " + (r.cls || ""), x: labelW, y: y0 + 9, width: w, height: 12, rx: 3 }));
      g.appendChild(sv("text", { class: "value", x: W, y: y0 + 20, "text-anchor": "end" }, r.text));
      g.appendChild(sv("title", {}, r.label + ": " + r.text));
      svg.appendChild(g);
    });
    return svg;
  }

  function drawRungs(node, d) {
    var models = d.models || [];
    if (!models.length) return none(node, "No answered requests yet.");
    var ok = (d.totals && d.totals.ok) || 0;
    var rows = models.map(function (m) {
      return {
        label: m.model,
        sub: "tier " + str(m.tier) + " · " + (m.local ? "local" : "remote"),
        value: m.requests,
        text: fmtInt(m.requests) + (ok ? " · " + fmtShare(m.requests / ok) : ""),
        cls: m.local ? "" : "remote",
      };
    });
    node.replaceChildren(hbars(rows, widthOf(node)));
  }

  function drawEscalations(node, d) {
    var t = d.totals || {};
    $("esc-summary").textContent = t.ok
      ? fmtShare(t.escalation_rate) + " of answered requests · " + fmtInt(t.escalated) + " escalated"
      : "";
    var reasons = Object.keys(d.escalations || {});
    if (!reasons.length) {
      return none(node, t.ok ? "No escalations: every answer was kept where it was first asked." : "No answered requests yet.");
    }
    var rows = reasons.map(function (k) {
      var n = d.escalations[k];
      return { label: k.replace(/_/g, " "), value: n, text: fmtInt(n), cls: "esc" };
    });
    node.replaceChildren(hbars(rows, widthOf(node)));
  }

  function drawLatency(node, d) {
    var t = d.totals || {};
    var lat = t.latency_ms || {};
    $("lat-summary").textContent = "p50 " + fmtMs(lat.p50) + " · p95 " + fmtMs(lat.p95);
    var h = d.latency_histogram || { bounds_ms: [], counts: [] };
    var counts = h.counts || [];
    var total = counts.reduce(function (a, n) {
      return a + n;
    }, 0);
    if (!total) return none(node, "No answered requests yet.");
    var W = widthOf(node);
    var H = 190;
    var m = { l: 6, r: 6, t: 18, b: 34 };
    var n = counts.length;
    var slot = (W - m.l - m.r) / n;
    var max = Math.max.apply(null, counts.concat([1]));
    var svg = sv("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": "Latency histogram" });
    svg.appendChild(sv("line", { class: "axis", x1: m.l, x2: W - m.r, y1: H - m.b, y2: H - m.b }));
    counts.forEach(function (count, i) {
      var bh = (count / max) * (H - m.t - m.b);
      var x0 = m.l + i * slot + slot * 0.14;
      var label = i < h.bounds_ms.length ? "≤" + fmtBound(h.bounds_ms[i]) : ">" + fmtBound(h.bounds_ms[i - 1]);
      var g = sv("g", {});
      g.appendChild(sv("rect", { class: "bar", x: x0, y: H - m.b - bh, width: slot * 0.72, height: bh, rx: 2 }));
      if (count) {
        g.appendChild(sv("text", { class: "value", x: x0 + slot * 0.36, y: H - m.b - bh - 5, "text-anchor": "middle" }, fmtInt(count)));
      }
      if (slot >= 34 || i % 2 === 0) {
        g.appendChild(sv("text", { x: x0 + slot * 0.36, y: H - m.b + 15, "text-anchor": "middle" }, label));
      }
      g.appendChild(sv("title", {}, label + " ms: " + fmtInt(count)));
      svg.appendChild(g);
    });
    svg.appendChild(sv("text", { x: W / 2, y: H - 2, "text-anchor": "middle" }, "milliseconds"));
    node.replaceChildren(svg);
  }

  function drawRoutes(node, d) {
    var routes = Object.keys(d.routes || {});
    var priv = d.privacy || { private: 0, public: 0 };
    var W = widthOf(node);
    if (!routes.length && !(priv.private + priv.public)) return none(node, "No requests yet.");
    var parts = [];
    if (routes.length) {
      var rows = routes.slice(0, 6).map(function (k) {
        return { label: k, value: d.routes[k], text: fmtInt(d.routes[k]) };
      });
      parts.push(hbars(rows, W, { title: "how the rung was chosen" }));
    }
    var both = priv.private + priv.public;
    parts.push(
      hbars(
        [
          { label: "private", sub: "never leaves this machine", value: priv.private, text: fmtInt(priv.private), cls: "private" },
          { label: "public", sub: "may escalate to a provider", value: priv.public, text: fmtInt(priv.public), cls: "public" },
        ],
        W,
        { title: "privacy" + (both ? " · " + fmtShare(priv.private / both) + " private" : "") }
      )
    );
    node.replaceChildren.apply(node, parts);
  }

  function td(text, cls, testid) {
    return el("td", { class: cls, "data-testid": testid }, text);
  }

  function pill(text, cls) {
    var cell = el("td");
    cell.appendChild(el("span", { class: "pill " + cls }, text));
    return cell;
  }

  function drawModels(d) {
    var body = $("models-body");
    var models = d.models || [];
    if (!models.length) {
      var r = el("tr");
      r.appendChild(el("td", { class: "none", colspan: 11 }, "No answered requests yet."));
      return body.replaceChildren(r);
    }
    body.replaceChildren.apply(
      body,
      models.map(function (m) {
        var tr = el("tr", { "data-testid": "model-row-" + m.model, "data-model": m.model });
        var lat = m.latency_ms || {};
        var tok = m.tokens || {};
        tr.appendChild(td(m.model, "mono", "model-name"));
        tr.appendChild(td(str(m.tier), "n", "model-tier"));
        tr.appendChild(pill(m.local ? "local" : "remote", m.local ? "local" : "remote"));
        var req = td(fmtInt(m.requests), "n", "model-requests");
        req.setAttribute("data-value", String(m.requests));
        tr.appendChild(req);
        tr.appendChild(td(fmtInt(m.escalated), "n", "model-escalated"));
        var cost = td(fmtUSD(m.cost_usd), "n", "model-cost");
        cost.setAttribute("data-value", String(m.cost_usd));
        tr.appendChild(cost);
        var base = td(fmtUSD(m.baseline_usd), "n", "model-baseline");
        base.setAttribute("data-value", String(m.baseline_usd));
        tr.appendChild(base);
        tr.appendChild(td(fmtUSD(m.saved_usd) + (m.savings_pct === null ? "" : " (" + fmtPct(m.savings_pct) + ")"), "n", "model-saved"));
        tr.appendChild(td(fmtMs(lat.p50), "n"));
        tr.appendChild(td(fmtMs(lat.p95), "n"));
        tr.appendChild(td(fmtCompact((tok.prompt || 0) + (tok.completion || 0)), "n"));
        return tr;
      })
    );
  }

  function drawRecent(d) {
    var body = $("recent-body");
    var recent = d.recent || [];
    if (!recent.length) {
      var r = el("tr");
      r.appendChild(el("td", { class: "none", colspan: 11 }, "Nothing yet."));
      return body.replaceChildren(r);
    }
    body.replaceChildren.apply(
      body,
      recent.map(function (x) {
        var tr = el("tr", { "data-testid": "recent-row", "data-id": str(x.id) });
        var ok = x.status >= 200 && x.status < 300;
        tr.appendChild(td(fmtClock(x.ts, true), "mono"));
        tr.appendChild(td(clip(str(x.id), 18), "mono"));
        tr.appendChild(td(str(x.model), "mono"));
        tr.appendChild(td(str(x.tier), "n"));
        tr.appendChild(td(str(x.route), "mono"));
        tr.appendChild(pill(str(x.privacy), x.privacy === "private" ? "private" : ""));
        tr.appendChild(pill(str(x.status), ok ? "ok" : "err"));
        tr.appendChild(td(fmtMs(x.latency_ms), "n"));
        tr.appendChild(td(fmtUSD(x.cost_usd), "n"));
        tr.appendChild(td(fmtUSD(x.baseline_usd), "n"));
        var esc = el("td", { class: "n" });
        esc.appendChild(el("span", { class: x.escalations ? "pill esc" : "" }, fmtInt(x.escalations)));
        tr.appendChild(esc);
        return tr;
      })
    );
  }

  function drawTotals(d) {
    var t = d.totals || {};
    var lat = t.latency_ms || {};
    var tok = t.tokens || {};
    setText("savings-pct", t.savings_pct === null || t.savings_pct === undefined ? "–" : fmtPct(t.savings_pct), t.savings_pct);
    setText("saved-usd", fmtUSD(t.saved_usd), t.saved_usd);
    setText("cost-usd", fmtUSD(t.cost_usd), t.cost_usd);
    setText("baseline-usd", fmtUSD(t.baseline_usd), t.baseline_usd);
    setText("total-requests", fmtInt(t.requests), t.requests);
    setText("ok-count", fmtInt(t.ok), t.ok);
    setText("error-count", fmtInt(t.errors), t.errors);
    setText("local-share", t.ok ? fmtShare(t.local_share) : "–", t.local_share);
    setText("local-count", fmtInt(t.local), t.local);
    setText("escalation-rate", t.ok ? fmtShare(t.escalation_rate) : "–", t.escalation_rate);
    setText("escalated-count", fmtInt(t.escalated), t.escalated);
    setText("latency-p50", fmtMs(lat.p50), lat.p50);
    setText("latency-p95", fmtMs(lat.p95), lat.p95);
    setText("tokens", fmtCompact((tok.prompt || 0) + (tok.completion || 0)));
    var costShare = t.baseline_usd > 0 ? Math.min(1, t.cost_usd / t.baseline_usd) : 0;
    $("cost-meter").style.width = (costShare * 100).toFixed(1) + "%";
    $("local-meter").style.width = ((t.ok ? t.local_share : 0) * 100).toFixed(1) + "%";
  }

  function render() {
    var d = state.data;
    if (!d) return;
    var t = d.totals || {};
    $("empty").hidden = t.requests > 0;
    drawTotals(d);
    drawSavings($("chart-savings"), d);
    drawRungs($("chart-rungs"), d);
    drawEscalations($("chart-escalations"), d);
    drawLatency($("chart-latency"), d);
    drawRoutes($("chart-routes"), d);
    drawModels(d);
    drawRecent(d);
    document.body.setAttribute("data-rendered", String(state.seq));
  }

  // ---- connection state and polling ----

  function showConnection() {
    var now = Date.now();
    var s;
    var text;
    if (state.lastOk && now - state.lastOk < STALE_MS && !state.error) {
      s = "live";
      text = "live";
    } else if (!state.lastOk) {
      s = state.error ? "disconnected" : "loading";
      text = state.error ? "disconnected · " + state.error : "connecting…";
    } else {
      var ago = Math.round((now - state.lastOk) / 1000);
      s = state.error && now - state.lastOk >= STALE_MS ? "disconnected" : "stale";
      text = (s === "stale" ? "stale" : "disconnected") + " · last update " + ago + " s ago" + (state.error ? " · " + state.error : "");
    }
    var conn = $("conn");
    conn.setAttribute("data-state", s);
    $("conn-text").textContent = text;
    document.body.setAttribute("data-state", s);
    if (state.lastOk) $("updated").textContent = "updated " + fmtClock(state.lastOk, true);
  }

  function selected() {
    return $("since").value;
  }

  function statsUrl() {
    var since = selected();
    return "/v1/localroute/stats" + (since ? "?since=" + encodeURIComponent(since) : "");
  }

  function poll() {
    clearTimeout(state.timer);
    state.timer = setTimeout(poll, POLL_MS);
    if (state.inflight || document.hidden) return;
    state.inflight = true;
    var url = statsUrl();
    var ctl = new AbortController();
    var kill = setTimeout(function () {
      ctl.abort();
    }, FETCH_TIMEOUT_MS);
    var headers = { accept: "application/json" };
    var key = storedKey();
    if (key) headers.authorization = "Bearer " + key;
    fetch(url, { cache: "no-store", credentials: "same-origin", signal: ctl.signal, headers: headers })
      .then(function (r) {
        if (r.status === 401) {
          // The gateway has [[keys]]: ask for one. It stays in this tab only (sessionStorage).
          $("auth").hidden = false;
          throw new Error(key ? "key refused" : "API key needed");
        }
        $("auth").hidden = true;
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.json();
      })
      .then(function (d) {
        if (!d || d.object !== "localroute.stats") throw new Error("unexpected answer");
        if (url !== statsUrl()) return; // the window changed while this was in flight
        state.seq += 1;
        state.data = d;
        state.lastOk = Date.now();
        state.error = null;
        render();
      })
      .catch(function (e) {
        state.error = e && e.name === "AbortError" ? "timed out" : e && e.message ? clip(e.message, 60) : "failed";
      })
      .then(function () {
        clearTimeout(kill);
        state.inflight = false;
        showConnection();
      });
  }

  var KEY_SLOT = "localroute-api-key";
  var memoryKey = ""; // where the key lives when the browser refuses sessionStorage

  function storedKey() {
    try {
      return sessionStorage.getItem(KEY_SLOT) || memoryKey;
    } catch (e) {
      return memoryKey;
    }
  }

  function start() {
    $("auth").addEventListener("submit", function (ev) {
      ev.preventDefault();
      memoryKey = $("auth-key").value.trim();
      try {
        sessionStorage.setItem(KEY_SLOT, memoryKey);
      } catch (e) {
        /* storage disabled: the key lasts until the page is reloaded */
      }
      $("auth-key").value = "";
      state.inflight = false;
      poll();
    });
    var params = new URLSearchParams(location.hash.slice(1));
    var want = params.get("since");
    var select = $("since");
    if (want !== null && Array.prototype.some.call(select.options, function (o) { return o.value === want; })) {
      select.value = want;
    }
    select.addEventListener("change", function () {
      history.replaceState(null, "", "#since=" + encodeURIComponent(select.value));
      $("stats-link").setAttribute("href", statsUrl());
      state.inflight = false;
      poll();
    });
    $("stats-link").setAttribute("href", statsUrl());
    $("empty-base").textContent = location.origin + "/v1";
    var resized = 0;
    window.addEventListener("resize", function () {
      clearTimeout(resized);
      resized = setTimeout(render, 150);
    });
    document.addEventListener("visibilitychange", function () {
      if (!document.hidden) poll();
    });
    setInterval(showConnection, 1000);
    poll();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
