// telediag live viewer: WebSocket client, stream state and canvas rendering.
// Plain ES module, nothing to build. Messages: see telediag/viewer/bridge.py.
// Everything is drawn in one requestAnimationFrame loop from typed-array ring buffers;
// the DOM is touched only when a number, badge, banner or event line changes.

const BEAT_COLORS = {
  N: "#39e27d", L: "#39e27d", R: "#39e27d", e: "#39e27d", j: "#39e27d",
  S: "#ffa23a", A: "#ffa23a", a: "#ffa23a", J: "#ffa23a",
  V: "#ff4040", E: "#ff4040",
  F: "#c27cff",
  Q: "#9e9e9e", "/": "#9e9e9e", f: "#9e9e9e", "?": "#9e9e9e",
};
const UNKNOWN_BEAT = "#ffffff";
const SEG_COLORS = { S1: "rgba(255,82,82,0.30)", S2: "rgba(66,165,245,0.32)",
  systole: "rgba(255,255,255,0.035)", diastole: "rgba(0,0,0,0)" };
const WINDOW_S = 8;          // seconds shown by a strip (at least)
const RING_S = 40;           // seconds kept per signal
const GAP_FILL_MAX_S = 10;   // a gap up to this long is drawn as a hole; longer restarts the trace
const MAX_MARKERS = 600;

