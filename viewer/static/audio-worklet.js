// telediag live auscultation: AudioWorklet processors (loaded by app.js with audioWorklet.addModule).
//
// "td-player": a jitter buffer for one heart-sound stream. The page posts chunks
//   {cmd: "data", t0: source ms of the first sample, rate: Hz, x: Float32Array}; the processor
//   keeps them in a ring indexed by *source time* (so a gap is a gap, not a shift), resamples
//   to the context rate by linear interpolation and plays them `delayMs` after the first chunk
//   arrived. Rules:
//   * gap in the source (a chunk starts later than the previous one ended): the hole is
//     concealed by repeating the last 20 ms with a decaying envelope (then silence), not zeros
//     that would click;
//   * underrun (the next sample has not arrived when it is due): the read position holds and
//     the output fades to zero in 5 ms; when data comes back it fades in again (counted in
//     `underruns`, one per episode);
//   * drift and jitter: the read rate is nudged within +/-0.5 % so that the low-water mark of
//     the buffer over the last 3 s stays near `marginMs`; an excess of more than 40 ms over it
//     (after a burst of late data, or a replay faster than real time) is skipped: fade out
//     5 ms, jump, fade in (counted in `skips`). The margin itself adapts (classic adaptive
//     jitter buffer): it starts at 120 ms, grows after an underrun by how late the data came
//     + 20 ms (at most 180 ms: past that, latency would break its 300 ms budget, so a longer
//     stall is concealed instead) and shrinks by 10 ms after each 20 s without one (to 60 ms);
//   * automatic gain: peak-following AGC (fast attack, 2 s release) so quiet and loud
//     stethoscopes play at a similar level (volume and mute are a GainNode after the filters).
//   Every ~50 ms it posts {cmd: "report", srcMs, ctxTime, ...}: `srcMs` is the source time of
//   the sample rendered at context time `ctxTime`; the page turns ctxTime into wall-clock time
//   with AudioContext.getOutputTimestamp() and so measures source-to-play delay.
//
// "td-tap": passes audio through unchanged; when armed, posts what it rendered (blocks of
//   2048 frames with the context time of their first frame) so a test can find a known tone
//   burst in the page's real output, after the stethoscope filters and the volume.

const FADE_MS = 5;

