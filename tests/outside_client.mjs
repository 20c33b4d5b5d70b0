// An outside client, written from transports/PROTOCOL.md and transports/OUTPUTS.md only (no
// telediag code, no npm package): decodes wire-v1 messages and checks the documented body keys.
//
// Usage: node tests/outside_client.mjs MESSAGES.json
//   MESSAGES.json: [[topicHex, headerHex, payloadHex], ...] as received from the publish socket.
// Prints one JSON line per message: {topic, kind, stream, seq, t0_ns, enc, dtype, shape, n, sum,
// missing_samples, bytes, body, missing}, then one {summary} line: the alarms and quality events a
// viewer would still show as on after the last message, kept by OUTPUTS.md section 4.5's rules.
// Integers beyond 2^53 are written as decimal strings.
import { readFileSync } from "node:fs";

// ---------------------------------------------------------------- msgpack (spec subset of §2)
class Reader {
  constructor(buf) { this.b = buf; this.v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength); this.i = 0; }
  u8() { return this.v.getUint8(this.i++); }
  take(n) { if (this.i + n > this.b.length) throw new Error("truncated"); const s = this.b.subarray(this.i, this.i + n); this.i += n; return s; }
  big(x) { return (x <= BigInt(Number.MAX_SAFE_INTEGER) && x >= BigInt(Number.MIN_SAFE_INTEGER)) ? Number(x) : x; }
  str(n) { return new TextDecoder("utf-8", { fatal: true }).decode(this.take(n)); }
  arr(n) { const a = []; for (let k = 0; k < n; k++) a.push(this.any()); return a; }
  map(n) {
    const m = {};
    for (let k = 0; k < n; k++) { const key = this.any(); if (typeof key !== "string") throw new Error("non-str key"); m[key] = this.any(); }
    return m;
  }
  any() {
    const t = this.u8(), v = this.v;
    if (t <= 0x7f) return t;
    if (t >= 0xe0) return t - 0x100;
    if ((t & 0xf0) === 0x80) return this.map(t & 0x0f);
    if ((t & 0xf0) === 0x90) return this.arr(t & 0x0f);
    if ((t & 0xe0) === 0xa0) return this.str(t & 0x1f);
    let r;
    switch (t) {
      case 0xc0: return null;
      case 0xc2: return false;
      case 0xc3: return true;
      case 0xc4: return this.take(this.u8());
      case 0xc5: r = v.getUint16(this.i); this.i += 2; return this.take(r);
      case 0xc6: r = v.getUint32(this.i); this.i += 4; return this.take(r);
      case 0xca: r = v.getFloat32(this.i); this.i += 4; return r;
      case 0xcb: r = v.getFloat64(this.i); this.i += 8; return r;
      case 0xcc: return this.u8();
      case 0xcd: r = v.getUint16(this.i); this.i += 2; return r;
      case 0xce: r = v.getUint32(this.i); this.i += 4; return r;
      case 0xcf: r = v.getBigUint64(this.i); this.i += 8; return this.big(r);
      case 0xd0: r = v.getInt8(this.i); this.i += 1; return r;
      case 0xd1: r = v.getInt16(this.i); this.i += 2; return r;
      case 0xd2: r = v.getInt32(this.i); this.i += 4; return r;
      case 0xd3: r = v.getBigInt64(this.i); this.i += 8; return this.big(r);
      case 0xd9: return this.str(this.u8());
      case 0xda: r = v.getUint16(this.i); this.i += 2; return this.str(r);
      case 0xdb: r = v.getUint32(this.i); this.i += 4; return this.str(r);
      case 0xdc: r = v.getUint16(this.i); this.i += 2; return this.arr(r);
      case 0xdd: r = v.getUint32(this.i); this.i += 4; return this.arr(r);
      case 0xde: r = v.getUint16(this.i); this.i += 2; return this.map(r);
      case 0xdf: r = v.getUint32(this.i); this.i += 4; return this.map(r);
      default: throw new Error(`msgpack type 0x${t.toString(16)} not allowed (ext or reserved)`);
    }
  }
}
function unpack(buf) { const r = new Reader(buf); const x = r.any(); if (r.i !== buf.length) throw new Error("trailing bytes"); return x; }