const $ = (sel, el = document) => el.querySelector(sel);
const now = () => performance.now();
const fmtTime = (ns) => new Date(ns / 1e6).toLocaleTimeString([], { hour12: false });
const beatColor = (label) => (label == null ? UNKNOWN_BEAT : BEAT_COLORS[label] || UNKNOWN_BEAT);
const patientOf = (stream) => stream.split("/")[0];
const baseOf = (stream) => stream.replace(/\/filtered$/, "");
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
  ctx.strokeStyle = color; ctx.lineWidth = width; ctx.lineJoin = "round";
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
    $("#cards").appendChild(this.el);
    this.li = document.createElement("li");
    this.li.className = "pitem";
    this.li.dataset.id = id;
    this.li.innerHTML = `<span class="pname"></span><span class="php">--</span>`;
    $(".pname", this.li).textContent = id;
    this.li.addEventListener("click", () => select(id));
    $("#plist").appendChild(this.li);
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
  addEvent(text, cls) {
    this.events.unshift([text, cls]);
    if (this.events.length > 4) this.events.length = 4;
    this.eventsDirty = true;
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

class SignalPanel {
  constructor(pat, base, kind) {
    this.kind = kind; this.key = base; this.base = base; this.patient = pat;
    this.el = makeRow(kind, base);
    this.canvas = $("canvas", this.el);
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
    if (key !== this.gridKey) { this.grid = gridCanvas(w, h, pxmm); this.gridKey = key; }
    ctx.drawImage(this.grid, 0, 0, w, h);
    if (!tr || tr.head === null) {
      ctx.fillStyle = "#4a5a66"; ctx.font = "14px sans-serif"; ctx.fillText("waiting for signal…", 12, h / 2);
      return;
    }
    const pxPerMs = (pxmm * 25) / 1000;
    const t1 = tr.head, t0 = t1 - w / pxPerMs;
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
        const x = (t - t0) * pxPerMs, col = beatColor(m.label);
        ctx.strokeStyle = col; ctx.globalAlpha = 0.35; ctx.lineWidth = 1;
        ctx.beginPath(); ctx.moveTo(x, top); ctx.lineTo(x, h); ctx.stroke();
        ctx.globalAlpha = 1; ctx.fillStyle = col;
        ctx.beginPath(); ctx.moveTo(x - 5, 3); ctx.lineTo(x + 5, 3); ctx.lineTo(x, 10); ctx.fill();
        ctx.fillText(m.label == null ? "•" : m.label, x, top + 10);
      }
      ctx.textAlign = "left";
    }
    ctx.fillStyle = "#4f6b5c"; ctx.font = "11px sans-serif";
    ctx.fillText("25 mm/s  10 mm/mV", w - 118, h - 6);
    noSignal(ctx, tr, w, h);
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
    ctx.fillStyle = "#000"; ctx.fillRect(0, 0, w, h);
    const tr = this.track;
    if (!tr || tr.head === null) {
      ctx.fillStyle = "#4a5a66"; ctx.font = "14px sans-serif"; ctx.fillText("waiting for heart sounds…", 12, h / 2);
      return;
    }
    const span = Math.max(WINDOW_S, 10) * 1000, t1 = tr.head, t0 = t1 - span, pxPerMs = w / span;
    const a = S.ann.get(this.base);
    if (a) {
      ctx.font = "bold 11px sans-serif";
      for (const s of a.segments) {
        const sa = s.start_ns / 1e6, sb = s.end_ns / 1e6;
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
    noSignal(ctx, tr, w, h);
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
    this.maskCanvas = null; this.maskKey = null; this.lastBadges = "";
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
    const a = S.ann.get(this.stream);
    const p = a && a.polyp;
    const big = $(".big", this.num);
    setText(big, p && p.prob != null ? `${Math.round(p.prob * 100)}%` : "--");
    big.style.color = p && p.prob != null && p.prob >= 0.5 ? "#ff5252" : "";
    setText($(".frames", this.num), String(this.frames));
    if (this.header) setText($(".size", this.num), `${this.header.src_width}×${this.header.src_height}`);
  }
  badges() {
    const st = S.stats.get(this.stream);
    const list = [];
    if (st && st.latency_ms) list.push([`lat ${st.latency_ms.p50.toFixed(1)}/${st.latency_ms.p99.toFixed(1)} ms`, "", "engine latency p50/p99"]);
    if (st) list.push([`drops ${st.drops || 0}`, st.drops ? "warn" : "", "frames dropped at the engine (latest-frame-wins)"]);
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
    const a = S.ann.get(this.stream), p = a && a.polyp;
    if (!p || Math.abs(a.polypT - this.frameT) > 1e9) return;  // overlay only near its frame time
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
  else onSignal(h, buf, off);
}

// Returns null when the body is not an alarm, else whether the alarm state changed.
function onAlarm(v, stream) {
  if (!v || !v.key) return null;
  const was = S.alarms.has(v.key);
  if (v.state === "on") S.alarms.set(v.key, { ...v, stream });
  else S.alarms.delete(v.key);
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
  if (k === "_hello") return;
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
    while (a.segments.length > 400) a.segKeys.delete(`${a.segments[0].start_ns}:${a.segments.shift().state}`);
  } else if (k === "polyp" && v) { a.polyp = v; a.polypT = m.t0_ns; }
}

function logEvent(stream, m, v) {
  if (isEngine(stream)) return;
  const pat = patient(patientOf(stream));
  const b = m.body || {};
  let text, cls = "";
  if (v) { text = `${v.text} ${v.state === "on" ? "ON" : "off"}`; cls = v.priority === "technical" ? "ev-warn" : "ev-alarm"; }
  else {
    const extra = ["reason", "event", "state", "missing_chunks"].filter((x) => b[x] != null).map((x) => `${x}=${b[x]}`).join(" ");
    text = `${b.type || "event"} ${extra}`;
    if (b.type === "gap" || b.type === "rejected") cls = "ev-warn";
  }
  pat.addEvent(`${fmtTime(m.t0_ns)}  ${stream}  ${text}`, cls);
}

function renderAlarms() {
  alarmsDirty = false;
  const byPatient = new Map();
  for (const a of S.alarms.values()) {
    const id = patientOf(a.stream);
    if (!byPatient.has(id)) byPatient.set(id, []);
    byPatient.get(id).push(a);
  }
  for (const [id, pat] of S.patients) {
    const list = (byPatient.get(id) || []).sort((p, q) => (p.priority === "technical") - (q.priority === "technical") || p.onset_ns - q.onset_ns);
    pat.alarmsEl.replaceChildren(...list.map((a) => {
      const d = document.createElement("div");
      d.className = `alarm ${a.priority === "technical" ? "technical" : a.priority === "high" ? "high" : a.priority}`;
      d.dataset.key = a.key; d.dataset.type = a.type;
      d.textContent = a.text;
      const s = document.createElement("span"); s.className = "since";
      s.textContent = `since ${fmtTime(a.onset_ns)}`;
      d.appendChild(s);
      return d;
    }));
    const high = list.some((a) => a.priority !== "technical");
    pat.el.classList.toggle("alarming", high);
    pat.li.classList.toggle("alarming", high);
  }
  for (const a of S.alarms.values()) if (!S.patients.has(patientOf(a.stream))) { patient(patientOf(a.stream)); alarmsDirty = true; }
}

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
    S.messages++; S.rateCount++; S.lastMsgWall = now();
    try {
      if (typeof ev.data === "string") { S.bytes += ev.data.length; onJson(JSON.parse(ev.data)); }
      else { S.bytes += ev.data.byteLength; onBinary(ev.data); }
    } catch (e) { console.error("telediag viewer: bad message", e); }
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
}, 1000);

