// telediag live viewer: WebSocket client, stream state and canvas rendering.
// Plain ES module, nothing to build. Messages: see telediag/viewer/bridge.py.
// Everything is drawn in one requestAnimationFrame loop from typed-array ring buffers;
// the DOM is touched only when a number, badge, banner or event line changes.

// Beat classes: colour from the Okabe-Ito palette (told apart with red-green colour blindness)
// AND a shape AND the letter, so no reader depends on colour alone. AAMI groups:
// N (normal, bundle branch block), S (supraventricular), V (ventricular), F (fusion), Q (unknown).
const BEAT_GROUP = { N: "N", L: "N", R: "N", e: "N", j: "N", S: "S", A: "S", a: "S", J: "S",
  V: "V", E: "V", F: "F", Q: "Q", "/": "Q", f: "Q", "?": "Q" };
const BEAT_STYLE = {
  N: { color: "#56B4E9", shape: "circle" },    // sky blue, dot
  S: { color: "#F0E442", shape: "triangle" },  // yellow, triangle
  V: { color: "#E8702A", shape: "square" },    // vermillion, square
  F: { color: "#CC79A7", shape: "diamond" },   // reddish purple, diamond
  Q: { color: "#BBBBBB", shape: "cross" },     // grey, cross
};
const UNUSABLE_BEAT = "#5d6670";
const BEAT_COLORS = Object.fromEntries(Object.entries(BEAT_GROUP).map(([k, g]) => [k, BEAT_STYLE[g].color]));
const UNKNOWN_BEAT = "#ffffff";
const SEG_COLORS = { S1: "rgba(255,82,82,0.30)", S2: "rgba(66,165,245,0.32)",
  systole: "rgba(255,255,255,0.035)", diastole: "rgba(0,0,0,0)" };
const WINDOW_S = 8;          // seconds shown by a strip (at least)
const RING_S = 660;          // seconds kept per signal: 10 min of review (freeze + scroll back) + margin
const GAP_FILL_MAX_S = 10;   // a gap up to this long is drawn as a hole; longer restarts the trace
const MAX_MARKERS = 3000;     // beats kept per stream (10 min at 300 bpm)
const MAX_SEGMENTS = 4000;   // heart-sound segments kept (10 min at 100 bpm, 4 per beat)
const MAX_EVENTS = 200;      // event-list lines per patient

const $ = (sel, el = document) => el.querySelector(sel);
const now = () => performance.now();
const fmtTime = (ns) => new Date(ns / 1e6).toLocaleTimeString([], { hour12: false });
const beatColor = (label, usable) => (usable === false ? UNUSABLE_BEAT
  : label == null ? UNKNOWN_BEAT : BEAT_COLORS[label] || UNKNOWN_BEAT);

function drawBeatShape(ctx, x, y, label, usable) {
  const g = label == null ? null : BEAT_GROUP[label];
  const st = g ? BEAT_STYLE[g] : { color: UNKNOWN_BEAT, shape: "circle" };
  const col = usable === false ? UNUSABLE_BEAT : st.color, r = 4.5;
  ctx.fillStyle = col; ctx.strokeStyle = col; ctx.lineWidth = 2;
  ctx.beginPath();
  if (st.shape === "circle") ctx.arc(x, y, r, 0, 2 * Math.PI);
  else if (st.shape === "triangle") { ctx.moveTo(x, y - r - 1); ctx.lineTo(x + r + 1, y + r); ctx.lineTo(x - r - 1, y + r); ctx.closePath(); }
  else if (st.shape === "square") ctx.rect(x - r, y - r, 2 * r, 2 * r);
  else if (st.shape === "diamond") { ctx.moveTo(x, y - r - 1); ctx.lineTo(x + r + 1, y); ctx.lineTo(x, y + r + 1); ctx.lineTo(x - r - 1, y); ctx.closePath(); }
  else { ctx.moveTo(x - r, y - r); ctx.lineTo(x + r, y + r); ctx.moveTo(x + r, y - r); ctx.lineTo(x - r, y + r); ctx.stroke(); return; }
  if (usable === false) ctx.stroke(); else ctx.fill();   // unusable: hollow grey
}

function drawBeatLegend(ctx, x, y) {
  ctx.font = "11px sans-serif"; ctx.textAlign = "left";
  for (const g of ["N", "S", "V", "F", "Q"]) {
    drawBeatShape(ctx, x + 5, y - 4, g, true);
    ctx.fillStyle = BEAT_STYLE[g].color; ctx.fillText(g, x + 12, y);
    x += 28;
  }
  drawBeatShape(ctx, x + 5, y - 4, "N", false);
  ctx.fillStyle = UNUSABLE_BEAT; ctx.fillText("unusable", x + 12, y);
}
const patientOf = (stream) => stream.split("/")[0];
const baseOf = (stream) => stream.replace(/\/filtered$/, "");
const natCmp = (a, b) => a.localeCompare(b, undefined, { numeric: true });
const isEngine = (stream) => stream === "engine" || stream.startsWith("engine/");

// ------------------------------------------------------------------ state
const S = {
  ws: null, connected: false, connects: 0, attempt: 0, lastMsgWall: 0,
  messages: 0, bytes: 0, rateCount: 0, rate: 0, frames: 0,
  dropped: 0, videoDropped: 0, lost: 0, upstreamIdle: null, engineIdle: null,
  patients: new Map(),     // id -> Patient
  tracks: new Map(),       // signal topic -> Track
  ann: new Map(),          // annotation stream -> {markers, markerKeys, hr, hrv, quality, segments, polyp}
  stats: new Map(),        // input stream id -> engine stats
  alarms: new Map(),       // key -> alarm view (active only)
  acks: new Map(),         // alarm key -> {acked_by, acked_at_ns, silenced_by, silenced_until_ns}
  refused: [], user: null, focused: "", overlay: true, alarmSound: null, alarmSoundPlayed: 0,
  msgMs: 0, msgMsPerS: 0, skipped: 0,   // time spent handling WebSocket messages
  frameWork: new Float32Array(1200), frameGap: new Float32Array(1200), frameN: 0,
  selected: "",
  inSnapshot: false,
  fps: 0, fpsCount: 0, drawMs: 0,       // between _snapshot begin/end: history the page may already hold
};

function annOf(stream) {
  let a = S.ann.get(stream);
  if (!a) {
    a = { markers: [], markerKeys: new Set(), hr: null, hrv: null, quality: null,
          segments: [], segKeys: new Set(), polyp: null, polypT: 0 };
    S.ann.set(stream, a);
  }
  return a;
}

// ------------------------------------------------------------------ ring buffer + playout clock
class Track {
  constructor(h) {
    this.topic = h.topic; this.kind = h.kind; this.stream = h.stream; this.base = baseOf(h.stream);
    this.channels = h.channels; this.units = h.units || [];
    this.received = 0; this.drawn = 0; this.resets = 0; this.lastSeq = -1; this.chunks = 0;
    this.arrivals = [];
    this.setRate(h.rate_hz);
  }
  setRate(rate) {
    this.rate = rate; this.period = 1000 / rate;
    this.cap = Math.ceil(rate * RING_S);
    this.buf = this.channels.map(() => new Float32Array(this.cap).fill(NaN));
    this.total = 0; this.anchor = null; this.head = null; this.speed = 1; this.lag = 200;
  }
  reset(t0) { this.total = 0; this.anchor = t0; this.head = null; this.arrivals = []; this.resets++;
    for (const b of this.buf) b.fill(NaN); }
  endMs() { return this.anchor + this.total * this.period; }
  startMs() { return this.anchor + Math.max(0, this.total - this.cap) * this.period; }
  timeOf(k) { return this.anchor + k * this.period; }
  pushNaN(n) {
    n = Math.min(n, this.cap);
    for (const b of this.buf) for (let i = 0; i < n; i++) b[(this.total + i) % this.cap] = NaN;
    this.total += n;
  }
  add(h, cols, replayed) {
    if (h.rate_hz !== this.rate || h.channels.length !== this.channels.length) {
      this.channels = h.channels; this.setRate(h.rate_hz);
    }
    const t0 = h.t0_ns / 1e6, n = h.n;
    if (this.anchor === null) this.reset(t0);
    else {
      const diff = t0 - this.endMs();
      if (replayed && t0 + (n - 1) * this.period <= this.endMs()) return; // snapshot: already have it
      if (Math.abs(diff) <= 1.5 * this.period) { /* continues */ }
      else if (diff > 0 && diff < GAP_FILL_MAX_S * 1000) this.pushNaN(Math.round(diff / this.period));
      else { this.reset(t0); pruneAnnotations(this.base); }  // restarted source or a long gap
    }
    for (let c = 0; c < cols.length; c++) {
      const b = this.buf[c], x = cols[c];
      let w = this.total % this.cap;
      for (let i = 0; i < n; i++) { b[w] = x[i]; if (++w === this.cap) w = 0; }
    }
    this.total += n; this.received += n; this.lastSeq = h.seq; this.chunks++;
    // playout clock: estimate how fast source time runs against wall time and how much to buffer
    const wall = now(), end = this.endMs();
    this.arrivals.push([wall, end, n * this.period]);
    this.lastWall = wall;
    while (this.arrivals.length > 2 && wall - this.arrivals[0][0] > 4000) this.arrivals.shift();
    const a0 = this.arrivals[0];
    if (wall - a0[0] > 600) this.speed = Math.min(50, Math.max(0.05, (end - a0[1]) / (wall - a0[0])));
    const spans = this.arrivals.map((a) => a[2]).sort((p, q) => p - q);
    this.lag = Math.min(3000, Math.max(60, 1.6 * spans[Math.floor(spans.length / 2)]));
  }
  advance(dtWall) {
    if (this.anchor === null) return;
    const end = this.endMs(), target = end - this.lag;
    if (this.head === null || Math.abs(target - this.head) > 3000) this.head = target;
    else {
      this.head += dtWall * this.speed;
      this.head += (target - this.head) * Math.min(1, dtWall / 700);
    }
    if (this.head > end) this.head = end;
  }
}

