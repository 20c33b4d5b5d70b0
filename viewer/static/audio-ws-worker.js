// telediag live auscultation: a dedicated WebSocket in a Worker that feeds the AudioWorklet
// directly (through a MessagePort), so page rendering, screenshots or a busy main thread never
// delay the heart sounds. Opened by app.js; messages from the page:
//   {cmd: "open", url, port}      the /ws?audio=1 address and the worklet's MessagePort
//   {cmd: "listen", stream, on}   start/stop the full-rate audio of one stream (sent to the server)
// To the page: {cmd: "stats", ages: [...]} once a second (age in ms of each chunk's last sample
// on arrival) and {cmd: "refused", m} when the server refuses an operation.

let ws = null, port = null, url = null, want = null, attempt = 0, ages = [];

function send(m) { if (ws && ws.readyState === 1) ws.send(JSON.stringify(m)); }

function open() {
  ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => { attempt = 0; if (want) send({ op: "listen", stream: want, on: true }); };
  ws.onmessage = (ev) => {
    if (typeof ev.data === "string") {
      try { const m = JSON.parse(ev.data); if (m.kind === "_refused") postMessage({ cmd: "refused", m }); } catch (e) { /* ignore */ }
      return;
    }
    const buf = ev.data, u8 = new Uint8Array(buf, 0, 8);
    if (u8[0] !== 84 || u8[1] !== 68 || u8[2] !== 66 || u8[3] !== 49) return;   // "TDB1"
    const hlen = new DataView(buf).getUint32(4, true);
    const h = JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 8, hlen)));
    if (h.kind !== "audio" || h.base !== want || !port) return;
    const x = new Float32Array(buf.slice(8 + hlen, 8 + hlen + 4 * h.n));
    ages.push(performance.timeOrigin + performance.now() - (h.t0_ns / 1e6 + h.n * 1000 / h.rate_hz));
    port.postMessage({ cmd: "data", t0: h.t0_ns / 1e6, rate: h.rate_hz, seq: h.seq, x }, [x.buffer]);
  };
  ws.onclose = () => {
    ws = null;
    const delay = Math.min(5000, 250 * 2 ** attempt++);
    setTimeout(open, delay);
  };
}

onmessage = (e) => {
  const m = e.data;
  if (m.cmd === "open") { url = m.url; port = m.port; open(); }
  else if (m.cmd === "listen") {
    if (m.on) { want = m.stream; send({ op: "listen", stream: m.stream, on: true }); }
    else { send({ op: "listen", stream: m.stream, on: false }); if (want === m.stream) want = null; }
  }
};

setInterval(() => { if (ages.length) { postMessage({ cmd: "stats", ages }); ages = []; } }, 1000);
