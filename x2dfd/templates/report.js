/* x2dfd report table: sorts, filters, searches and pages through window.X2DFD_REPORT.rows (records.js).
   Record values (file names, explanations, cues, errors) are untrusted: they reach the page only
   through textContent; image sources must be the report's own asset paths. */
(function () {
  "use strict";
  var data = window.X2DFD_REPORT;
  var $ = function (id) { return document.getElementById(id); };
  var statusEl = $("status");
  if (!data || !Array.isArray(data.rows)) {
    statusEl.textContent = "records.js could not be loaded next to index.html, so the table cannot be shown; every record is in records.csv.";
    return;
  }
  var rows = data.rows;
  var ASSET = /^(assets\/[A-Za-z0-9._-]+\.(jpg|png)|data:image\/jpeg;base64,[A-Za-z0-9+\/=]+)$/;
  var EXPERT_COLORS = ["#2e8b57", "#d98c00", "#7b52ab", "#1f9aa8"];
  var VERDICT_ORDER = { fake: 0, real: 1, undetermined: 2 };
  var SVG = "http://www.w3.org/2000/svg";
  rows.forEach(function (r) {
    var cues = (r.cues || []).map(function (c) { return c[0] + " " + c[1]; }).join(" ");
    var ev = (r.evidence || []).map(function (e) { return e[1]; }).join(" ");
    r._hay = [r.name, r.path, r.explanation || "", r.error || "", cues, ev].join("\n").toLowerCase();
    r._wrong = !!(r.label_true && r.label !== "undetermined" && r.label !== r.label_true);
  });
  var state = { sort: "p_fake", dir: "desc", verdict: "", error: "", flag: "", q: "", page: 0, size: 50, row: null };
  var DEFAULTS = { sort: "p_fake", dir: "desc", verdict: "", error: "", flag: "", q: "", page: 0, size: 50 };
  var view = rows;

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function fmt(p, d) { return typeof p === "number" ? p.toFixed(d === undefined ? 3 : d) : "–"; }

  function picture(src, alt, missing) {
    if (typeof src === "string" && ASSET.test(src)) {
      var img = el("img");
      img.loading = "lazy";
      img.decoding = "async";
      img.alt = alt;
      img.src = src;
      var a = el("a");
      a.href = src;
      a.target = "_blank";
      a.rel = "noopener";
      a.appendChild(img);
      return a;
    }
    return el("span", "ph", missing);
  }

  function sparkline(sp) {
    var svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("class", "spark");
    svg.setAttribute("width", sp.w);
    svg.setAttribute("height", sp.h);
    svg.setAttribute("viewBox", "0 0 " + sp.w + " " + sp.h);
    var title = document.createElementNS(SVG, "title");
    title.textContent = "p_fake per sampled frame (" + sp.n + " frames; red: the verdict's p_fake, other colours: experts; shaded: manipulated segments; the vertical line marks the explained frame)";
    svg.appendChild(title);
    var half = document.createElementNS(SVG, "line");
    half.setAttribute("class", "half");
    half.setAttribute("x1", 0); half.setAttribute("x2", sp.w);
    half.setAttribute("y1", sp.h / 2); half.setAttribute("y2", sp.h / 2);
    svg.appendChild(half);
    if (typeof sp.explained_x === "number") {
      var ex = document.createElementNS(SVG, "line");
      ex.setAttribute("class", "explained");
      ex.setAttribute("x1", sp.explained_x); ex.setAttribute("x2", sp.explained_x);
      ex.setAttribute("y1", 0); ex.setAttribute("y2", sp.h);
      svg.appendChild(ex);
    }
    (sp.segs || []).forEach(function (g) {
      var rect = document.createElementNS(SVG, "rect");
      rect.setAttribute("class", "seg");
      rect.setAttribute("x", Number(g[0])); rect.setAttribute("width", Math.max(1, Number(g[1]) - Number(g[0])));
      rect.setAttribute("y", 0); rect.setAttribute("height", sp.h);
      svg.insertBefore(rect, svg.firstChild.nextSibling);
    });
    (sp.experts || []).forEach(function (e, k) {
      var pl = document.createElementNS(SVG, "polyline");
      pl.setAttribute("class", "expert");
      pl.setAttribute("stroke", EXPERT_COLORS[k % EXPERT_COLORS.length]);
      pl.setAttribute("points", String(e[1] || ""));
      var t = document.createElementNS(SVG, "title");
      t.textContent = e[0] + " per frame";
      pl.appendChild(t);
      svg.appendChild(pl);
    });
    var line = document.createElementNS(SVG, "polyline");
    line.setAttribute("class", "main");
    line.setAttribute("points", String(sp.pts || ""));
    svg.appendChild(line);
    (sp.missing || []).forEach(function (m) {
      var c = document.createElementNS(SVG, "circle");
      c.setAttribute("class", "miss");
      c.setAttribute("cx", Number(m[0])); c.setAttribute("cy", Number(m[1])); c.setAttribute("r", 1.8);
      svg.appendChild(c);
    });
    return svg;
  }

  function pColor(p) {  // real (blue) -> fake (red), through grey at 0.5
    if (typeof p !== "number") return "#8a8a8a";
    var a = [42, 111, 176], m = [150, 150, 150], b = [201, 48, 44], t, c;
    if (p < 0.5) { t = p / 0.5; c = [0, 1, 2].map(function (k) { return Math.round(a[k] + (m[k] - a[k]) * t); }); }
    else { t = (p - 0.5) / 0.5; c = [0, 1, 2].map(function (k) { return Math.round(m[k] + (b[k] - m[k]) * t); }); }
    return "rgb(" + c.join(",") + ")";
  }

  function thumbnail(r) {
    var pic = picture(r.thumb, "input", "no preview");
    var faces = (r.faces || []).filter(function (f) { return Array.isArray(f[0]) && f[0].length === 4; });
    if (!faces.length || pic.tagName !== "A") return pic;
    var wrap = el("div", "boxed");
    wrap.appendChild(pic);
    var img = pic.firstChild;
    var layer = wrap.appendChild(el("div", "boxes"));
    function place() {  // the picture is letterboxed into its square cell: boxes follow the drawn picture
      var W = img.clientWidth, H = img.clientHeight, nw = img.naturalWidth, nh = img.naturalHeight;
      if (!W || !H || !nw || !nh) return;
      var s = Math.min(W / nw, H / nh), dw = nw * s, dh = nh * s, ox = (W - dw) / 2, oy = (H - dh) / 2;
      layer.replaceChildren();
      faces.forEach(function (f) {
        var b = f[0], d = el("div", "fbox" + (f[3] === r.i ? " this" : ""));
        d.style.left = (ox + b[0] * dw) + "px"; d.style.top = (oy + b[1] * dh) + "px";
        d.style.width = Math.max(2, (b[2] - b[0]) * dw) + "px"; d.style.height = Math.max(2, (b[3] - b[1]) * dh) + "px";
        d.style.borderColor = pColor(f[1]);
        d.title = (typeof f[2] === "number" ? "face " + f[2] + ": " : "face: ") + "p_fake " + fmt(f[1]);
        layer.appendChild(d);
      });
      wrap.setAttribute("data-boxes", String(faces.length));
    }
    if (img.complete && img.naturalWidth) setTimeout(place, 0); else img.addEventListener("load", place);
    return wrap;
  }

  function renderRow(r) {
    var tr = el("tr");
    tr.setAttribute("data-label", r.label);
    tr.setAttribute("data-index", r.i);
    var td;
    tr.setAttribute("data-verdict", r.verdict || "undetermined");
    tr.id = "row-" + r.i;
    if (state.row === r.i) tr.className = "target";
    tr.appendChild(el("td")).appendChild(thumbnail(r));
    tr.appendChild(el("td")).appendChild(picture(r.face, "face crop", r.error ? "no face crop" : "face crop missing"));
    tr.appendChild(el("td")).appendChild(picture(r.heat, "heatmap over the face", "no heatmap"));

    td = tr.appendChild(el("td"));
    td.appendChild(el("div", "name", r.name));
    td.appendChild(el("div", "path", r.path));
    if (r.kind === "video") {
      var frames = r.frames || [];
      td.appendChild(el("div", "path", "video · " + frames.length + " frames sampled"));
      if (r.spark) td.appendChild(sparkline(r.spark));
    }

    td = tr.appendChild(el("td"));
    td.appendChild(el("span", "badge " + (VERDICT_ORDER.hasOwnProperty(r.label) ? r.label : "undetermined"), r.label));
    if (r.verdict === "uncertain") {
      var band = Array.isArray(r.band) ? " (p_fake in " + fmt(r.band[0], 2) + "–" + fmt(r.band[1], 2) + ")" : "";
      var u = td.appendChild(el("span", "badge uncertain", "uncertain"));
      u.title = "three-way verdict: uncertain" + band;
    }
    if ((r.disagreement || []).length) {
      var dg = td.appendChild(el("div", "badge disagree", "⚠ disagreement"));
      dg.title = r.disagreement.map(function (d) { return d[0] + " " + fmt(d[2], 2) + " vs " + d[1] + " " + fmt(d[3], 2); }).join("; ");
    }
    if (r.label_true) {
      var wrong = r.label !== "undetermined" && r.label !== r.label_true;
      td.appendChild(el("div", "truth" + (wrong ? " wrong" : ""), "true: " + r.label_true));
    }

    td = tr.appendChild(el("td"));
    td.appendChild(el("div", "pf", fmt(r.p_fake)));
    if (typeof r.p_fake === "number") {
      var meter = td.appendChild(el("div", "meter"));
      meter.appendChild(el("div")).style.width = Math.max(0, Math.min(100, 100 * r.p_fake)) + "%";
    }

    td = tr.appendChild(el("td", "experts"));
    (r.experts || []).forEach(function (e) { td.appendChild(el("div", null, e[0] + " " + fmt(e[1]))); });
    if (!(r.experts || []).length) td.textContent = "–";

    td = tr.appendChild(el("td"));
    if (r.explanation) td.appendChild(el("div", "explanation", r.explanation));
    else if (!r.error) td.appendChild(el("div", "note", r.mode === "expert-only" ? "expert-only verdict: no model text, only measured evidence" : "no explanation"));
    if (r.error) td.appendChild(el("div", "error-text", "error: " + r.error));
    if ((r.evidence || []).length) {
      var evd = td.appendChild(el("div", "evidence"));
      evd.appendChild(el("div", "ev-title", r.explanation ? "Measured evidence (beside the model's text)" : "Measured evidence"));
      var evl = evd.appendChild(el("ul"));
      r.evidence.forEach(function (e) { evl.appendChild(el("li", "ev-" + String(e[0]).replace(/[^a-z]/g, ""), e[1])); });
    }
    if ((r.segments || []).length) {
      var sg = td.appendChild(el("div", "segments"));
      sg.appendChild(el("span", "ev-title", "Manipulated segments: "));
      sg.appendChild(el("span", null, r.segments.map(function (g) { return fmt(g[0], 1) + "–" + fmt(g[1], 1) + " s (peak " + fmt(g[2], 2) + ")"; }).join(", ")));
    }
    if ((r.cues || []).length) {
      var det = td.appendChild(el("details", "cues"));
      det.appendChild(el("summary", null, r.cues.length + " cue" + (r.cues.length === 1 ? "" : "s") + " with P(yes)"));
      var ul = det.appendChild(el("ul"));
      r.cues.forEach(function (c) { ul.appendChild(el("li", null, fmt(c[2], 2) + "  " + c[1] + " [" + c[0] + "]")); });
    }
    return tr;
  }

  function compare(a, b) {
    var s = state.sort, d = state.dir === "asc" ? 1 : -1, x, y;
    if (s === "p_fake") {
      x = typeof a.p_fake === "number" ? a.p_fake : null;
      y = typeof b.p_fake === "number" ? b.p_fake : null;
      if (x === null || y === null) return x === y ? a.i - b.i : (x === null ? 1 : -1);  // unscored last
      return x === y ? a.i - b.i : (x - y) * d;
    }
    if (s === "verdict") {
      x = VERDICT_ORDER[a.label]; y = VERDICT_ORDER[b.label];
      if (x !== y) return (x - y) * d;
      return (typeof b.p_fake === "number" ? b.p_fake : -1) - (typeof a.p_fake === "number" ? a.p_fake : -1) || a.i - b.i;
    }
    if (s === "name") return (a.name.localeCompare(b.name) || a.i - b.i) * d;
    return (a.i - b.i) * d;
  }

  function apply() {
    var q = state.q.trim().toLowerCase();
    view = rows.filter(function (r) {
      if (state.verdict && r.label !== state.verdict) return false;
      if (state.error === "error" && !r.error) return false;
      if (state.error === "ok" && r.error) return false;
      if (state.flag === "misclassified" && !r._wrong) return false;
      if (state.flag === "uncertain" && r.verdict !== "uncertain") return false;
      if (state.flag === "disagreement" && !(r.disagreement || []).length) return false;
      return !q || r._hay.indexOf(q) !== -1;
    });
    view.sort(compare);
    state.page = 0;
    draw();
  }

  function readHash() {
    var h = (window.location.hash || "").replace(/^#/, "");
    h.split("&").forEach(function (kv) {
      if (!kv) return;
      var i = kv.indexOf("="), k = decodeURIComponent(i < 0 ? kv : kv.slice(0, i)), v = i < 0 ? "" : decodeURIComponent(kv.slice(i + 1));
      if (k === "sort") { var p = v.split("-"); if (p.length === 2) { state.sort = p[0]; state.dir = p[1]; } }
      else if (k === "verdict" || k === "error" || k === "flag" || k === "q") state[k] = v;
      else if (k === "size") state.size = parseInt(v, 10) || 50;
      else if (k === "page") state.page = Math.max(0, (parseInt(v, 10) || 1) - 1);
      else if (k === "row") state.row = parseInt(v, 10);
    });
  }
  function writeHash() {
    var parts = [];
    if (state.sort !== DEFAULTS.sort || state.dir !== DEFAULTS.dir) parts.push("sort=" + state.sort + "-" + state.dir);
    ["verdict", "error", "flag", "q"].forEach(function (k) { if (state[k]) parts.push(k + "=" + encodeURIComponent(state[k])); });
    if (state.size !== DEFAULTS.size) parts.push("size=" + state.size);
    if (state.page) parts.push("page=" + (state.page + 1));
    if (typeof state.row === "number" && !isNaN(state.row)) parts.push("row=" + state.row);
    var hash = parts.length ? "#" + parts.join("&") : "";
    if (hash !== window.location.hash && !(hash === "" && !window.location.hash)) {
      try { history.replaceState(null, "", hash || window.location.pathname + window.location.search); } catch (e) { /* file:// in some browsers */ }
    }
  }
  function syncControls() {
    $("filter-verdict").value = state.verdict; $("filter-error").value = state.error; $("filter-flag").value = state.flag;
    $("search").value = state.q; $("page-size").value = String(state.size);
  }

  function draw() {
    var pages = Math.max(1, Math.ceil(view.length / state.size));
    state.page = Math.min(state.page, pages - 1);
    var start = state.page * state.size, end = Math.min(view.length, start + state.size);
    var body = $("rows"), frag = document.createDocumentFragment();
    for (var k = start; k < end; k++) frag.appendChild(renderRow(view[k]));
    body.replaceChildren(frag);
    var filtered = view.length !== rows.length ? " (filtered from " + rows.length + ")" : "";
    statusEl.textContent = view.length + " matching record" + (view.length === 1 ? "" : "s") + filtered;
    $("page-info").textContent = view.length ? "records " + (start + 1) + "–" + end + " of " + view.length + " · page " + (state.page + 1) + " of " + pages : "no records";
    $("prev").disabled = state.page === 0;
    $("next").disabled = state.page >= pages - 1;
    $("sort").value = state.sort + "-" + state.dir;
    Array.prototype.forEach.call(document.querySelectorAll("button.sorter"), function (b) {
      if (b.getAttribute("data-sort") === state.sort) b.setAttribute("aria-sort", state.dir === "asc" ? "ascending" : "descending");
      else b.removeAttribute("aria-sort");
    });
    writeHash();
    document.body.setAttribute("data-ready", "1");
  }

  $("sort").addEventListener("change", function (ev) {
    var parts = ev.target.value.split("-");
    state.sort = parts[0]; state.dir = parts[1];
    apply();
  });
  Array.prototype.forEach.call(document.querySelectorAll("button.sorter"), function (b) {
    b.addEventListener("click", function () {
      var key = b.getAttribute("data-sort");
      if (state.sort === key) state.dir = state.dir === "asc" ? "desc" : "asc";
      else { state.sort = key; state.dir = key === "p_fake" ? "desc" : "asc"; }
      apply();
    });
  });
  $("filter-verdict").addEventListener("change", function (ev) { state.verdict = ev.target.value; apply(); });
  $("filter-error").addEventListener("change", function (ev) { state.error = ev.target.value; apply(); });
  $("filter-flag").addEventListener("change", function (ev) { state.flag = ev.target.value; state.row = null; apply(); });
  var timer = null;
  $("search").addEventListener("input", function (ev) {
    clearTimeout(timer);
    timer = setTimeout(function () { state.q = ev.target.value; apply(); }, 120);
  });
  $("page-size").addEventListener("change", function (ev) { state.size = parseInt(ev.target.value, 10) || 50; state.page = 0; draw(); });
  $("prev").addEventListener("click", function () { state.page -= 1; draw(); window.scrollTo(0, $("table-section").offsetTop); });
  $("next").addEventListener("click", function () { state.page += 1; draw(); window.scrollTo(0, $("table-section").offsetTop); });
  readHash();
  syncControls();
  (function first() {  // the URL's page (and #row=N: the page holding that record, scrolled to and marked)
    var page = state.page;
    apply();
    if (typeof state.row === "number" && !isNaN(state.row)) {
      var at = view.findIndex(function (r) { return r.i === state.row; });
      if (at < 0) { state.verdict = ""; state.error = ""; state.flag = ""; state.q = ""; syncControls(); apply(); at = view.findIndex(function (r) { return r.i === state.row; }); }
      if (at >= 0) { state.page = Math.floor(at / state.size); draw(); var tr = $("row-" + state.row); if (tr) tr.scrollIntoView({ block: "center" }); }
    } else if (page) { state.page = page; draw(); }
  })();
  window.addEventListener("hashchange", function () {
    var before = window.location.hash;
    state = Object.assign({}, DEFAULTS, { row: null });
    readHash(); syncControls(); apply();
    if (typeof state.row === "number") { var tr = $("row-" + state.row); if (tr) tr.scrollIntoView({ block: "center" }); }
    return before;
  });
})();