// ------------------------------------------------------------------ drawing helpers
function fitCanvas(cv) {
  const dpr = window.devicePixelRatio || 1;
  const w = Math.max(10, cv.clientWidth), h = Math.max(10, cv.clientHeight);
  if (cv.width !== Math.round(w * dpr) || cv.height !== Math.round(h * dpr)) {
    cv.width = Math.round(w * dpr); cv.height = Math.round(h * dpr);
    cv._resized = true;
  }
  const ctx = cv.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  return { ctx, w, h };
}

// Draw channel c of track tr between times [t0, t1] into the box; min/max per pixel column.
function drawTrace(ctx, tr, c, t0, t1, x0, w, yOf, color, width = 1.5) {
  if (tr.anchor === null) return 0;
  const buf = tr.buf[c], cap = tr.cap;
  let k0 = Math.max(Math.ceil((t0 - tr.anchor) / tr.period), tr.total - cap, 0);
  const k1 = Math.min(Math.floor((t1 - tr.anchor) / tr.period), tr.total - 1);
  if (k1 < k0) return 0;
  const pxPerMs = w / (t1 - t0);
  // hairlines (width <= 1, bevel joins) rasterise several times faster in software: used in the grid
  ctx.strokeStyle = color; ctx.lineWidth = S.grid ? 1 : width; ctx.lineJoin = S.grid ? "bevel" : "round";
  ctx.beginPath();
  let pen = false, col = -1, mn = 0, mx = 0, first = 0, last = 0, count = 0;
  const flush = () => {
    if (col < 0) return;
    const x = x0 + col;
    if (!pen) { ctx.moveTo(x, yOf(first)); pen = true; } else ctx.lineTo(x, yOf(first));
    if (mn !== mx) { ctx.lineTo(x, yOf(mn)); ctx.lineTo(x, yOf(mx)); }
    ctx.lineTo(x, yOf(last));
  };
  for (let k = k0; k <= k1; k++) {
    const v = buf[k % cap];
    if (v !== v) { flush(); col = -1; pen = false; continue; } // NaN: hole
    const xc = Math.floor((tr.timeOf(k) - t0) * pxPerMs);
    if (xc !== col) { flush(); col = xc; mn = mx = first = v; }
    else { if (v < mn) mn = v; if (v > mx) mx = v; }
    last = v; count++;
  }
  flush();
  ctx.stroke();
  return count;
}

function noSignal(ctx, tr, w, h) {
  if (!tr.lastWall || now() - tr.lastWall < 2000) return;
  ctx.fillStyle = "rgba(0,0,0,0.45)"; ctx.fillRect(0, 0, w, h);
  ctx.fillStyle = "#ffb300"; ctx.font = "bold 16px sans-serif"; ctx.textAlign = "center";
  ctx.fillText(`NO SIGNAL  ${((now() - tr.lastWall) / 1000).toFixed(0)} s`, w / 2, h / 2);
  ctx.textAlign = "left";
}

function visibleRange(tr, c, t0, t1) {
  const buf = tr.buf[c], cap = tr.cap;
  const k0 = Math.max(Math.ceil((t0 - tr.anchor) / tr.period), tr.total - cap, 0);
  const k1 = Math.min(Math.floor((t1 - tr.anchor) / tr.period), tr.total - 1);
  let mn = Infinity, mx = -Infinity, s = 0, n = 0;
  const step = Math.max(1, Math.floor((k1 - k0) / 2000));
  for (let k = k0; k <= k1; k += step) {
    const v = buf[k % cap];
    if (v === v) { if (v < mn) mn = v; if (v > mx) mx = v; s += v; n++; }
  }
  return n ? { mn, mx, mean: s / n } : null;
}

// ECG paper grid at 25 mm/s, 10 mm/mV: 1 mm minor and 5 mm major squares.
function gridCanvas(w, h, pxmm) {
  const dpr = window.devicePixelRatio || 1;
  const g = document.createElement("canvas");
  g.width = Math.round(w * dpr); g.height = Math.round(h * dpr);
  const ctx = g.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.fillStyle = "#000"; ctx.fillRect(0, 0, w, h);
  for (const [step, color] of [[pxmm, "#0d1a14"], [5 * pxmm, "#17332a"]]) {
    if (step < 3) continue;
    ctx.strokeStyle = color; ctx.lineWidth = 1; ctx.beginPath();
    for (let x = w; x >= 0; x -= step) { ctx.moveTo(Math.round(x) + 0.5, 0); ctx.lineTo(Math.round(x) + 0.5, h); }
    for (let y = 0; y <= h; y += step) { ctx.moveTo(0, Math.round(y) + 0.5); ctx.lineTo(w, Math.round(y) + 0.5); }
    ctx.stroke();
  }
  return g;
}

// ------------------------------------------------------------------ patients and panels
class Patient {
  constructor(id) {
    this.id = id;
    this.el = document.importNode($("#tpl-patient").content, true).firstElementChild;
    this.el.dataset.id = id;
    $(".pid", this.el).textContent = id;
    this.rows = $(".rows", this.el);
    this.alarmsEl = $(".alarms", this.el);
    this.eventsEl = $(".events", this.el);
    this.panels = new Map();
    this.events = [];
    this.eventsDirty = false;
    this.frozen = false; this.viewEnd = null; this.cal = []; this.mark = null;
    this.tools = $(".tools", this.el);
    const on = (sel, ev, fn) => $(sel, this.el).addEventListener(ev, fn);
    on(".b-freeze", "click", () => (this.frozen ? this.live() : this.freeze()));
    on(".b-back", "click", (e) => this.scroll(e.shiftKey ? -10000 : -2000));
    on(".b-fwd", "click", (e) => this.scroll(e.shiftKey ? 10000 : 2000));
    on(".b-live", "click", () => this.live());
    on(".scrub", "input", (e) => { const b = this.bounds(); if (!b) return; if (!this.frozen) this.freeze();
      this.viewEnd = b.lo + (b.hi - b.lo) * Number(e.target.value) / 1000; });
    on(".b-listen", "click", () => AU.toggle(this));
    on(".amode", "change", (e) => AU.setMode(e.target.value));
    on(".avol", "input", (e) => AU.setVolume(Number(e.target.value) / 100));
    on(".b-mute", "click", () => AU.setMuted(!AU.muted));
    this.el.addEventListener("focus", () => { S.focused = this.id; });
    // cards and list entries in natural order (bed-2 before bed-10)
    const after = [...S.patients.values()].filter((p) => natCmp(p.id, id) > 0).sort((p, q) => natCmp(p.id, q.id))[0];
    $("#cards").insertBefore(this.el, after ? after.el : null);
    this.li = document.createElement("li");
    this.li.className = "pitem";
    this.li.dataset.id = id;
    this.li.innerHTML = `<span class="pname"></span><span class="php">--</span>`;
    $(".pname", this.li).textContent = id;
    this.li.addEventListener("click", () => select(id));
    $("#plist").insertBefore(this.li, after ? after.li : null);
    $("#empty-hint").classList.add("hidden");
    applySelection();
  }
  panel(kind, key, make) {
    let p = this.panels.get(`${kind}:${key}`);
    if (!p) {
      p = make(this, key);
      this.panels.set(`${kind}:${key}`, p);
      const order = { ecg: 0, pcg: 1, video: 2 };
      const rows = [...this.panels.values()].sort((a, b) => order[a.kind] - order[b.kind] || a.key.localeCompare(b.key));
      for (const r of rows) this.rows.appendChild(r.el);
    }
    return p;
  }
  addEvent(text, cls, tNs = null) {
    this.events.unshift([text, cls, tNs]);
    if (this.events.length > MAX_EVENTS) this.events.length = MAX_EVENTS;
    this.eventsDirty = true;
  }
  // --- review: freeze, scroll back, jump, calipers (times are source times in ms)
  tracks() { return [...this.panels.values()].map((p) => p.track).filter((t) => t && t.anchor !== null); }
  primary() { const t = this.tracks(); return t.find((x) => x.kind === "ecg") || t[0] || null; }
  bounds() {
    const ts = this.tracks();
    if (!ts.length) return null;
    const hi = Math.max(...ts.map((t) => (t.head === null ? t.endMs() : t.head)));
    const lo = Math.min(...ts.map((t) => t.startMs())) + 2000;
    return { lo: Math.min(lo, hi), hi };
  }
  t1(tr) { return this.frozen && this.viewEnd !== null ? this.viewEnd : tr.head; }
  freeze() {
    const p = this.primary();
    if (!p || p.head === null) return;
    this.frozen = true; this.viewEnd = p.head;
    this.el.classList.add("frozen");
    $(".b-freeze", this.el).setAttribute("aria-pressed", "true");
  }
  live() {
    this.frozen = false; this.viewEnd = null; this.mark = null;
    this.el.classList.remove("frozen");
    $(".b-freeze", this.el).setAttribute("aria-pressed", "false");
  }
  clamp() { const b = this.bounds(); if (b && this.viewEnd !== null) this.viewEnd = Math.max(b.lo, Math.min(b.hi, this.viewEnd)); }
  scroll(dMs) { if (!this.frozen) this.freeze(); if (!this.frozen) return; this.viewEnd += dMs; this.clamp(); }
  jump(tMs) {   // show the strip around tMs (an alarm's onset): tMs at 60 % of the window
    if (!this.frozen) this.freeze();
    if (!this.frozen) return;
    this.viewEnd = tMs + 0.4 * WINDOW_S * 1000; this.mark = tMs; this.clamp();
  }
  caliper(tMs) { if (this.cal.length >= 2) this.cal = []; this.cal.push(tMs); }
  caliperText() {
    if (this.cal.length < 2) return this.cal.length ? "caliper: click (or K) for the second line" : "";
    const d = Math.abs(this.cal[1] - this.cal[0]);
    return `caliper \u0394t ${d.toFixed(0)} ms  \u00b7  ${(60000 / d).toFixed(1)} bpm`;
  }
}