// ------------------------------------------------------------------ render loop
let lastFrame = now(), lastSlow = 0;
function frame() {
  const t = now(), dt = Math.min(250, t - lastFrame);
  lastFrame = t; S.frames++; S.fpsCount++;
  for (const tr of S.tracks.values()) tr.advance(dt);
  for (const pat of S.patients.values()) {
    if (pat.el.classList.contains("hidden")) continue;
    for (const p of pat.panels.values()) p.draw();
  }
  if (alarmsDirty) renderAlarms();
  if (t - lastSlow > 250) {   // numbers, badges and event lines at 4 Hz
    lastSlow = t;
    for (const pat of S.patients.values()) {
      for (const p of pat.panels.values()) { p.numerics(); p.badges(); }
      if (pat.eventsDirty) {
        pat.eventsDirty = false;
        pat.eventsEl.replaceChildren(...pat.events.map(([text, cls]) => {
          const d = document.createElement("div"); d.textContent = text; d.className = cls; return d;
        }));
      }
    }
    setText($("#clock"), new Date().toLocaleTimeString([], { hour12: false }));
    setText($("#b-rate"), `${S.rate} msg/s`);
    setText($("#b-dropped"), `dropped ${S.dropped}`);
    $("#b-dropped").className = `badge ${S.dropped ? "warn" : ""}`;
    setText($("#b-lost"), `lost ${S.lost}`);
    $("#b-lost").className = `badge ${S.lost ? "warn" : ""}`;
    $("#upstream").classList.toggle("hidden", !(S.connected && S.engineIdle != null && S.engineIdle > 3));
  }
  S.drawMs = 0.95 * S.drawMs + 0.05 * (now() - t);   // time spent drawing one frame (EMA)
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
      if (p.kind === "video") video[p.stream] = { frames: p.frames, width: p.bitmap ? p.bitmap.width : 0 };
    }
    return { connected: S.connected, connects: S.connects, messages: S.messages, bytes: S.bytes,
      frames: S.frames, fps: S.fps, draw_ms: S.drawMs, dropped: S.dropped, lost: S.lost, upstream_idle_s: S.upstreamIdle,
      engine_idle_s: S.engineIdle,
      patients: [...S.patients.keys()], streams, markers, hr, hrv, quality, segments, polyp, video,
      alarms: [...S.alarms.values()].map((a) => ({ key: a.key, type: a.type, state: a.state,
        onset_ns: a.onset_ns, priority: a.priority, text: a.text, stream: a.stream })),
      banners: [...document.querySelectorAll(".alarm")].map((d) => d.textContent) };
  },
  select,
};

connect();
requestAnimationFrame(frame);
