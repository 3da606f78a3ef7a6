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
  var ASSET = /^assets\/[A-Za-z0-9._-]+\.(jpg|png)$/;
  var VERDICT_ORDER = { fake: 0, real: 1, undetermined: 2 };
  var SVG = "http://www.w3.org/2000/svg";
  rows.forEach(function (r) {
    var cues = (r.cues || []).map(function (c) { return c[0] + " " + c[1]; }).join(" ");
    r._hay = [r.name, r.path, r.explanation || "", r.error || "", cues].join("\n").toLowerCase();
  });
  var state = { sort: "p_fake", dir: "desc", verdict: "", error: "", q: "", page: 0, size: 50 };
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
    title.textContent = "p_fake per sampled frame (" + sp.n + " frames; the vertical line marks the explained frame)";
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
    var line = document.createElementNS(SVG, "polyline");
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

  function renderRow(r) {
    var tr = el("tr");
    tr.setAttribute("data-label", r.label);
    tr.setAttribute("data-index", r.i);
    var td;
    tr.appendChild(el("td")).appendChild(picture(r.thumb, "input", "no preview"));
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
    else if (!r.error) td.appendChild(el("div", "note", r.mode === "expert-only" ? "expert-only verdict: no explanation" : "no explanation"));
    if (r.error) td.appendChild(el("div", "error-text", "error: " + r.error));
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
      return !q || r._hay.indexOf(q) !== -1;
    });
    view.sort(compare);
    state.page = 0;
    draw();
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
  var timer = null;
  $("search").addEventListener("input", function (ev) {
    clearTimeout(timer);
    timer = setTimeout(function () { state.q = ev.target.value; apply(); }, 120);
  });
  $("page-size").addEventListener("change", function (ev) { state.size = parseInt(ev.target.value, 10) || 50; state.page = 0; draw(); });
  $("prev").addEventListener("click", function () { state.page -= 1; draw(); window.scrollTo(0, $("table-section").offsetTop); });
  $("next").addEventListener("click", function () { state.page += 1; draw(); window.scrollTo(0, $("table-section").offsetTop); });
  apply();
})();