function patient(id) {
  let p = S.patients.get(id);
  if (!p) { p = new Patient(id); S.patients.set(id, p); }
  return p;
}

function select(id) { S.selected = id; applySelection(); }
function applySelection() {
  for (const li of document.querySelectorAll(".pitem")) li.classList.toggle("selected", li.dataset.id === S.selected);
  for (const p of S.patients.values()) p.el.classList.toggle("hidden", S.selected !== "" && p.id !== S.selected);
}
$("#plist .all").addEventListener("click", () => select(""));

function makeRow(kind, title) {
  const el = document.importNode($("#tpl-row").content, true).firstElementChild;
  el.classList.add(kind);
  $(".title", el).textContent = title;
  return el;
}

function setText(el, text) { if (el && el.textContent !== text) el.textContent = text; }

function badgeHTML(list) {
  return list.map(([text, cls, title]) => `<span class="badge ${cls || ""}" title="${title || ""}">${text}</span>`).join("");
}

// Review on a strip: click = caliper (freezes first), drag = scroll (frozen), wheel = scroll.
function reviewInput(panel) {
  const cv = panel.canvas;
  let down = null;
  cv.addEventListener("pointerdown", (e) => { down = { x: e.clientX, moved: false }; cv.setPointerCapture(e.pointerId); });
  cv.addEventListener("pointermove", (e) => {
    if (!down || !panel.view) return;
    const dx = e.clientX - down.x;
    if (Math.abs(dx) > 4 || down.moved) {
      const pat = panel.patient;
      if (!pat.frozen) { pat.freeze(); pat.viewEnd = panel.view.t1; }   // freeze what was on screen
      pat.viewEnd -= dx / panel.view.pxPerMs; pat.clamp();
      down = { x: e.clientX, moved: true };
    }
  });
  cv.addEventListener("pointerup", (e) => {
    if (down && !down.moved && panel.view) {
      const pat = panel.patient, r = cv.getBoundingClientRect();
      const t = panel.view.t0 + (e.clientX - r.left) / panel.view.pxPerMs;
      if (!pat.frozen) { pat.freeze(); pat.viewEnd = panel.view.t1; }   // freeze exactly what was clicked on
      pat.caliper(t);
    }
    down = null;
  });
  cv.addEventListener("wheel", (e) => {
    if (!panel.view) return;
    e.preventDefault();
    panel.patient.scroll((e.deltaY + e.deltaX) / panel.view.pxPerMs);
  }, { passive: false });
}

// Calipers, the jump mark and (when frozen) the review time, over a strip.
function drawReview(ctx, pat, t0, t1, pxPerMs, w, h) {
  if (pat.mark !== null && pat.mark >= t0 && pat.mark <= t1) {
    const x = (pat.mark - t0) * pxPerMs;
    ctx.fillStyle = "rgba(255,45,45,0.18)"; ctx.fillRect(x - 2, 0, 4, h);
  }
  ctx.strokeStyle = "#4fc3f7"; ctx.lineWidth = 1.5; ctx.setLineDash([5, 3]);
  for (const c of pat.cal) {
    if (c < t0 || c > t1) continue;
    const x = Math.round((c - t0) * pxPerMs) + 0.5;
    ctx.beginPath(); ctx.moveTo(x, 0); ctx.lineTo(x, h); ctx.stroke();
  }
  ctx.setLineDash([]);
  if (pat.cal.length === 2) {
    const xa = (Math.min(...pat.cal) - t0) * pxPerMs, xb = (Math.max(...pat.cal) - t0) * pxPerMs;
    if (xb > 0 && xa < w) {
      const d = Math.abs(pat.cal[1] - pat.cal[0]);
      ctx.fillStyle = "#4fc3f7"; ctx.font = "bold 12px sans-serif"; ctx.textAlign = "center";
      ctx.fillText(`${d.toFixed(0)} ms  ${(60000 / d).toFixed(0)} bpm`, Math.max(50, Math.min(w - 50, (xa + xb) / 2)), h - 18);
      ctx.textAlign = "left";
    }
  }
  if (pat.frozen) {
    ctx.fillStyle = "#4fc3f7"; ctx.font = "bold 12px sans-serif";
    ctx.fillText(`FROZEN  ${fmtTime(t1 * 1e6)}`, w - 150, 14);
  }
}

class SignalPanel {
  constructor(pat, base, kind) {
    this.kind = kind; this.key = base; this.base = base; this.patient = pat;
    this.el = makeRow(kind, base);
    this.canvas = $("canvas", this.el);
    this.view = null; this.lastKey = "";
    reviewInput(this);
    this.num = $(".numerics", this.el);
    this.badgesEl = $(".badges", this.el);
    this.track = null; this.lastBadges = ""; this.lastNum = 0;
  }
  badges() {
    const list = [];
    const st = S.stats.get(this.base);
    const a = S.ann.get(this.base);
    const q = a && a.quality;
    if (q && q.sqi != null) list.push([`SQI ${q.sqi.toFixed(2)}`, q.sqi >= 0.5 ? "good" : "bad", "signal quality index (worst lead, last block)"]);
    if (st && st.latency_ms) {
      const l = st.latency_ms;
      list.push([`lat ${l.p50.toFixed(1)}/${l.p99.toFixed(1)} ms`, l.p99 > 500 ? "warn" : "", "engine latency p50/p99, source to publish"]);
    }
    if (st) {
      const d = (st.drops || 0) + (st.missing_chunks || 0);
      list.push([`drops ${d}`, d ? "warn" : "", "chunks dropped or missing at the engine"]);
    }
    const html = badgeHTML(list);
    if (html !== this.lastBadges) { this.badgesEl.innerHTML = html; this.lastBadges = html; }
  }
}

// Redraw a strip only when it moves by a whole pixel or something drawn on it changes: a strip
// scrolling at 50 px/s skips ~1 frame in 6 at 60 Hz, and the skipped raster work is what a
// software-rendered page with 16 patients is short of.
SignalPanel.prototype.unchanged = function (tr, w, h, pxPerMs) {
  const pat = this.patient, a = S.ann.get(this.base);
  const stale = tr.lastWall && now() - tr.lastWall > 2000 ? Math.floor(now() / 1000) : 0;
  const key = [Math.round(pat.t1(tr) * pxPerMs), w, h, pat.cal.join(), pat.mark, pat.frozen, S.grid,
    a ? `${a.markers.length}:${a.segments.length}` : "",
    this.kind === "pcg" && AU.patient === pat ? Math.round(AU.lastSrcMs * pxPerMs) : "", stale].join("|");
  if (key === this.lastKey && !this.canvas._resized) { S.skipped++; return true; }
  this.lastKey = key; this.canvas._resized = false;
  return false;
};