// ---------------------------------------------------------------- wire v1 (PROTOCOL.md §4-6)
const DTYPES = { "<f4": [4, "getFloat32"], "<f8": [8, "getFloat64"], "<i2": [2, "getInt16"], "<i4": [4, "getInt32"],
  "<i8": [8, "getBigInt64"], "|u1": [1, "getUint8"], "<u2": [2, "getUint16"], "|i1": [1, "getInt8"] };

function decodeMessage([topicB, headerB, payload]) {
  const topic = new TextDecoder("utf-8", { fatal: true }).decode(topicB);
  const h = unpack(headerB);
  if (h.v !== 1) throw new Error("version");
  if (topic !== `${h.kind}/${h.stream}`) throw new Error("topic_mismatch");
  const out = { topic, kind: h.kind, stream: h.stream, seq: h.seq, t0_ns: h.t0_ns, enc: h.enc, meta: h.meta ?? {} };
  if (h.enc === "raw") {
    const [size, get] = DTYPES[h.dtype];
    const n = h.shape.reduce((a, b) => a * b, 1);
    if (n * size !== payload.length) throw new Error("size_mismatch");
    const dv = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
    let sum = 0, nan = 0;  // NaN marks a missing sample (OUTPUTS.md section 4)
    for (let k = 0; k < n; k++) { const x = Number(dv[get](k * size, true)); if (Number.isFinite(x)) sum += x; else nan++; }
    Object.assign(out, { dtype: h.dtype, shape: h.shape, n, sum, missing_samples: nan });
    if (h.rate_hz !== undefined) Object.assign(out, { rate_hz: h.rate_hz, channels: h.channels, units: h.units });
  } else if (h.enc === "msgpack") {
    out.body = unpack(payload);
  } else {
    out.bytes = payload.length;
    out.video = h.video;
  }
  return out;
}

// ---------------------------------------------------------------- OUTPUTS.md §4-6: documented keys
const KEYS = {
  beats: ["beats", "lead", "channel", "fs", "quality_hold", "counters"],
  hrv: ["sample", "t_ns", "window_s", "as_of_sample", "n_nn", "n_diff", "mean_nn_ms", "sdnn_ms", "rmssd_ms", "pnn50", "mean_hr_bpm"],
  alarm: ["type", "state", "category", "onset_sample", "onset_ns", "end_sample", "end_ns", "detail", "lead"],
  segments: ["segments", "rate_hz"],
  polyp: ["polyp_probability", "detected", "boxes", "mask", "mask_fraction", "width", "height", "t0_ns", "seq", "model"],
  stats: ["worker", "uptime_s", "streams", "rejects", "errors", "latency_ms"],
};
const BEAT = ["sample", "t_ns", "confirm_sample", "release_sample", "confirm_delay_s", "delay_s", "label", "probs"];
const EVENT = {
  stream_opened: ["stream", "kind", "rate_hz", "channels", "first_seq", "first_t0_ns", "stages"],
  stream_restarted: ["stream", "last_seq"], gap: ["stream", "first_missing_seq", "last_missing_seq", "missing_chunks", "resumed_t0_ns"],
  out_of_order: ["stream", "seq", "expected"], rejected: ["reason", "detail", "stream", "seq", "count"],
  quality: ["event", "state", "stream", "lead", "channel", "onset_sample", "onset_ns", "end_sample", "end_ns"],
  pcg_signal: ["stream", "state", "quality"], pcg_discontinuity: ["stream", "expected_t0_ns", "t0_ns", "gap_ns", "seq"],
  video_format: ["stream", "codec", "width", "height", "fps", "seq", "reopened"], video_stalled: ["stream", "silent_s", "last_seq"],
  stream_refused: ["stream", "detail"], stream_reset: ["stream", "reason", "error", "last_seq"],
  worker_restarted: ["worker", "exitcode", "restarts"], worker_removed: ["worker", "exitcode", "after_s"],
  stream_moved: ["stream", "from_worker", "to_worker", "last_seq"], stage_error: ["stream", "stage", "error"],
  output_dropped: ["stream", "stage", "topic", "reason", "detail"], video_gap: ["stream", "first_missing_seq", "missing_chunks", "drops"],
  video_resumed: ["stream", "seq", "silent_s"],
};

