/* krea-report explorer: a grid of the run's images, any axes on rows/columns, in plain JavaScript.
 * Reads window.KREA_EXPLORER (explorer-data.js); loads explorer/detail-NNN.js when a tile opens.
 * The view lives in the URL fragment: #x=<axis>&y=<axis>&facet=<axis>&zoom=<px>&overlay=<metric>
 * &cmp=side|slider|<run>&split=<0-100>&hide.<axis>=<v>,<v>&order.<axis>=<v>,<v>&cell=<cell_id>.
 * Everything it loads stays in the report folder; no network, no libraries. */
(function () {
  "use strict";
  var D = window.KREA_EXPLORER;
  var root = document.getElementById("kx");
  if (!D || !root) return;

  var T = D.tiles, N = T.cell.length, AX = D.axes, RUNS = D.runs;
  var COMPARE = RUNS.length > 1;
  var STATUS = ["ok", "cached", "failed", "not run"];
  var ZOOM = 160, ZOOM_MIN = 48, ZOOM_MAX = 640;
  var CELL_MAX = 48;  // tiles drawn per grid position until its "+N more" is clicked
  var expanded = {};  // grid positions opened in full (this page only, not in the URL)
  var METRICS = { cost: "billed cost", latency: "latency", failed: "failure" };
  var axisIndex = {};
  AX.forEach(function (a, i) { axisIndex[a.name] = i; });

  function esc(s) {
    return String(s).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  }
  function money(v) {
    if (v === null || v === undefined) return "—";
    return "$" + v.toFixed(4).replace(/(\.\d\d\d*?)0+$/, "$1");  // $0.065, $0.06, $0.0655
  }
  function secs(v) { return v === null || v === undefined ? "—" : v.toFixed(2) + " s"; }
  function valueOf(k, a) { return AX[a].values[T.values[a][k]]; }

  // --- units: one per tile, or one per (cell_id, image) across runs when comparing ---------------
  var units = [], unitOf = new Int32Array(N);
  (function () {
    var byKey = {};
    for (var k = 0; k < N; k++) {
      var key = COMPARE ? T.cell[k] + "|" + T.result[k] : String(k);
      var u = byKey[key];
      if (u === undefined) {
        u = byKey[key] = units.length;
        var parts = [];
        for (var r = 0; r < RUNS.length; r++) parts.push(-1);
        units.push({ first: k, parts: parts });
      }
      if (units[u].parts[T.run[k]] < 0) units[u].parts[T.run[k]] = k;
      unitOf[k] = u;
    }
  })();

  // --- the view and the URL fragment -------------------------------------------------------------
  var notes = [];
  function fresh() {
    return {
      x: D.defaults.x || "", y: D.defaults.y || "", facet: D.defaults.facet || "",
      zoom: ZOOM, overlay: "", cmp: "side", split: 50, hide: {}, order: {}, cell: ""
    };
  }
  function parseHash() {
    var s = fresh();
    notes = [];
    if (location.hash.indexOf("=") < 0) return s;  // "#totals": a section link keeps the defaults
    location.hash.replace(/^#/, "").split("&").forEach(function (part) {
      if (!part) return;
      var eq = part.indexOf("=");
      var key = decodeURIComponent(eq < 0 ? part : part.slice(0, eq));
      var raw = eq < 0 ? "" : part.slice(eq + 1);
      var list = raw.split(",").filter(function (v) { return v !== ""; }).map(decodeURIComponent);
      var value = decodeURIComponent(raw);
      if (key.indexOf("hide.") === 0) s.hide[key.slice(5)] = list;
      else if (key.indexOf("order.") === 0) s.order[key.slice(6)] = list;
      else if (key === "zoom") s.zoom = Math.max(ZOOM_MIN, Math.min(ZOOM_MAX, parseInt(value, 10) || ZOOM));
      else if (key === "split") s.split = Math.max(0, Math.min(100, parseFloat(value) || 0));
      else if (key in s) s[key] = value;
    });
    ["x", "y", "facet"].forEach(function (k) {
      if (s[k] && !(s[k] in axisIndex)) { notes.push("no axis " + s[k] + " in this report"); s[k] = ""; }
    });
    if (s.y && s.y === s.x) s.y = "";
    if (s.facet && (s.facet === s.x || s.facet === s.y)) s.facet = "";
    if (!(s.overlay in METRICS)) s.overlay = "";
    if (s.cmp !== "side" && s.cmp !== "slider" && RUNS.indexOf(s.cmp) < 0) s.cmp = "side";
    return s;
  }
  function hashOf(s) {
    var out = ["x=" + encodeURIComponent(s.x), "y=" + encodeURIComponent(s.y)];
    if (s.facet) out.push("facet=" + encodeURIComponent(s.facet));
    if (s.zoom !== ZOOM) out.push("zoom=" + s.zoom);
    if (s.overlay) out.push("overlay=" + s.overlay);
    if (COMPARE && s.cmp !== "side") out.push("cmp=" + encodeURIComponent(s.cmp));
    if (COMPARE && s.cmp === "slider" && s.split !== 50) out.push("split=" + s.split);
    Object.keys(s.hide).forEach(function (a) {
      if (s.hide[a].length) out.push("hide." + encodeURIComponent(a) + "=" + s.hide[a].map(encodeURIComponent).join(","));
    });
    Object.keys(s.order).forEach(function (a) {
      if (s.order[a].length) out.push("order." + encodeURIComponent(a) + "=" + s.order[a].map(encodeURIComponent).join(","));
    });
    if (s.cell) out.push("cell=" + encodeURIComponent(s.cell));
    return "#" + out.join("&");
  }
  var state = parseHash();
  function commit(render) {
    var h = hashOf(state);
    if (h !== location.hash) history.replaceState(null, "", h);
    if (render !== false) draw();
  }

  // value order (state.order first, then the rest as swept) and hidden values, per axis
  function ordered(a) {
    var vals = AX[a].values, want = state.order[AX[a].name] || [], seen = {}, out = [];
    want.forEach(function (v) { var i = vals.indexOf(v); if (i >= 0 && !seen[i]) { seen[i] = 1; out.push(i); } });
    for (var i = 0; i < vals.length; i++) if (!seen[i]) out.push(i);
    return out;
  }
  function hiddenSet(a) {
    var vals = AX[a].values, hid = {};
    (state.hide[AX[a].name] || []).forEach(function (v) { var i = vals.indexOf(v); if (i >= 0) hid[i] = 1; });
    return hid;
  }

  // --- overlays ----------------------------------------------------------------------------------
  function metric(k) {
    if (state.overlay === "cost") return T.cost[k];
    if (state.overlay === "latency") return T.latency[k];
    if (state.overlay === "failed") return T.status[k] === 3 ? null : (T.status[k] === 2 ? 1 : 0);
    return null;
  }
  function heat(v, lo, hi) {  // light yellow → orange → dark red
    var t = hi > lo ? (v - lo) / (hi - lo) : (v > 0 ? 1 : 0);
    var stops = [[255, 237, 160], [253, 141, 60], [189, 0, 38]];
    var i = t < 0.5 ? 0 : 1, f = t < 0.5 ? t * 2 : (t - 0.5) * 2;
    var c = stops[i].map(function (x, j) { return Math.round(x + (stops[i + 1][j] - x) * f); });
    return "rgb(" + c.join(",") + ")";
  }
  function fmtMetric(v) {
    if (state.overlay === "cost") return money(v);
    if (state.overlay === "latency") return secs(v);
    return v ? "failed" : "ok";
  }

  // --- drawing -----------------------------------------------------------------------------------
  function option(value, label, current) {
    return '<option value="' + esc(value) + '"' + (value === current ? " selected" : "") + ">" + esc(label) + "</option>";
  }
  function axisSelect(name, label, current) {
    var opts = option("", "(none)", current);
    AX.forEach(function (a) { opts += option(a.name, a.name + " (" + a.values.length + ")", current); });
    return '<label>' + label + ' <select data-k="' + name + '">' + opts + "</select></label>";
  }
  function toolbar() {
    var h = '<div class="kx-bar">';
    h += axisSelect("y", "rows", state.y) + '<button type="button" data-act="swap" title="swap rows and columns">⇄</button>';
    h += axisSelect("x", "columns", state.x) + axisSelect("facet", "facets", state.facet);
    h += '<label>zoom <input type="range" data-k="zoom" min="' + ZOOM_MIN + '" max="' + ZOOM_MAX + '" step="8" value="' + state.zoom + '"></label>';
    var ov = option("", "none", state.overlay);
    Object.keys(METRICS).forEach(function (m) { ov += option(m, METRICS[m], state.overlay); });
    h += '<label>colour by <select data-k="overlay">' + ov + "</select></label>";
    if (COMPARE) {
      var cm = option("side", "side by side", state.cmp) + option("slider", "slider", state.cmp);
      RUNS.forEach(function (r) { cm += option(r, "only " + r, state.cmp); });
      h += '<label>compare <select data-k="cmp">' + cm + "</select></label>";
      if (state.cmp === "slider") {
        h += '<label>' + esc(RUNS[0]) + ' <input type="range" data-k="split" min="0" max="100" value="' + state.split + '"> ' + esc(RUNS[1]) + "</label>";
      }
    }
    h += '<button type="button" data-act="reset" title="the default view">reset</button></div>';
    return h;
  }
  var LIST_MAX = 100;  // values listed per axis in the panel (the rest: through the URL)
  function valuesPanel() {
    var h = '<details class="kx-values"' + (valuesOpen ? " open" : "") + '><summary>values: hide, reorder</summary><div class="kx-axes">';
    if (!valuesOpen) return h + "</div></details>";  // drawn when opened: 10,000 seeds are heavy
    AX.forEach(function (a, ai) {
      var hid = hiddenSet(ai), order = ordered(ai);
      h += '<fieldset><legend>' + esc(a.name) + " (" + a.values.length + ")</legend>";
      if (order.length > LIST_MAX) h += '<p class="kx-muted">the first ' + LIST_MAX + " listed; hide others with hide." + esc(a.name) + "=… in the address</p>";
      order.slice(0, LIST_MAX).forEach(function (vi, pos) {
        var v = a.values[vi], full = a.legend ? a.legend[vi] : v;
        h += '<div class="kx-val"><label title="' + esc(full) + '"><input type="checkbox" data-axis="' + esc(a.name) + '" data-val="' + esc(v) + '"' + (hid[vi] ? "" : " checked") + "> " + esc(v) + (a.legend ? ' <span class="kx-muted">' + esc(full) + "</span>" : "") + "</label>";
        h += '<button type="button" data-act="up" data-axis="' + esc(a.name) + '" data-pos="' + pos + '"' + (pos ? "" : " disabled") + ' title="earlier">▲</button>';
        h += '<button type="button" data-act="down" data-axis="' + esc(a.name) + '" data-pos="' + pos + '"' + (pos < order.length - 1 ? "" : " disabled") + ' title="later">▼</button></div>';
      });
      h += "</fieldset>";
    });
    return h + "</div></details>";
  }
  var valuesOpen = false;

  function stateLabel(k) {
    var s = T.status[k];
    if (s === 2) return "failed: " + (T.error[k] || "unknown");
    if (s === 3) return "not run";
    if (!T.thumb[k]) return "image missing";
    return "";
  }
  function part(k, lo, hi, cls) {
    if (k < 0) return '<div class="kx-part kx-absent-part ' + cls + '"><span class="kx-state">not in this run</span></div>';
    var h = '<div class="kx-part st-' + STATUS[T.status[k]].replace(" ", "-") + " " + cls + '">';
    var words = stateLabel(k);
    if (T.thumb[k]) h += '<img loading="lazy" decoding="async" alt="" src="' + esc(T.thumb[k]) + '">';
    if (words) h += '<span class="kx-state">' + esc(words) + "</span>";
    if (T.status[k] === 1) h += '<span class="kx-badge">cached</span>';
    if (state.overlay) {
      var v = metric(k);
      if (v !== null && v !== undefined) h += '<span class="kx-ov" style="background:' + heat(v, lo, hi) + '"><b>' + esc(fmtMetric(v)) + "</b></span>";
    }
    return h + "</div>";
  }
  function tileHtml(u, label, lo, hi) {
    var unit = units[u], k = unit.first, parts = unit.parts;
    var w = T.w[k] || 1, h = T.h[k] || 1, ratio = Math.max(0.5, Math.min(2, h / w));
    var cls = "kx-tile", only = "", body;
    if (COMPARE) {
      var present = parts.filter(function (p) { return p >= 0; }).length;
      if (present < RUNS.length) {
        cls += " kx-only";
        only = RUNS.filter(function (r, i) { return parts[i] >= 0; }).join(",");
      }
      var runAt = RUNS.indexOf(state.cmp);
      if (runAt >= 0) {
        body = part(parts[runAt], lo, hi, "");
      } else if (state.cmp === "slider") {
        cls += " kx-slider";
        body = part(parts[1], lo, hi, "kx-under") + part(parts[0], lo, hi, "kx-over") + '<span class="kx-split"></span>';
      } else {
        cls += " kx-side";
        body = parts.map(function (p, i) { return part(p, lo, hi, "kx-run" + i); }).join("");
      }
    } else {
      body = part(k, lo, hi, "");
    }
    var seed = T.seed[k] === null ? "" : T.seed[k];
    var tip = "cell " + T.cell[k] + " · seed " + seed + (only ? " · only in " + only : "");
    var out = '<div class="' + cls + '" tabindex="0" role="button" data-unit="' + u + '" data-cell-id="' + esc(T.cell[k]) + '" data-seed="' + esc(seed) + '" data-status="' + esc(STATUS[T.status[k]]) + '"' + (only ? ' data-only="' + esc(only) + '"' : "") + ' title="' + esc(tip) + '">';
    out += '<div class="kx-img" style="aspect-ratio:' + (COMPARE && state.cmp === "side" ? RUNS.length : 1) + " / " + ratio.toFixed(4) + '">' + body + "</div>";
    out += '<div class="kx-label">' + esc(label) + (only ? ' <span class="kx-only-tag">only ' + esc(only) + "</span>" : "") + "</div>";
    return out + "</div>";
  }

  function legendOf(a, v) {  // a list-valued axis: the value in words under its `#k`
    return AX[a].legend ? '<span class="kx-legend">' + esc(AX[a].legend[v]) + "</span>" : "";
  }
  function countLine(n, lo, hi, capped) {
    var h = "";
    h += '<p class="kx-count">' + n.toLocaleString("en") + " of " + units.length.toLocaleString("en") + (COMPARE ? " cells (matched by cell_id across " + RUNS.length + " runs)" : " tiles") + " shown";
    if (state.overlay && lo <= hi) h += ' · <span class="kx-scale">' + esc(METRICS[state.overlay]) + ': <i style="background:' + heat(lo, lo, hi) + '"></i>' + esc(fmtMetric(lo)) + ' <i style="background:' + heat(hi, lo, hi) + '"></i>' + esc(fmtMetric(hi)) + "</span>";
    if (COMPARE && state.cmp === "side") h += " · left to right: " + RUNS.map(esc).join(" | ");
    if (COMPARE && state.cmp === "slider") h += " · " + esc(RUNS[0]) + " over " + esc(RUNS[1]) + ", split by the slider";
    if (capped) h += " · " + capped.toLocaleString("en") + " more behind the “+N more” of crowded cells";
    h += "</p>";
    notes.forEach(function (n) { h += '<p class="kx-note">' + esc(n) + "</p>"; });
    return h;
  }
  function draw() {
    var ax = state.x ? axisIndex[state.x] : -1, ay = state.y ? axisIndex[state.y] : -1;
    var af = state.facet ? axisIndex[state.facet] : -1;
    var hidden = AX.map(function (a, i) { return hiddenSet(i); });
    var runOnly = COMPARE ? RUNS.indexOf(state.cmp) : -1;
    var shown = [], all = {};
    function pos(k) { return (af < 0 ? "" : T.values[af][k]) + "|" + (ay < 0 ? "" : T.values[ay][k]) + "|" + (ax < 0 ? "" : T.values[ax][k]); }
    for (var u = 0; u < units.length; u++) {
      var k = units[u].first;
      all[pos(k)] = 1;
      var ok = true;
      for (var a = 0; a < AX.length && ok; a++) if (hidden[a][T.values[a][k]]) ok = false;
      if (ok && runOnly >= 0 && units[u].parts[runOnly] < 0) ok = false;
      if (ok) shown.push(u);
    }
    // values on each dimension: the ordered, unhidden values some shown tile has
    function used(a) {
      if (a < 0) return [-1];
      var has = {};
      shown.forEach(function (u) { has[T.values[a][units[u].first]] = 1; });
      return ordered(a).filter(function (v) { return has[v] && !hidden[a][v]; });
    }
    var fv = used(af), yv = used(ay), xv = used(ax);
    var buckets = {};
    shown.forEach(function (u) { var key = pos(units[u].first); (buckets[key] = buckets[key] || []).push(u); });
    // stacked axes: everything not on x, y or facet; a tile's label names the ones that vary in its cell
    var stacked = [];
    AX.forEach(function (a, i) { if (i !== ax && i !== ay && i !== af) stacked.push(i); });
    var rank = stacked.map(function (a) { var r = {}; ordered(a).forEach(function (v, p) { r[v] = p; }); return r; });
    var lo = Infinity, hi = -Infinity;
    if (state.overlay) {
      for (var t = 0; t < N; t++) { var m = metric(t); if (m !== null && m !== undefined) { lo = Math.min(lo, m); hi = Math.max(hi, m); } }
    }
    var zoom = state.zoom * (COMPARE && state.cmp === "side" ? RUNS.length : 1);
    var capped = 0, h = "";
    h += '<div class="kx-grids" style="--kx-zoom:' + zoom + "px;--kx-split:" + state.split + '%">';
    fv.forEach(function (f) {
      h += '<section class="kx-facet">';
      if (af >= 0) h += "<h3>" + esc(AX[af].name) + " = " + esc(AX[af].values[f]) + (AX[af].legend ? ' <span class="kx-muted">' + esc(AX[af].legend[f]) + "</span>" : "") + "</h3>";
      h += '<div class="kx-grid" style="grid-template-columns:' + (ay >= 0 ? "max-content " : "") + "repeat(" + xv.length + ', max-content)">';
      if (ax >= 0) {
        if (ay >= 0) h += '<div class="kx-corner" title="rows: ' + esc(AX[ay].name) + ", columns: " + esc(AX[ax].name) + '"><span>' + esc(AX[ay].name) + " ↓</span><span>" + esc(AX[ax].name) + " →</span></div>";
        xv.forEach(function (x) { h += '<div class="kx-colhead" title="' + esc(AX[ax].legend ? AX[ax].legend[x] : AX[ax].values[x]) + '">' + esc(AX[ax].values[x]) + legendOf(ax, x) + "</div>"; });
      }
      yv.forEach(function (y) {
        if (ay >= 0) h += '<div class="kx-rowhead" title="' + esc(AX[ay].legend ? AX[ay].legend[y] : AX[ay].values[y]) + '">' + esc(AX[ay].values[y]) + legendOf(ay, y) + "</div>";
        xv.forEach(function (x) {
          var key = (af < 0 ? "" : f) + "|" + (ay < 0 ? "" : y) + "|" + (ax < 0 ? "" : x);
          var list = buckets[key];
          if (!list) {
            var why = all[key] ? "filtered out" : "not in sweep";
            h += '<div class="kx-cell kx-empty' + (all[key] ? "" : " kx-absent") + '"><span>' + why + "</span></div>";
            return;
          }
          var varying = stacked.filter(function (a) {
            var v0 = T.values[a][units[list[0]].first];
            return list.some(function (u) { return T.values[a][units[u].first] !== v0; });
          });
          list.sort(function (p, q) {
            for (var i = 0; i < stacked.length; i++) {
              var a = stacked[i], d = rank[i][T.values[a][units[p].first]] - rank[i][T.values[a][units[q].first]];
              if (d) return d;
            }
            return p - q;
          });
          h += '<div class="kx-cell">';
          var extra = expanded[key] ? 0 : Math.max(0, list.length - CELL_MAX);
          if (extra) { list = list.slice(0, CELL_MAX); capped += extra; }
          list.forEach(function (u) {
            var k = units[u].first, bits = [];
            if (T.seed[k] !== null && state.x !== "seed" && state.y !== "seed" && state.facet !== "seed") bits.push("seed " + T.seed[k]);
            varying.forEach(function (a) { if (AX[a].name !== "seed") bits.push(valueOf(k, a)); });
            h += tileHtml(u, bits.join(" · "), lo, hi);
          });
          if (extra) h += '<button type="button" class="kx-more" data-act="more" data-key="' + esc(key) + '">+' + extra.toLocaleString("en") + " more</button>";
          h += "</div>";
        });
      });
      h += "</div></section>";
    });
    if (!units.length) h += '<p class="kx-note">no images in this report yet</p>';
    else if (!shown.length) h += '<p class="kx-note">no tile matches: show some hidden values again</p>';
    h += "</div>";
    var head = toolbar() + valuesPanel() + countLine(shown.length, lo, hi, capped);
    h = head + h;
    var scrollY = window.scrollY;
    root.innerHTML = h;
    window.scrollTo(0, scrollY);
    if (state.cell) openDetail(state.cell, false);
    else closeDetail(false);
  }

  // --- the detail panel --------------------------------------------------------------------------
  var panel = document.createElement("aside");
  panel.className = "kx-detail";
  panel.setAttribute("role", "dialog");
  panel.setAttribute("aria-label", "image detail");
  panel.hidden = true;
  document.body.appendChild(panel);
  window.KREA_DETAIL = window.KREA_DETAIL || {};
  var loading = {};
  function withDetail(k, then) {
    var c = Math.floor(k / D.chunk);
    if (window.KREA_DETAIL[c]) { then(window.KREA_DETAIL[c][k - c * D.chunk]); return; }
    (loading[c] = loading[c] || []).push(function () { then(window.KREA_DETAIL[c][k - c * D.chunk]); });
    if (loading[c].length > 1) return;
    var s = document.createElement("script");
    s.src = "explorer/detail-" + ("00" + c).slice(-3) + ".js";
    s.onload = function () { var f = loading[c]; loading[c] = []; f.forEach(function (g) { g(); }); };
    document.head.appendChild(s);
  }
  function row(name, value, cls) {
    return "<tr><th>" + esc(name) + '</th><td class="' + (cls || "") + '">' + value + "</td></tr>";
  }
  function detailBlock(k, d) {
    var h = "";
    if (COMPARE) h += "<h4>run " + esc(RUNS[T.run[k]]) + "</h4>";
    h += '<table class="kx-facts">';
    h += row("cell_id", "<code>" + esc(T.cell[k]) + "</code>", "kx-cell-id");
    h += row("seed", esc(T.seed[k] === null ? "—" : T.seed[k]), "kx-seed");
    h += row("status", esc(STATUS[T.status[k]]), "kx-status");
    if (d.cell_index !== null) h += row("cell_index", esc(d.cell_index));
    if (T.result[k]) h += row("image", esc(T.result[k]));
    AX.forEach(function (a, i) {
      if (a.name === "seed" || a.name === "image") return;
      var v = T.values[i][k];
      h += row(a.name, esc(a.values[v]) + (a.legend ? ' <span class="kx-muted">' + esc(a.legend[v]) + "</span>" : ""));
    });
    h += row("prompt", esc(d.prompt || "—"), "kx-prompt");
    h += row("billed", esc(money(T.cost[k])), "kx-billed");
    h += row("estimated", esc(money(T.estimate[k])), "kx-estimated");
    h += row("latency", esc(secs(T.latency[k])), "kx-latency");
    h += row("attempts", esc(T.attempts[k] === null ? "—" : T.attempts[k]), "kx-attempts");
    if (T.error[k] || d.message) h += row("error", esc((T.error[k] || "") + (d.message ? ": " + d.message : "")), "kx-error");
    if (d.task) h += row("taskUUID", "<code>" + esc(d.task) + "</code>");
    if (d.finished) h += row("finished", esc(d.finished));
    h += row("run dir", "<code>" + esc(d.run_dir) + "</code>");
    h += "</table>";
    if (d.reproduce) h += '<p class="kx-h">reproduce <button type="button" data-act="copy">copy</button></p><pre class="kx-reproduce">' + esc(d.reproduce) + "</pre>";
    else h += '<p class="kx-h">not run yet</p><p class="kx-muted">run the same krea-run command again (its run dir is resumed) to finish this cell</p>';
    var req = d.request;
    try { req = JSON.stringify(JSON.parse(d.request), null, 2); } catch (e) { /* shown as recorded */ }
    h += '<p class="kx-h">request as sent</p><pre class="kx-request">' + esc(req || "—") + "</pre>";
    return h;
  }
  function openDetail(cell, push) {
    var u = -1;
    for (var i = 0; i < units.length; i++) if (T.cell[units[i].first] === cell) { u = i; break; }
    if (u < 0) { closeDetail(push); return; }
    var parts = units[u].parts.filter(function (p) { return p >= 0; });
    var got = [];
    parts.forEach(function (k, j) {
      withDetail(k, function (d) {
        got[j] = d;
        if (got.filter(Boolean).length < parts.length) return;
        var h = '<div class="kx-dhead"><b>cell ' + esc(cell) + '</b><span class="kx-muted">← → next tile</span><button type="button" data-act="close" title="close (Esc)">✕</button></div>';
        var fulls = parts.filter(function (k2) { return T.full[k2]; });
        if (COMPARE && fulls.length === 2) {
          h += '<div class="kx-dslider" style="--kx-split:' + state.split + '%"><img src="' + esc(T.full[fulls[1]]) + '" alt=""><img class="kx-over" src="' + esc(T.full[fulls[0]]) + '" alt=""><span class="kx-split"></span></div>';
          h += '<label class="kx-muted">' + esc(RUNS[T.run[fulls[0]]]) + ' <input type="range" data-k="dsplit" min="0" max="100" value="' + state.split + '"> ' + esc(RUNS[T.run[fulls[1]]]) + "</label>";
        } else {
          fulls.forEach(function (k2) { h += '<a href="' + esc(T.full[k2]) + '" target="_blank"><img class="kx-full" src="' + esc(T.full[k2]) + '" alt="image of cell ' + esc(cell) + '"></a>'; });
        }
        parts.forEach(function (k2, j2) { h += detailBlock(k2, got[j2]); });
        panel.innerHTML = h;
        panel.hidden = false;
        panel.setAttribute("data-cell-id", cell);
      });
    });
    if (state.cell !== cell) { state.cell = cell; if (push !== false) commit(false); }
  }
  function closeDetail(push) {
    panel.hidden = true;
    panel.removeAttribute("data-cell-id");
    if (state.cell) { state.cell = ""; if (push !== false) commit(false); }
  }

  // --- events ------------------------------------------------------------------------------------
  function move(axisName, pos, by) {
    var a = axisIndex[axisName], order = ordered(a).map(function (i) { return AX[a].values[i]; });
    var to = pos + by;
    if (to < 0 || to >= order.length) return;
    var t = order[pos]; order[pos] = order[to]; order[to] = t;
    state.order[axisName] = order;
    commit();
  }
  root.addEventListener("change", function (e) {
    var el = e.target, k = el.getAttribute("data-k");
    if (el.type === "checkbox") {
      var name = el.getAttribute("data-axis"), v = el.getAttribute("data-val");
      var list = (state.hide[name] || []).filter(function (x) { return x !== v; });
      if (!el.checked) list.push(v);
      state.hide[name] = list;
      commit();
    } else if (k === "x" || k === "y" || k === "facet") {
      state[k] = el.value;
      ["x", "y", "facet"].forEach(function (o) { if (o !== k && state[o] === el.value) state[o] = ""; });
      commit();
    } else if (k === "zoom") { state.zoom = parseInt(el.value, 10); commit(); }
    else if (k === "overlay" || k === "cmp") { state[k] = el.value; commit(); }
    else if (k === "split") { state.split = parseFloat(el.value); commit(false); }
  });
  root.addEventListener("input", function (e) {
    var el = e.target, k = el.getAttribute("data-k");
    if (k === "split") {
      state.split = parseFloat(el.value);
      var g = root.querySelector(".kx-grids");
      if (g) g.style.setProperty("--kx-split", state.split + "%");
    } else if (k === "zoom") {
      var grids = root.querySelector(".kx-grids");
      var z = parseInt(el.value, 10) * (COMPARE && state.cmp === "side" ? RUNS.length : 1);
      if (grids) grids.style.setProperty("--kx-zoom", z + "px");
    }
  });
  root.addEventListener("toggle", function (e) {
    if (!(e.target.classList && e.target.classList.contains("kx-values"))) return;
    if (valuesOpen === e.target.open) return;
    valuesOpen = e.target.open;
    if (valuesOpen) draw();  // its lists are drawn on demand
  }, true);
  root.addEventListener("click", function (e) {
    var act = e.target.closest("[data-act]");
    if (act) {
      var what = act.getAttribute("data-act");
      if (what === "swap") { var t = state.x; state.x = state.y; state.y = t; commit(); }
      else if (what === "reset") { state = fresh(); commit(); }
      else if (what === "more") { expanded[act.getAttribute("data-key")] = 1; draw(); }
      else if (what === "up" || what === "down") move(act.getAttribute("data-axis"), parseInt(act.getAttribute("data-pos"), 10), what === "up" ? -1 : 1);
      return;
    }
    var tile = e.target.closest(".kx-tile");
    if (tile) openDetail(tile.getAttribute("data-cell-id"));
  });
  root.addEventListener("keydown", function (e) {
    var tile = e.target.closest && e.target.closest(".kx-tile");
    if (tile && (e.key === "Enter" || e.key === " ")) { e.preventDefault(); openDetail(tile.getAttribute("data-cell-id")); }
  });
  panel.addEventListener("click", function (e) {
    var act = e.target.closest("[data-act]");
    if (!act) return;
    if (act.getAttribute("data-act") === "close") closeDetail();
    if (act.getAttribute("data-act") === "copy") {
      var pre = panel.querySelector(".kx-reproduce");
      var done = function () { act.textContent = "copied"; };
      if (navigator.clipboard && window.isSecureContext) navigator.clipboard.writeText(pre.textContent).then(done, function () {});
      else { var r = document.createRange(); r.selectNodeContents(pre); var s = window.getSelection(); s.removeAllRanges(); s.addRange(r); }
    }
  });
  panel.addEventListener("input", function (e) {
    if (e.target.getAttribute("data-k") === "dsplit") {
      var box = panel.querySelector(".kx-dslider");
      if (box) box.style.setProperty("--kx-split", e.target.value + "%");
    }
  });
  document.addEventListener("keydown", function (e) {
    if (panel.hidden) return;
    if (e.key === "Escape") closeDetail();
    if (e.key !== "ArrowRight" && e.key !== "ArrowLeft") return;
    if (e.target.tagName === "INPUT" || e.target.tagName === "SELECT") return;
    var tiles = Array.prototype.slice.call(root.querySelectorAll(".kx-tile"));  // the grid's order
    var at = tiles.map(function (t) { return t.getAttribute("data-cell-id"); }).indexOf(state.cell);
    var next = tiles[at + (e.key === "ArrowRight" ? 1 : -1)];
    if (next) { e.preventDefault(); openDetail(next.getAttribute("data-cell-id")); }
  });
  window.addEventListener("hashchange", function () {
    if (location.hash.indexOf("=") < 0) return;  // a link to a section of the page, not a view
    state = parseHash();
    draw();
  });
  draw();
  root.setAttribute("data-ready", "1");
})();