class EcgPanel extends SignalPanel {
  constructor(pat, base) {
    super(pat, base, "ecg");
    this.num.innerHTML = `<div class="label">HR</div><div class="big">--</div><div class="unit">bpm</div>
      <div class="kv"><span class="k">SDNN</span><span class="v sdnn">--</span>
      <span class="k">RMSSD</span><span class="v rmssd">--</span>
      <span class="k">pNN50</span><span class="v pnn50">--</span>
      <span class="k">beats</span><span class="v nbeats">0</span></div>`;
    this.grid = null; this.gridKey = "";
  }
  numerics() {
    const a = S.ann.get(this.base);
    if (!a) return;
    const big = $(".big", this.num);
    const bpm = a.hr && a.hr.bpm;
    setText(big, bpm == null ? "--" : String(Math.round(bpm)));
    big.classList.toggle("stale", !a.hrWall || now() - a.hrWall > 10000);
    setText(this.patient.li.querySelector(".php"), bpm == null ? "--" : String(Math.round(bpm)));
    const v = a.hrv || {};
    setText($(".sdnn", this.num), v.sdnn_ms == null ? "--" : `${v.sdnn_ms.toFixed(0)} ms`);
    setText($(".rmssd", this.num), v.rmssd_ms == null ? "--" : `${v.rmssd_ms.toFixed(0)} ms`);
    setText($(".pnn50", this.num), v.pnn50 == null ? "--" : `${v.pnn50.toFixed(1)} %`);
    setText($(".nbeats", this.num), String(a.markers.length >= MAX_MARKERS ? `${MAX_MARKERS}+` : a.markers.length));
  }
  draw() {
    const { ctx, w, h } = fitCanvas(this.canvas);
    const tr = this.track;
    const pxmm = Math.max(2, w / (WINDOW_S * 25));
    const key = `${w}x${h}x${pxmm}`;
    if (tr && tr.head !== null && this.unchanged(tr, w, h, (pxmm * 25) / 1000)) return;
    if (key !== this.gridKey) { this.grid = gridCanvas(w, h, pxmm); this.gridKey = key; }
    ctx.drawImage(this.grid, 0, 0, w, h);
    if (!tr || tr.head === null) {
      ctx.fillStyle = "#4a5a66"; ctx.font = "14px sans-serif"; ctx.fillText("waiting for signal…", 12, h / 2);
      return;
    }
    const pxPerMs = (pxmm * 25) / 1000;
    const t1 = this.patient.t1(tr), t0 = t1 - w / pxPerMs;
    this.view = { t0, t1, pxPerMs };
    const nCh = tr.channels.length, top = 18, stripH = (h - top - 4) / nCh;
    let drawn = 0;
    for (let c = 0; c < nCh; c++) {
      const y0 = top + c * stripH, mid = y0 + stripH / 2;
      const unit = (tr.units[c] || "").toLowerCase();
      let gain = 10 * pxmm, off = 0;                 // 10 mm/mV
      if (unit === "uv" || unit === "µv") gain /= 1000;
      else if (unit === "v") gain *= 1000;
      else if (unit !== "mv") {                       // unknown unit: fit the window
        const r = visibleRange(tr, c, t0, t1);
        if (r) { gain = (0.8 * stripH) / Math.max(1e-9, r.mx - r.mn); off = (r.mx + r.mn) / 2; }
      }
      ctx.save(); ctx.beginPath(); ctx.rect(0, y0, w, stripH); ctx.clip();
      drawn += drawTrace(ctx, tr, c, t0, t1, 0, w, (v) => mid - (v - off) * gain, "#39e27d", 1.6);
      ctx.restore();
      ctx.fillStyle = "#8fb3a0"; ctx.font = "12px sans-serif";
      ctx.fillText(tr.channels[c], 8, y0 + 14);
    }
    tr.drawn += drawn;
    // beat markers at their exact source times
    const a = S.ann.get(this.base);
    if (a) {
      ctx.font = "bold 12px sans-serif"; ctx.textAlign = "center";
      for (let i = a.markers.length - 1; i >= 0; i--) {
        const m = a.markers[i], t = m.t_ns / 1e6;
        if (t < t0) break;
        if (t > t1) continue;
        const x = (t - t0) * pxPerMs, col = beatColor(m.label, m.usable);
        ctx.strokeStyle = col; ctx.globalAlpha = 0.35; ctx.lineWidth = 1;
        ctx.beginPath(); ctx.moveTo(x, top + 14); ctx.lineTo(x, h); ctx.stroke();
        ctx.globalAlpha = 1;
        drawBeatShape(ctx, x, 7, m.label, m.usable);
        if (!S.grid) {   // the grid keeps shape + colour (text is costly to rasterise 16 times over)
          ctx.fillStyle = col;
          ctx.fillText(m.label == null ? "\u2022" : (m.usable === false ? `${m.label}?` : m.label), x, top + 10);
        }
      }
      ctx.textAlign = "left";
    }
    ctx.fillStyle = "#4f6b5c"; ctx.font = "11px sans-serif";
    ctx.fillText("25 mm/s  10 mm/mV", w - 118, h - 6);
    if (w > 500) drawBeatLegend(ctx, w - 370, h - 6);
    drawReview(ctx, this.patient, t0, t1, pxPerMs, w, h);
    if (!this.patient.frozen) noSignal(ctx, tr, w, h);
  }
}

// Abnormality verdict as "abnormal 0.82" / "normal 0.91" (probability of the stated label) or "uncertain".
function pcgVerdict(q) {
  if (!q || (q.abnormal_prob == null && !q.label)) return "--";
  if (q.label === "uncertain") return "uncertain";
  const p = q.abnormal_prob;
  const lab = q.label || (p >= 0.5 ? "abnormal" : "normal");
  if (p == null) return lab;
  return `${lab} ${(lab === "normal" ? 1 - p : p).toFixed(2)}`;
}

class PcgPanel extends SignalPanel {
  constructor(pat, base) {
    super(pat, base, "pcg");
    this.num.innerHTML = `<div class="label">HR (heart sounds)</div><div class="big">--</div><div class="unit">bpm</div>
      <div class="kv"><span class="k" title="heart-sound abnormality classifier: probability of the stated label; uncertain = signal too poor to decide (see models/pcg_abnormal/README.md)">verdict</span><span class="v abn">--</span></div>`;
    this.scale = 0;
  }
  numerics() {
    const a = S.ann.get(this.base);
    if (!a) return;
    const big = $(".big", this.num);
    const bpm = a.hr && a.hr.bpm;
    setText(big, bpm == null ? "--" : String(Math.round(bpm)));
    big.classList.toggle("stale", !a.hrWall || now() - a.hrWall > 10000);
    const q = a.quality;
    setText($(".abn", this.num), pcgVerdict(q));
  }
  draw() {
    const { ctx, w, h } = fitCanvas(this.canvas);
    const tr = this.track;
    if (tr && tr.head !== null && this.unchanged(tr, w, h, w / (Math.max(WINDOW_S, 10) * 1000))) return;
    ctx.fillStyle = "#000"; ctx.fillRect(0, 0, w, h);
    if (!tr || tr.head === null) {
      ctx.fillStyle = "#4a5a66"; ctx.font = "14px sans-serif"; ctx.fillText("waiting for heart sounds…", 12, h / 2);
      return;
    }
    const span = Math.max(WINDOW_S, 10) * 1000, t1 = this.patient.t1(tr), t0 = t1 - span, pxPerMs = w / span;
    this.view = { t0, t1, pxPerMs };
    const a = S.ann.get(this.base);
    if (a) {
      ctx.font = "bold 11px sans-serif";
      for (let i = a.segments.length - 1; i >= 0; i--) {
        const s = a.segments[i], sa = s.start_ns / 1e6, sb = s.end_ns / 1e6;
        if (sb < t0 - 5000) break;   // kept in time order: older ones are off the strip
        if (sb < t0 || sa > t1) continue;
        const xa = Math.max(0, (sa - t0) * pxPerMs), xb = Math.min(w, (sb - t0) * pxPerMs);
        const col = SEG_COLORS[s.state];
        if (col) { ctx.fillStyle = col; ctx.fillRect(xa, 0, xb - xa, h); }
        if ((s.state === "S1" || s.state === "S2") && xb - xa > 2) {
          ctx.fillStyle = s.state === "S1" ? "#ff8a80" : "#90caf9"; ctx.fillText(s.state, xa + 1, 12);
        }
      }
    }
    const r = visibleRange(tr, 0, t0, t1);
    if (r) {
      const amp = Math.max(Math.abs(r.mx - r.mean), Math.abs(r.mn - r.mean), 1e-9);
      this.scale = this.scale ? Math.max(amp, this.scale * 0.995) : amp;   // fast attack, slow release
    }
    const g = (0.45 * h) / (this.scale || 1), mid = h / 2, off = r ? r.mean : 0;
    tr.drawn += drawTrace(ctx, tr, 0, t0, t1, 0, w, (v) => mid - (v - off) * g, "#ffd54a", 1.2);
    if (AU.patient === this.patient && AU.lastSrcMs && AU.lastSrcMs >= t0 && AU.lastSrcMs <= t1) {  // what you hear now
      const x = (AU.lastSrcMs - t0) * pxPerMs;
      ctx.strokeStyle = "rgba(255,213,74,0.8)"; ctx.lineWidth = 2;
      ctx.beginPath(); ctx.moveTo(x, 0); ctx.lineTo(x, h); ctx.stroke();
    }
    drawReview(ctx, this.patient, t0, t1, pxPerMs, w, h);
    if (!this.patient.frozen) noSignal(ctx, tr, w, h);
  }
}