// ---------------------------------------------------------------- OUTPUTS.md 4.5: what is still on
// An alarm is on from its "on" to its "off" (same stream and type); a quality event from "start" to
// "end" (same stream, channel and event). A stream that closes ends them itself (detail.reason /
// reason "stream_closed"); after stream_reset, or stream_restarted with reason worker_restarted,
// nothing will end them: the consumer MUST take them as ended there. stream_moved needs nothing
// (the old owner closed the stream first).
const onAlarms = new Map(), onQuality = new Map();
const tally = { ended_by_close: 0, quality_ended_by_close: 0, voided: 0 };
function track(m) {
  const b = m.body;
  if (m.kind === "alarm" && b && typeof b.type === "string") {
    const key = `${m.stream}\u0000${b.type}`;
    if (b.state === "on") onAlarms.set(key, b.onset_sample);
    else if (b.state === "off") {
      onAlarms.delete(key);
      if (b.detail && b.detail.reason === "stream_closed") tally.ended_by_close++;
    }
  } else if (m.kind === "event" && b && b.type === "quality") {
    const key = `${b.stream}\u0000${b.channel}\u0000${b.event}`;
    if (b.state === "start") onQuality.set(key, b.onset_sample);
    else { onQuality.delete(key); if (b.reason === "stream_closed") tally.quality_ended_by_close++; }
  } else if (m.kind === "event" && b && (b.type === "stream_reset"
             || (b.type === "stream_restarted" && b.reason === "worker_restarted"))) {
    for (const map of [onAlarms, onQuality])
      for (const key of [...map.keys()]) if (key.startsWith(`${b.stream}\u0000`)) { map.delete(key); tally.voided++; }
  }
}
function missingKeys(kind, b) {
  const miss = (obj, keys, where) => keys.filter((k) => !(k in obj)).map((k) => `${where}.${k}`);
  if (kind === "hr") return "readings" in b ? miss(b, ["readings", "rule", "every_s"], "hr")
    : miss(b, ["t_ns", "heart_rate_bpm", "systolic_interval_s", "diastolic_interval_s", "quality", "window_s", "source"], "hr");
  if (kind === "quality") return b.type === "pcg_abnormal" ? miss(b, ["start_ns", "end_ns", "abnormal_prob", "label", "model"], "quality")
    : miss(b, ["hop_s", "channels", "blocks", "events", "suppressed", "counters"], "quality");
  if (kind === "event") return EVENT[b.type] ? miss(b, EVENT[b.type], `event:${b.type}`) : (typeof b.type === "string" ? [] : ["event.type"]);
  const m = KEYS[kind] ? miss(b, KEYS[kind], kind) : [];
  if (kind === "beats") for (const bt of b.beats) m.push(...miss(bt, BEAT, "beat"));
  return m;
}

const json = (x) => JSON.stringify(x, (k, v) => (typeof v === "bigint" ? v.toString()
  : v instanceof Uint8Array ? `<${v.length} bytes>` : v));
const messages = JSON.parse(readFileSync(process.argv[2], "utf8"));
for (const frames of messages) {
  const bufs = frames.map((h) => Uint8Array.from(Buffer.from(h, "hex")));
  try {
    const m = decodeMessage(bufs);
    if (m.body !== undefined) m.missing = missingKeys(m.kind, m.body);
    track(m);
    process.stdout.write(json(m) + "\n");
  } catch (e) {
    process.stdout.write(json({ error: String(e) }) + "\n");
  }
}
const names = (map) => [...map.keys()].map((k) => k.split("\u0000").join(" "));
process.stdout.write(json({ summary: { open_alarms: names(onAlarms), open_quality: names(onQuality), ...tally } }) + "\n");