class Player extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const o = (options && options.processorOptions) || {};
    this.delayMs = o.delayMs || 120;      // first play: this long after the first chunk arrived
    this.minMarginMs = o.marginMs || 60;          // floor of the wanted low-water mark of the buffer
    this.marginMs = o.startMarginMs || 120;       // start here; adapts to the jitter actually seen
    this.reset();
    this.port.onmessage = (e) => {
      if (e.data.cmd === "port") { this.feed = e.data.port; this.feed.onmessage = (f) => this.onMessage(f.data); }
      else this.onMessage(e.data);
    };
  }
  reset() {
    this.rate = 0; this.buf = null; this.cap = 0;
    this.anchor = null;     // source ms of ring sample 0
    this.w = 0;             // samples written (source index of the next sample expected)
    this.r = 0;             // read position (fractional source index)
    this.g = 0;             // fade gain (0..1)
    this.playing = false; this.inUnderrun = false;
    this.underruns = 0; this.skips = 0; this.concealedMs = 0; this.gaps = 0; this.chunks = 0;
    this.ratio = 1; this.low = Infinity; this.lowWin = []; this.lowT = 0;
    this.agc = 1e-3; this.blocks = 0; this.rendered = 0;
    this.lastChunkEnd = null;
    this.pendingJump = 0; this.calm = 0;
    this.lateMs = []; this.stallStart = 0;   // per underrun: how late the data came (ms of audio time)
  }
  onMessage(m) {
    if (m.cmd === "reset") { this.reset(); return; }
    if (m.cmd === "config") { if (m.marginMs) this.minMarginMs = this.marginMs = m.marginMs; if (m.delayMs) this.delayMs = m.delayMs; return; }
    if (m.cmd !== "data") return;
    const x = m.x, rate = m.rate;
    if (!this.buf || rate !== this.rate) {
      this.reset(); this.rate = rate; this.cap = Math.ceil(rate * 8); this.buf = new Float32Array(this.cap);
    }
    let idx;
    if (this.anchor === null) {
      this.anchor = m.t0; idx = 0; this.w = 0;
      this.r = -this.delayMs * rate / 1000;      // start delayMs from now
    } else idx = Math.round((m.t0 - this.anchor) * rate / 1000);
    if (idx > this.w + 5 * rate || idx < this.w - 5 * rate) {   // restarted source or a long outage: start over
      this.reset(); this.rate = rate; this.cap = Math.ceil(rate * 8); this.buf = new Float32Array(this.cap);
      this.anchor = m.t0; idx = 0; this.r = -this.delayMs * rate / 1000;
    }
    if (idx > this.w) this.conceal(idx - this.w);  // a gap in the source
    let start = 0;
    if (idx < this.w) start = this.w - idx;        // overlap: keep what we have
    for (let i = start; i < x.length; i++) { this.buf[this.w % this.cap] = x[i]; this.w++; }
    this.chunks++;
    // how early did this chunk come? (ms before its first sample is due)
    const slack = (idx - this.r) / rate * 1000;
    if (this.playing && slack < this.low) this.low = slack;
  }
  conceal(n) {
    // repeat the last 20 ms with a decaying envelope (e^-t/15ms), then silence
    const period = Math.max(1, Math.round(0.02 * this.rate));
    const have = Math.min(period, this.w);
    const tau = 0.015 * this.rate;
    for (let i = 0; i < n; i++) {
      const src = have ? this.buf[(this.w - have + (i % have)) % this.cap] : 0;
      this.buf[this.w % this.cap] = src * Math.exp(-i / tau);
      this.w++;
    }
    this.gaps++; this.concealedMs += n / this.rate * 1000;
  }
  process(inputs, outputs) {
    const out = outputs[0][0];
    const n = out.length;
    const fadeStep = 1 / (FADE_MS * sampleRate / 1000);
    if (!this.buf) { out.fill(0); return true; }
    const step = this.rate / sampleRate;
    const srcAtStart = this.anchor + this.r / this.rate * 1000;
    let peak = 0;
    for (let i = 0; i < n; i++) {
      const r = this.r;
      let v = 0, ok = false;
      if (r < 0) { ok = true; v = 0; }                       // waiting for the first sample's time
      else if (r + 1 < this.w && r >= this.w - this.cap + 1) {
        const k = Math.floor(r), f = r - k;
        const a = this.buf[k % this.cap], b = this.buf[(k + 1) % this.cap];
        v = a + (b - a) * f; ok = true;
      }
      if (ok && this.pendingJump) {                          // fading out before a jump
        this.g = Math.max(0, this.g - fadeStep);
        if (this.g === 0) { this.r += this.pendingJump; this.pendingJump = 0; }
        else this.r += step * this.ratio;
      } else if (ok) {
        if (r >= 0) { this.playing = true; this.g = Math.min(1, this.g + fadeStep); }
        this.r += step * this.ratio;
        if (this.inUnderrun) {
          this.inUnderrun = false;
          const late = (currentFrame + i - this.stallStart) / sampleRate * 1000;
          this.lateMs.push(Math.round(late));
          if (this.lateMs.length > 50) this.lateMs.shift();
          this.marginMs = Math.min(180, this.marginMs + late + 20); this.calm = 0;   // enough for that spike, within the delay budget
        }
      } else {
        if (this.playing && !this.inUnderrun) {
          this.inUnderrun = true; this.underruns++; this.stallStart = currentFrame + i;
        }
        this.g = Math.max(0, this.g - fadeStep);
        const k = Math.max(0, Math.min(this.w - 1, Math.floor(r)));
        v = this.w ? this.buf[k % this.cap] : 0;            // hold the last sample while fading out
      }
      const av = Math.abs(v);
      if (av > peak) peak = av;
      out[i] = v * this.g;
    }
    // AGC: peak follower, fast attack, ~2 s release; normalise to 0.5 full scale
    const blockS = n / sampleRate;
    this.agc = peak > this.agc ? peak : this.agc * Math.exp(-blockS / 2) + 1e-9;
    const gain = Math.min(50, 0.5 / Math.max(this.agc, 1e-6));   // at most +34 dB: noise stays quiet
    for (let i = 0; i < n; i++) out[i] *= gain;
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    this.rendered += n;
    // drift / jitter control from the low-water mark of the last 3 s (three 1-s windows)
    const buffered = (this.w - this.r) / this.rate * 1000;
    this.lowT += blockS;
    if (this.lowT >= 1) {
      const low = this.low === Infinity ? buffered : this.low;
      this.lowWin.push(low); if (this.lowWin.length > 3) this.lowWin.shift();
      const lw = Math.min(...this.lowWin);
      const err = lw - this.marginMs;                        // > 0: more buffered than needed
      this.ratio = 1 + Math.max(-0.005, Math.min(0.005, err / 1000 * 0.05));
      if (this.playing && err > 40 && !this.pendingJump) {  // far too much: skip the excess (faded)
        this.pendingJump = (err - 10) * this.rate / 1000; this.skips++;
        this.lowWin = this.lowWin.map((x) => x - (err - 10));
      }
      this.calm += this.lowT;
      if (this.calm >= 20) { this.marginMs = Math.max(this.minMarginMs, this.marginMs - 10); this.calm = 0; }
      this.low = Infinity; this.lowT = 0;
    }
    if (++this.blocks % 16 === 0) {
      this.port.postMessage({ cmd: "report", srcMs: srcAtStart, ctxTime: currentTime, playing: this.playing,
        underruns: this.underruns, skips: this.skips, gaps: this.gaps, concealedMs: this.concealedMs,
        bufferedMs: buffered, ratio: this.ratio, marginMs: this.marginMs, lateMs: this.lateMs, chunks: this.chunks, rendered: this.rendered, agc: gain });
    }
    return true;
  }
}

class Tap extends AudioWorkletProcessor {
  constructor() {
    super();
    this.armed = false; this.block = new Float32Array(2048); this.n = 0; this.t0 = 0;
    this.port.onmessage = (e) => { if (e.data.cmd === "arm") { this.armed = !!e.data.on; this.n = 0; } };
  }
  process(inputs, outputs) {
    const inp = inputs[0], out = outputs[0];
    for (let c = 0; c < out.length; c++) {
      if (inp[c]) out[c].set(inp[c]); else out[c].fill(0);
    }
    if (this.armed) {
      const x = inp[0] || out[0];
      if (this.n === 0) this.t0 = currentTime;
      this.block.set(x, this.n); this.n += x.length;
      if (this.n >= this.block.length) {
        this.port.postMessage({ cmd: "tap", t0: this.t0, rate: sampleRate, x: this.block.slice(0, this.n) });
        this.n = 0;
      }
    }
    return true;
  }
}

registerProcessor("td-player", Player);
registerProcessor("td-tap", Tap);