class VideoPanel {
  constructor(pat, stream) {
    this.kind = "video"; this.key = stream; this.stream = stream; this.patient = pat;
    this.el = makeRow("video", stream);
    this.canvas = $("canvas", this.el);
    this.num = $(".numerics", this.el);
    this.badgesEl = $(".badges", this.el);
    this.num.innerHTML = `<div class="label">Polyp</div><div class="big">--</div><div class="unit">probability</div>
      <div class="kv"><span class="k">frames</span><span class="v frames">0</span>
      <span class="k">size</span><span class="v size">--</span></div>`;
    this.bitmap = null; this.frames = 0; this.lastWall = 0; this.header = null; this.decoding = false; this.pending = null;
    this.maskCanvas = null; this.maskKey = null; this.lastBadges = ""; this.overlays = 0;
  }
  // The polyp annotations of this video: its own stream or, for the engine's overlay stream
  // (video/<s>/annotated), those of <s> (issue 18: the panel looked up <s>/annotated).
  annStream() {
    for (let s = this.stream; ;) {
      const a = S.ann.get(s);
      if (a && a.polyp) return s;
      const i = s.lastIndexOf("/");
      if (i <= 0) return this.stream;
      s = s.slice(0, i);
    }
  }
  frame(h, payload) {
    this.header = h;
    this.pending = [h, payload];
    if (!this.decoding) this.decodeNext();
  }
  async decodeNext() {
    this.decoding = true;
    while (this.pending) {
      const [h, payload] = this.pending; this.pending = null;
      try {
        const bmp = await createImageBitmap(new Blob([payload], { type: "image/jpeg" }));
        if (this.bitmap) this.bitmap.close();
        this.bitmap = bmp; this.frameT = h.t0_ns; this.frames++; this.lastWall = now();
      } catch (e) { /* a bad frame: keep the previous one */ }
    }
    this.decoding = false;
  }
  numerics() {
    const a = S.ann.get(this.annStream());
    const p = a && a.polyp;
    const big = $(".big", this.num);
    setText(big, p && p.prob != null ? `${Math.round(p.prob * 100)}%` : "--");
    big.style.color = p && p.prob != null && p.prob >= 0.5 ? "#ff5252" : "";
    setText($(".frames", this.num), String(this.frames));
    if (this.header) setText($(".size", this.num), `${this.header.src_width}×${this.header.src_height}`);
  }
  badges() {
    const st = S.stats.get(this.annStream());
    const list = [];
    if (st && st.latency_ms) list.push([`lat ${st.latency_ms.p50.toFixed(1)}/${st.latency_ms.p99.toFixed(1)} ms`, "", "engine latency p50/p99"]);
    if (st) list.push([`drops ${st.drops || 0}`, st.drops ? "warn" : "", "frames dropped at the engine (latest-frame-wins)"]);
    const a = S.ann.get(this.annStream()), p = a && a.polyp;
    if (p) {   // the engine's operating point when it is behind (polyp body: analyse_every, input_size, analysed_at)
      if (p.analyse_every === 2) list.push(["every 2nd frame", "warn", "the model analyses every second frame; the others re-use its result"]);
      if (p.input_size && p.input_size < 256) list.push([`input ${p.input_size}`, "warn", "reduced network input size (the stage is behind)"]);
      if (p.reused && p.analysed_at && p.t0_ns && p.t0_ns - p.analysed_at > 1e9)
        list.push([`overlay ${((p.t0_ns - p.analysed_at) / 1e9).toFixed(1)} s old`, "bad", "the overlay is from an older analysed frame"]);
    }
    const html = badgeHTML(list);
    if (html !== this.lastBadges) { this.badgesEl.innerHTML = html; this.lastBadges = html; }
  }
  maskImage(m) {
    if (this.maskKey === m.bits) return this.maskCanvas;
    const c = document.createElement("canvas"); c.width = m.w; c.height = m.h;
    const ctx = c.getContext("2d"), img = ctx.createImageData(m.w, m.h);
    const bytes = Uint8Array.from(atob(m.bits), (ch) => ch.charCodeAt(0));
    for (let i = 0; i < m.w * m.h; i++) {
      if ((bytes[i >> 3] >> (7 - (i & 7))) & 1) { const o = 4 * i; img.data[o] = 0; img.data[o + 1] = 255; img.data[o + 2] = 120; img.data[o + 3] = 90; }
    }
    ctx.putImageData(img, 0, 0);
    this.maskCanvas = c; this.maskKey = m.bits;
    return c;
  }
  draw() {
    const { ctx, w, h } = fitCanvas(this.canvas);
    const a0 = S.ann.get(this.annStream());
    const key = [this.frames, w, h, S.overlay, a0 ? a0.polypT : 0, now() - this.lastWall > 2000 ? Math.floor(now() / 1000) : 0].join("|");
    if (this.bitmap && key === this.lastKey && !this.canvas._resized) return;   // nothing new to show
    this.lastKey = key; this.canvas._resized = false;
    ctx.fillStyle = "#000"; ctx.fillRect(0, 0, w, h);
    if (!this.bitmap) {
      ctx.fillStyle = "#4a5a66"; ctx.font = "14px sans-serif"; ctx.fillText("waiting for video…", 12, h / 2); return;
    }
    const bw = this.bitmap.width, bh = this.bitmap.height, s = Math.min(w / bw, h / bh);
    const dw = bw * s, dh = bh * s, dx = (w - dw) / 2, dy = (h - dh) / 2;
    ctx.drawImage(this.bitmap, dx, dy, dw, dh);
    if (now() - this.lastWall > 2000) {   // frozen picture: say so, and no overlay on it
      ctx.fillStyle = "rgba(0,0,0,0.5)"; ctx.fillRect(dx, dy, dw, dh);
      ctx.fillStyle = "#ffb300"; ctx.font = "bold 16px sans-serif"; ctx.textAlign = "center";
      ctx.fillText(`NO VIDEO  ${((now() - this.lastWall) / 1000).toFixed(0)} s`, w / 2, h / 2);
      ctx.textAlign = "left";
      return;
    }
    const a = S.ann.get(this.annStream()), p = a && a.polyp;
    if (!S.overlay || !p || Math.abs(a.polypT - this.frameT) > 1e9) return;  // overlay only near its frame time
    this.overlays++;
    if (p.mask) ctx.drawImage(this.maskImage(p.mask), dx, dy, dw, dh);
    ctx.lineWidth = 2; ctx.strokeStyle = "#00ff88";
    for (const c of p.contours) {
      ctx.beginPath();
      for (let i = 0; i < c.length; i += 2) { const x = dx + c[i] * dw, y = dy + c[i + 1] * dh; i ? ctx.lineTo(x, y) : ctx.moveTo(x, y); }
      ctx.closePath(); ctx.stroke();
    }
    ctx.strokeStyle = "#ffeb3b"; ctx.font = "bold 13px sans-serif"; ctx.fillStyle = "#ffeb3b";
    for (const b of p.boxes) {
      const x = dx + b[0] * dw, y = dy + b[1] * dh;
      ctx.strokeRect(x, y, (b[2] - b[0]) * dw, (b[3] - b[1]) * dh);
      if (b[4] >= 0) ctx.fillText(`polyp ${Math.round(b[4] * 100)}%`, x + 2, Math.max(12, y - 4));
    }
  }
}

// ------------------------------------------------------------------ message handling
function onSignal(h, buf, off) {
  if (isEngine(h.stream)) return;
  let tr = S.tracks.get(h.topic);
  const cols = [];
  for (let c = 0; c < h.channels.length; c++) cols.push(new Float32Array(buf, off + c * h.n * 4, h.n));
  if (!tr) {
    tr = new Track(h);
    S.tracks.set(h.topic, tr);
    const pat = patient(patientOf(h.stream));
    const panel = pat.panel(h.kind, tr.base, (p, k) => (h.kind === "pcg" ? new PcgPanel(p, k) : new EcgPanel(p, k)));
    if (h.kind === "pcg") $(".listen-tools", pat.el).classList.remove("hidden");
    if (!panel.track || h.stream.endsWith("/filtered")) panel.track = tr;  // prefer the filtered stream
  }
  tr.add(h, cols, S.inSnapshot);
}

function onVideo(h, buf, off) {
  const pat = patient(patientOf(h.stream));
  const panel = pat.panel("video", h.stream, (p, k) => new VideoPanel(p, k));
  panel.frame(h, new Uint8Array(buf, off));
}

function onBinary(buf) {
  const u8 = new Uint8Array(buf, 0, 8);
  if (u8[0] !== 84 || u8[1] !== 68 || u8[2] !== 66 || u8[3] !== 49) return; // "TDB1"
  const hlen = new DataView(buf).getUint32(4, true);
  const h = JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 8, hlen)));
  const off = 8 + hlen;
  if (h.kind === "video") onVideo(h, buf, off);
  else if (h.kind === "audio") AU.onAudio(h, buf, off);
  else onSignal(h, buf, off);
}

// Returns null when the body is not an alarm, else whether the alarm state changed.
function onAlarm(v, stream) {
  if (!v || !v.key) return null;
  const was = S.alarms.has(v.key);
  if (v.state === "on") S.alarms.set(v.key, { ...v, stream });
  else { S.alarms.delete(v.key); S.acks.delete(v.key); }
  alarmsDirty = true;
  return was !== (v.state === "on");
}
let alarmsDirty = false;

// The trace starts over (a restarted source, or a gap too long to draw): the beats and
// segments of the old timeline go with it.
function pruneAnnotations(base) {
  const a = S.ann.get(base);
  if (!a) return;
  a.markers = []; a.markerKeys = new Set();
  a.segments = []; a.segKeys = new Set();
}

function onJson(m) {
  const k = m.kind;
  if (k === "_snapshot") { S.inSnapshot = m.state === "begin"; return; }
  if (k === "_bridge") {
    S.inSnapshot = false;
    S.dropped = m.dropped; S.videoDropped = m.video_dropped; S.lost = m.lost; S.upstreamIdle = m.upstream_idle_s;
    S.engineIdle = m.engine_idle_s;
    return;
  }
  if (k === "_hello") {
    S.user = m.user || null;
    if (S.user) { setText($("#whoami"), `signed in: ${S.user}`); $("#whoami").classList.remove("hidden"); }
    AU.resubscribe();   // a reconnected socket: ask for the audio again
    return;
  }
  if (k === "_ack") { S.acks.set(m.key, m); alarmsDirty = true; return; }
  if (k === "_refused") { S.refused.push(m); if (S.refused.length > 50) S.refused.shift(); console.warn("telediag: refused", m); return; }
  if (k === "stats") {
    const streams = (m.body && m.body.streams) || {};
    for (const sid of Object.keys(streams)) S.stats.set(sid, streams[sid]);
    return;
  }
  const stream = m.stream, v = m.view;
  if (k === "alarm" || (k === "event" && v && v.key)) {
    if (onAlarm(v, stream)) logEvent(stream, m, v);   // log changes only (alarms are re-sent)
    return;
  }
  if (k === "event") { logEvent(stream, m, null); return; }
  if (isEngine(stream)) return;
  patient(patientOf(stream));
  const a = annOf(stream);
  if (k === "beats" && v) {
    for (const b of v.beats) {
      const key = `${b.t_ns}`;
      if (a.markerKeys.has(key)) continue;
      a.markerKeys.add(key);
      a.markers.push(b);
    }
    a.markers.sort((p, q) => p.t_ns - q.t_ns);
    while (a.markers.length > MAX_MARKERS) a.markerKeys.delete(`${a.markers.shift().t_ns}`);
  } else if (k === "hr" && v) { a.hr = v; a.hrWall = now(); }
  else if (k === "hrv" && v) a.hrv = v;
  else if (k === "quality" && v) a.quality = { ...(a.quality || {}), ...v };
  else if (k === "segments" && v) {
    for (const s of v.segments) {
      const key = `${s.start_ns}:${s.state}`;
      if (a.segKeys.has(key)) continue;
      a.segKeys.add(key); a.segments.push(s);
    }
    while (a.segments.length > MAX_SEGMENTS) a.segKeys.delete(`${a.segments[0].start_ns}:${a.segments.shift().state}`);
  } else if (k === "polyp" && v) { a.polyp = v; a.polypT = m.t0_ns; }
}

function logEvent(stream, m, v) {
  if (isEngine(stream)) return;
  const pat = patient(patientOf(stream));
  const b = m.body || {};
  let text, cls = "";
  if (v) { text = `${v.text} ${v.state === "on" ? "ON" : "off"}${v.technical ? " (technical)" : ""}`; cls = v.technical ? "ev-warn" : "ev-alarm"; }
  else {
    const extra = ["reason", "event", "state", "missing_chunks"].filter((x) => b[x] != null).map((x) => `${x}=${b[x]}`).join(" ");
    text = `${b.type || "event"} ${extra}`;
    if (b.type === "gap" || b.type === "rejected") cls = "ev-warn";
  }
  const t = v ? v.onset_ns : (b.onset_ns || m.t0_ns);
  pat.addEvent(`${fmtTime(t)}  ${stream}  ${text}`, cls, v ? t : null);
}

const PRIO_RANK = { high: 0, medium: 1, low: 2 };
const PRIO_MARK = { high: "!!!", medium: "!!", low: "!" };
function renderAlarms() {
  alarmsDirty = false;
  const byPatient = new Map();
  for (const a of S.alarms.values()) {
    const id = patientOf(a.stream);
    if (!byPatient.has(id)) byPatient.set(id, []);
    byPatient.get(id).push(a);
  }
  for (const [id, pat] of S.patients) {
    const list = (byPatient.get(id) || []).sort((p, q) => (PRIO_RANK[p.priority] ?? 3) - (PRIO_RANK[q.priority] ?? 3)
      || (p.technical === true) - (q.technical === true) || p.onset_ns - q.onset_ns);
    pat.alarmList = list;
    pat.alarmsEl.replaceChildren(...list.map((a) => {
      const ack = S.acks.get(a.key) || {};
      const d = document.createElement("div");
      d.className = `alarm ${PRIO_RANK[a.priority] !== undefined ? a.priority : "high"}${a.technical ? " technical" : ""}${ack.acked_by ? " acked" : ""}`;
      d.dataset.key = a.key; d.dataset.type = a.type; d.dataset.priority = a.priority;
      d.title = `${a.priority} priority ${a.technical ? "technical" : "physiological"} alarm; click to see its strip`;
      d.append(a.text);
      const tag = document.createElement("span"); tag.className = "tag";
      tag.textContent = `${a.technical ? "TECH " : ""}${PRIO_MARK[a.priority] || "!!!"}`;
      const s = document.createElement("span"); s.className = "since";
      s.textContent = `since ${fmtTime(a.onset_ns)}`;
      d.append(tag, s);
      if (ack.acked_by || ack.silenced_by) {
        const w = document.createElement("span"); w.className = "who";
        const parts = [];
        if (ack.acked_by) parts.push(`ack ${ack.acked_by} ${fmtTime(ack.acked_at_ns)}`);
        if (ack.silenced_by && ack.silenced_until_ns > Date.now() * 1e6) parts.push(`silenced ${ack.silenced_by} until ${fmtTime(ack.silenced_until_ns)}`);
        w.textContent = parts.join(" \u00b7 ");
        d.append(w);
      }
      const bAck = document.createElement("button"); bAck.className = "b-ack"; bAck.textContent = "Ack";
      bAck.title = "acknowledge (A)"; bAck.addEventListener("click", (e) => { e.stopPropagation(); sendOp({ op: "ack", key: a.key }); });
      const bSil = document.createElement("button"); bSil.className = "b-silence"; bSil.textContent = "Silence 2 min";
      bSil.title = "pause the alarm sound for 2 minutes (S)"; bSil.addEventListener("click", (e) => { e.stopPropagation(); sendOp({ op: "silence", key: a.key }); });
      if (!ack.acked_by) d.append(bAck);
      d.append(bSil);
      d.addEventListener("click", () => pat.jump(a.onset_ns / 1e6));
      return d;
    }));
    const high = list.some((a) => !a.technical);
    pat.el.classList.toggle("alarming", high);
    pat.li.classList.toggle("alarming", high);
  }
  for (const a of S.alarms.values()) if (!S.patients.has(patientOf(a.stream))) { patient(patientOf(a.stream)); alarmsDirty = true; }
}

function sendOp(m) {
  if (S.ws && S.connected) { try { S.ws.send(JSON.stringify(m)); return true; } catch (e) { /* closing */ } }
  return false;
}

// Alarm sound (IEC 60601-1-8 style bursts, simplified): high 5 pulses every 5 s, medium 3 every
// 8 s, low 1 every 15 s; off for acknowledged alarms and while silenced. Needs the audio context
// (created by the first Listen click, a user gesture).
const ALARM_SOUND = { high: { n: 5, every: 5000, f: 660 }, medium: { n: 3, every: 8000, f: 523 }, low: { n: 1, every: 15000, f: 440 } };
let alarmSoundLast = 0;
function alarmSoundTick() {
  const nowNs = Date.now() * 1e6;
  let best = null;
  for (const a of S.alarms.values()) {
    const ack = S.acks.get(a.key) || {};
    if (ack.acked_by || (ack.silenced_until_ns && ack.silenced_until_ns > nowNs)) continue;
    if (best === null || (PRIO_RANK[a.priority] ?? 0) < (PRIO_RANK[best] ?? 0)) best = a.priority in PRIO_RANK ? a.priority : "high";
  }
  S.alarmSound = best;
  if (!best || !AU.ctx || AU.ctx.state !== "running") return;
  const p = ALARM_SOUND[best];
  if (now() - alarmSoundLast < p.every) return;
  alarmSoundLast = now();
  const t = AU.ctx.currentTime + 0.05;
  for (let i = 0; i < p.n; i++) {
    const o = AU.ctx.createOscillator(), g = AU.ctx.createGain();
    o.frequency.value = p.f; o.type = "triangle";
    const t0 = t + i * 0.25;
    g.gain.setValueAtTime(0, t0); g.gain.linearRampToValueAtTime(0.15, t0 + 0.02);
    g.gain.setValueAtTime(0.15, t0 + 0.13); g.gain.linearRampToValueAtTime(0, t0 + 0.16);
    o.connect(g).connect(AU.ctx.destination); o.start(t0); o.stop(t0 + 0.2);
  }
  S.alarmSoundPlayed++;
}
setInterval(alarmSoundTick, 500);

// ------------------------------------------------------------------ live auscultation (WebAudio)
// One patient at a time: the bridge sends that patient's heart sounds at full rate ("audio"
// messages) after {"op": "listen"}; an AudioWorklet jitter buffer (static/audio-worklet.js)
// plays them through stethoscope filters (bell / diaphragm / extended), volume and mute.
const MODES = {   // [high-pass Hz, low-pass Hz], two 2nd-order sections each (4th order, Butterworth Q)
  bell: [20, 200],         // low frequencies: S3, S4, diastolic rumble
  diaphragm: [100, 500],   // higher: S1/S2, clicks, most murmurs
  extended: [20, 1000],    // both
};
const AU = {
  ctx: null, player: null, filters: [], gain: null, tap: null, ready: null,
  patient: null, stream: null, mode: "diaphragm", volume: 0.8, muted: false,
  delays: [], arrivals: [], report: null, worker: null, delayLog: [], lastSrcMs: 0, chunks: 0, tapBlocks: [], tapOn: false,
  async ensure() {
    if (this.ready) return this.ready;
    this.ready = (async () => {
      const ctx = new AudioContext({ latencyHint: "interactive" });
      await ctx.audioWorklet.addModule("/static/audio-worklet.js");
      this.player = new AudioWorkletNode(ctx, "td-player", { numberOfInputs: 0, outputChannelCount: [1],
        processorOptions: { delayMs: 150, marginMs: 60, startMarginMs: 120 } });
      this.filters = [0, 1, 2, 3].map((i) => { const f = ctx.createBiquadFilter(); f.type = i < 2 ? "highpass" : "lowpass"; f.Q.value = i % 2 ? 1.307 : 0.541; return f; });
      this.gain = ctx.createGain();
      this.tap = new AudioWorkletNode(ctx, "td-tap", { outputChannelCount: [1] });
      this.player.connect(this.filters[0]).connect(this.filters[1]).connect(this.filters[2]).connect(this.filters[3])
        .connect(this.gain).connect(this.tap).connect(ctx.destination);
      this.player.port.onmessage = (e) => this.onReport(e.data);
      // the heart sounds come over their own WebSocket in a Worker, straight into the worklet
      const ch = new MessageChannel();
      this.player.port.postMessage({ cmd: "port", port: ch.port1 }, [ch.port1]);
      this.worker = new Worker("/static/audio-ws-worker.js");
      this.worker.onmessage = (e) => {
        if (e.data.cmd === "stats") { this.arrivals.push(...e.data.ages); if (this.arrivals.length > 3000) this.arrivals.splice(0, this.arrivals.length - 3000); }
        else if (e.data.cmd === "refused") { S.refused.push(e.data.m); }
      };
      const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws?audio=1`;
      this.worker.postMessage({ cmd: "open", url, port: ch.port2 }, [ch.port2]);
      this.tap.port.onmessage = (e) => { if (e.data.cmd === "tap") { this.tapBlocks.push(e.data); if (this.tapBlocks.length > 400) this.tapBlocks.shift(); } };
      this.ctx = ctx;
      this.setMode(this.mode); this.setVolume(this.volume); this.setMuted(this.muted);
      return ctx;
    })();
    return this.ready;
  },
  async toggle(pat) { if (this.patient === pat) this.stop(); else await this.start(pat); },
  async start(pat) {
    const pcg = [...pat.panels.values()].find((p) => p.kind === "pcg");
    if (!pcg) return;
    if (this.patient) this.stop();
    const ctx = await this.ensure();
    if (ctx.state !== "running") await ctx.resume();
    this.patient = pat; this.stream = pcg.base; this.delays = []; this.arrivals = []; this.chunks = 0;
    this.player.port.postMessage({ cmd: "reset" });
    this.worker.postMessage({ cmd: "listen", stream: this.stream, on: true });
    for (const p of S.patients.values()) $(".b-listen", p.el).setAttribute("aria-pressed", String(p === pat));
  },
  stop() {
    if (this.stream && this.worker) this.worker.postMessage({ cmd: "listen", stream: this.stream, on: false });
    if (this.player) this.player.port.postMessage({ cmd: "reset" });
    this.patient = null; this.stream = null; this.lastSrcMs = 0;
    for (const p of S.patients.values()) $(".b-listen", p.el).setAttribute("aria-pressed", "false");
  },
  resubscribe() { /* the audio Worker re-sends its listen request when its socket reconnects */ },
  setMode(m) {
    if (!MODES[m]) return;
    this.mode = m;
    for (const el of document.querySelectorAll(".amode")) el.value = m;
    if (!this.ctx) return;
    const [hp, lp] = MODES[m], t = this.ctx.currentTime;
    this.filters[0].frequency.setTargetAtTime(hp, t, 0.02); this.filters[1].frequency.setTargetAtTime(hp, t, 0.02);
    this.filters[2].frequency.setTargetAtTime(lp, t, 0.02); this.filters[3].frequency.setTargetAtTime(lp, t, 0.02);
  },
  setVolume(v) {
    this.volume = Math.max(0, Math.min(1, v));
    for (const el of document.querySelectorAll(".avol")) el.value = String(Math.round(this.volume * 100));
    if (this.gain) this.gain.gain.setTargetAtTime(this.muted ? 0 : this.volume, this.ctx.currentTime, 0.02); // ramped: no click
  },
  setMuted(m) {
    this.muted = m;
    for (const el of document.querySelectorAll(".b-mute")) el.setAttribute("aria-pressed", String(m));
    this.setVolume(this.volume);
  },
  onAudio(h, buf, off) {
    if (!this.player || h.base !== this.stream) return;
    const x = new Float32Array(buf, off, h.n).slice();
    this.chunks++;
    this.arrivals.push(performance.timeOrigin + performance.now() - (h.t0_ns / 1e6 + h.n * 1000 / h.rate_hz));  // last sample's age
    if (this.arrivals.length > 3000) this.arrivals.shift();
    this.player.port.postMessage({ cmd: "data", t0: h.t0_ns / 1e6, rate: h.rate_hz, seq: h.seq, x }, [x.buffer]);
  },
  // play time (wall clock, ms since epoch) of context time t
  wallOf(t) {
    const ts = this.ctx.getOutputTimestamp();
    return performance.timeOrigin + ts.performanceTime + (t - ts.contextTime) * 1000;
  },
  onReport(r) {
    this.report = r;
    if (!r.playing || !this.stream) return;
    this.lastSrcMs = r.srcMs;
    const wall = this.wallOf(r.ctxTime), d = wall - r.srcMs;   // source time -> time it leaves the speaker
    this.delays.push(d);
    if (this.delays.length > 6000) this.delays.shift();
    this.delayLog.push([wall, d]);
    if (this.delayLog.length > 600) this.delayLog.shift();
  },
  stats() {
    const d = [...this.delays].sort((a, b) => a - b);
    const q = (p) => (d.length ? d[Math.min(d.length - 1, Math.floor(p * d.length))] : null);
    const r = this.report || {};
    return { listening: this.stream, mode: this.mode, volume: this.volume, muted: this.muted,
      state: this.ctx ? this.ctx.state : null, sample_rate: this.ctx ? this.ctx.sampleRate : null,
      chunks: this.chunks, delays: d.length,
      arrival_p50_ms: pctl(this.arrivals, 0.5), arrival_p95_ms: pctl(this.arrivals, 0.95), delay_p50_ms: q(0.5), delay_p95_ms: q(0.95), delay_max_ms: d.length ? d[d.length - 1] : null,
      underruns: r.underruns ?? 0, skips: r.skips ?? 0, gaps: r.gaps ?? 0, concealed_ms: r.concealedMs ?? 0,
      buffered_ms: r.bufferedMs ?? null, ratio: r.ratio ?? null, margin_ms: r.marginMs ?? null,
      underrun_ms: r.lateMs ?? [], arrival_max_ms: this.arrivals.length ? Math.max(...this.arrivals) : null,
      filters: this.filters.map((f) => [f.type, f.frequency.value]) };
  },
  // the delay reported for audio played around wall time `wall` (ms since epoch)
  delayNear(wall) { return pctl(this.delayLog.filter(([w]) => Math.abs(w - wall) < 300).map(([, d]) => d), 0.5); },
  tapArm(on) { this.tapBlocks = []; if (this.tap) this.tap.port.postMessage({ cmd: "arm", on }); },
  // first output sample louder than thr*peak after wall time afterMs: its wall time and the tone's frequency
  tapFind(thr, afterMs) {
    const blocks = this.tapBlocks;
    if (!blocks.length) return null;
    let peak = 0;
    for (const b of blocks) for (const v of b.x) if (Math.abs(v) > peak) peak = Math.abs(v);
    for (let bi = 0; bi < blocks.length; bi++) {
      const b = blocks[bi];
      for (let i = 0; i < b.x.length; i++) {
        if (Math.abs(b.x[i]) < thr * peak) continue;
        const t = b.t0 + i / b.rate, wall = this.wallOf(t);
        if (wall < afterMs) continue;
        const seg = [];   // 100 ms from the onset: zero crossings -> frequency
        for (let bj = bi; bj < blocks.length && seg.length < 0.1 * b.rate; bj++)
          for (let k = bj === bi ? i : 0; k < blocks[bj].x.length && seg.length < 0.1 * b.rate; k++) seg.push(blocks[bj].x[k]);
        let zc = 0;
        for (let k = 1; k < seg.length; k++) if ((seg[k - 1] < 0) !== (seg[k] < 0)) zc++;
        return { wall_ms: wall, ctx_time: t, freq_hz: zc / 2 / (seg.length / b.rate), peak };
      }
    }
    return null;
  },
};

function pctl(arr, p) { const a = [...arr].sort((x, y) => x - y); return a.length ? a[Math.min(a.length - 1, Math.floor(p * a.length))] : null; }

// ------------------------------------------------------------------ keyboard
function activePatient() {
  const id = S.selected || S.focused || (S.patients.size ? S.patients.keys().next().value : null);
  return id != null ? S.patients.get(id) : null;
}
document.addEventListener("keydown", (e) => {
  const tag = (e.target && e.target.tagName) || "";
  if (tag === "INPUT" || tag === "SELECT" || tag === "TEXTAREA" || e.ctrlKey || e.metaKey || e.altKey) return;
  if (tag === "BUTTON" && (e.key === " " || e.key === "Enter")) return;   // the button's own action
  const pat = activePatient();
  const k = e.key;
  let done = true;
  if (k === "?") $("#help").classList.toggle("hidden");
  else if (k === "g" || k === "G") toggleGrid();
  else if (k === "o" || k === "O") S.overlay = !S.overlay;
  else if (k >= "0" && k <= "9") { const ids = [...S.patients.keys()]; select(k === "0" ? "" : ids[Number(k) - 1] ?? S.selected); }
  else if (!pat) done = false;
  else if (k === " ") (pat.frozen ? pat.live() : pat.freeze());
  else if (k === "ArrowLeft") pat.scroll(e.shiftKey ? -10000 : -2000);
  else if (k === "ArrowRight") pat.scroll(e.shiftKey ? 10000 : 2000);
  else if (k === "Home") { const b = pat.bounds(); if (b) { pat.freeze(); pat.viewEnd = b.lo; } }
  else if (k === "End" || k === "Escape") pat.live();
  else if (k === "k" || k === "K") { const p = pat.primary(); if (p) { if (!pat.frozen) pat.freeze(); pat.caliper(pat.t1(p) - WINDOW_S * 500); } }
  else if (k === "," || k === "." || k === "<" || k === ">") {
    if (pat.cal.length) pat.cal[pat.cal.length - 1] += (k === "," || k === "<" ? -1 : 1) * (e.shiftKey ? 40 : 4);
  }
  else if (k === "c" || k === "C") pat.cal = [];
  else if (k === "a" || k === "A") { const a = (pat.alarmList || []).find((x) => !(S.acks.get(x.key) || {}).acked_by); if (a) sendOp({ op: "ack", key: a.key }); }
  else if (k === "s" || k === "S") { for (const a of pat.alarmList || []) sendOp({ op: "silence", key: a.key }); }
  else if (k === "l" || k === "L") AU.toggle(pat);
  else if (k === "b" || k === "B") AU.setMode("bell");
  else if (k === "d" || k === "D") AU.setMode("diaphragm");
  else if (k === "e" || k === "E") AU.setMode("extended");
  else if (k === "m" || k === "M") AU.setMuted(!AU.muted);
  else if (k === "+" || k === "=") AU.setVolume(AU.volume + 0.1);
  else if (k === "-") AU.setVolume(AU.volume - 0.1);
  else done = false;
  if (done) e.preventDefault();
});
function toggleGrid() {
  const on = !document.body.classList.contains("grid");
  document.body.classList.toggle("grid", on);
  S.grid = on;
  $("#b-layout").setAttribute("aria-pressed", String(on));
}
$("#b-layout").addEventListener("click", toggleGrid);
$("#b-help").addEventListener("click", () => $("#help").classList.toggle("hidden"));
if (new URLSearchParams(location.search).get("layout") === "grid") toggleGrid();

// ------------------------------------------------------------------ WebSocket with reconnect
function connect() {
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
  let ws;
  try { ws = new WebSocket(url); } catch (e) { scheduleReconnect(); return; }
  ws.binaryType = "arraybuffer";
  S.ws = ws;
  ws.onopen = () => {
    S.connected = true; S.connects++; S.attempt = 0; S.lastMsgWall = now();
    setText($("#conn"), "live"); $("#conn").className = "conn up";
  };
  ws.onmessage = (ev) => {
    const tm = now();
    S.messages++; S.rateCount++; S.lastMsgWall = tm;
    try {
      if (typeof ev.data === "string") { S.bytes += ev.data.length; onJson(JSON.parse(ev.data)); }
      else { S.bytes += ev.data.byteLength; onBinary(ev.data); }
    } catch (e) { console.error("telediag viewer: bad message", e); }
    S.msgMs += now() - tm;
  };
  ws.onclose = () => {
    if (S.ws !== ws) return;
    S.connected = false; S.ws = null;
    scheduleReconnect();
  };
  ws.onerror = () => { /* onclose follows */ };
}

function scheduleReconnect() {
  const delay = Math.min(5000, 250 * 2 ** S.attempt) * (0.75 + 0.5 * Math.random());
  S.attempt = Math.min(S.attempt + 1, 8);
  $("#conn").className = "conn down";
  setText($("#conn"), `reconnecting (${S.attempt})…`);
  setTimeout(connect, delay);
}

// a silent connection (no status message for 5 s) is treated as dead
setInterval(() => {
  if (S.ws && S.connected && now() - S.lastMsgWall > 5000) { try { S.ws.close(); } catch (e) { /* closing */ } }
  S.rate = S.rateCount; S.rateCount = 0;
  S.fps = S.fpsCount; S.fpsCount = 0;
  S.msgMsPerS = S.msgMs; S.msgMs = 0;
}, 1000);

// ------------------------------------------------------------------ render loop
let lastFrame = now(), lastSlow = 0;
function frame() {
  const t = now(), dt = Math.min(250, t - lastFrame);
  S.frameGap[S.frameN % S.frameGap.length] = t - lastFrame;
  lastFrame = t; S.frames++; S.fpsCount++;
  for (const tr of S.tracks.values()) tr.advance(dt);
  // With many patients in the grid, strips are redrawn at half the display rate (30 Hz at 60 Hz,
  // ample for a strip moving ~50 px/s), half of them on each frame: each frame does half the work.
  const stagger = S.grid && S.patients.size > 8;
  let pi = 0;
  for (const pat of S.patients.values()) {
    if (pat.el.classList.contains("hidden")) continue;
    if (!S.noDraw) for (const p of pat.panels.values()) { if (!stagger || (S.frames + pi++) % 2 === 0) p.draw(); }
  }
  if (alarmsDirty) renderAlarms();
  if (t - lastSlow > 250) {   // numbers, badges and event lines at 4 Hz
    lastSlow = t;
    for (const pat of S.patients.values()) {
      for (const p of pat.panels.values()) { p.numerics(); p.badges(); }
      if (pat.eventsDirty) {
        pat.eventsDirty = false;
        pat.eventsEl.replaceChildren(...pat.events.map(([text, cls, tNs]) => {
          const d = document.createElement(tNs != null ? "button" : "div");
          d.textContent = text; d.className = cls; d.setAttribute("role", "listitem");
          if (tNs != null) { d.title = "show this alarm's strip"; d.addEventListener("click", () => pat.jump(tNs / 1e6)); }
          return d;
        }));
      }
      if (pat.frozen) pat.clamp();
      const b = pat.bounds();
      setText($(".revinfo", pat.el), pat.frozen && b ? `review ${fmtTime(pat.viewEnd * 1e6)} (-${((b.hi - pat.viewEnd) / 1000).toFixed(0)} s)` : "");
      const sc = $(".scrub", pat.el);
      if (b && b.hi > b.lo) { const v = String(Math.round(1000 * ((pat.frozen ? pat.viewEnd : b.hi) - b.lo) / (b.hi - b.lo))); if (sc.value !== v && document.activeElement !== sc) sc.value = v; }
      setText($(".caliper-read", pat.el), pat.caliperText());
    }
    setText($("#clock"), new Date().toLocaleTimeString([], { hour12: false }));
    setText($("#b-rate"), `${S.rate} msg/s`);
    setText($("#b-dropped"), `dropped ${S.dropped}`);
    $("#b-dropped").className = `badge ${S.dropped ? "warn" : ""}`;
    setText($("#b-lost"), `lost ${S.lost}`);
    $("#b-lost").className = `badge ${S.lost ? "warn" : ""}`;
    $("#upstream").classList.toggle("hidden", !(S.connected && S.engineIdle != null && S.engineIdle > 3));
  }
  const work = now() - t;
  S.frameWork[S.frameN % S.frameWork.length] = work; S.frameN++;
  S.drawMs = 0.95 * S.drawMs + 0.05 * work;   // time spent drawing one frame (EMA)
  requestAnimationFrame(frame);
}

// ------------------------------------------------------------------ debug / test hook
window.telediag = {
  state() {
    const streams = {};
    for (const [topic, tr] of S.tracks) {
      streams[topic] = { kind: tr.kind, stream: tr.stream, rate_hz: tr.rate, channels: tr.channels,
        received: tr.received, drawn: tr.drawn, chunks: tr.chunks, resets: tr.resets,
        head_ns: tr.head === null ? null : tr.head * 1e6, end_ns: tr.anchor === null ? null : tr.endMs() * 1e6 };
    }
    const markers = {}, hr = {}, hrv = {}, quality = {}, segments = {}, polyp = {};
    for (const [s, a] of S.ann) {
      markers[s] = a.markers.map((m) => ({ t_ns: m.t_ns, sample: m.sample, label: m.label }));
      if (a.hr) hr[s] = a.hr.bpm;
      if (a.hrv) hrv[s] = a.hrv;
      if (a.quality) quality[s] = a.quality;
      segments[s] = a.segments.length;
      if (a.polyp) polyp[s] = a.polyp;
    }
    const video = {};
    for (const pat of S.patients.values()) for (const p of pat.panels.values()) {
      if (p.kind === "video") video[p.stream] = { frames: p.frames, width: p.bitmap ? p.bitmap.width : 0,
        overlays: p.overlays, ann_stream: p.annStream(), prob_text: $(".big", p.num).textContent };
    }
    return { connected: S.connected, connects: S.connects, messages: S.messages, bytes: S.bytes,
      frames: S.frames, fps: S.fps, draw_ms: S.drawMs, dropped: S.dropped, lost: S.lost, upstream_idle_s: S.upstreamIdle,
      engine_idle_s: S.engineIdle,
      patients: [...S.patients.keys()], streams, markers, hr, hrv, quality, segments, polyp, video,
      alarms: [...S.alarms.values()].map((a) => ({ key: a.key, type: a.type, state: a.state,
        onset_ns: a.onset_ns, priority: a.priority, technical: !!a.technical, text: a.text, stream: a.stream })),
      user: S.user, audio: AU.stats(),
      banners: [...document.querySelectorAll(".alarm")].map((d) => d.textContent) };
  },
  select,
  sendOp,
  frameStats() {   // per-frame JS work and rAF intervals over the last (up to) 1200 frames, in ms
    const n = Math.min(S.frameN, S.frameWork.length);
    const pct = (arr, p) => { const a = Array.from(arr.slice(0, n)).sort((x, y) => x - y); return a.length ? a[Math.min(a.length - 1, Math.floor(p * a.length))] : null; };
    return { n, work_p50: pct(S.frameWork, 0.5), work_p95: pct(S.frameWork, 0.95), work_max: pct(S.frameWork, 1),
      gap_p50: pct(S.frameGap, 0.5), gap_p95: pct(S.frameGap, 0.95), gap_max: pct(S.frameGap, 1),
      msg_ms_per_s: S.msgMsPerS, strips_skipped: S.skipped };
  },
  resetFrameStats() { S.frameN = 0; },
  setDraw(on) { S.noDraw = !on; },   // profiling: message handling without drawing
  review(id) {
    const p = S.patients.get(id);
    if (!p) return null;
    const b = p.bounds();
    return { frozen: p.frozen, view_end_ms: p.viewEnd, calipers: [...p.cal], caliper_text: p.caliperText(), mark: p.mark,
      span_s: b ? (b.hi - b.lo + 2000) / 1000 : 0, events: p.events.map((e) => ({ text: e[0], t_ns: e[2] })) };
  },
  patient: (id) => S.patients.get(id),
  audio: AU,
  acks: () => Object.fromEntries(S.acks),
  refused: () => S.refused,
  alarmSound: () => ({ priority: S.alarmSound, played: S.alarmSoundPlayed }),
};

// The session's recording (telediag demo / --recording): links to its report and FHIR bundle.
const REC_LABELS = { "report.html": "report (HTML)", "report.pdf": "PDF", "bundle.json": "FHIR bundle" };
async function pollRecording() {
  try {
    const r = await fetch("/recording", { cache: "no-store" });
    const idx = r.ok ? await r.json() : {};
    const names = Object.keys(idx).filter((n) => REC_LABELS[n]);
    const el = $("#recording");
    el.classList.toggle("hidden", !names.length);
    if (names.length && el.dataset.names !== names.join()) {
      el.dataset.names = names.join();
      el.replaceChildren("Recording: ", ...names.flatMap((n, i) => {
        const a = document.createElement("a"); a.href = idx[n]; a.target = "_blank"; a.rel = "noopener"; a.textContent = REC_LABELS[n];
        return i ? [" \u00b7 ", a] : [a];
      }));
    }
  } catch (e) { /* the viewer restarts: try again later */ }
}
setInterval(pollRecording, 10000);
pollRecording();

connect();
requestAnimationFrame(frame);
