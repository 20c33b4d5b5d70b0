"""Per-subscriber drop counting: a slow or vanished reader never stalls the engine or the viewer.

* :class:`SeqTracker` against a NumPy oracle (random losses from a seq stream);
* the engine streams a real MIT-BIH record at max speed to two subscribers, one of which never
  reads (tiny RCVHWM and socket buffer): the other receives everything, and the slow one's drop
  counter equals the messages it is missing (checked against what the healthy one received);
* the engine-side socket monitor counts connected subscribers and refused keys;
* the viewer bridge keeps serving one browser while another stops reading, and counts the
  stalled browser's drops exactly (per topic, checked against the seq gaps that browser sees).

Loopback only; every wait is bounded.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import socket
import struct
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from telediag.client import SeqTracker, Subscriber, TailSummary
from telediag.engine.config import load_config
from telediag.engine.metrics import SocketMonitor, render
from telediag.engine.runtime import Engine
from telediag.sources.readers import Recording, read_wfdb
from telediag.sources.replay import replay
from telediag.transports import security
from telediag.transports.wire import Chunk, encode
from telediag.viewer.bridge import unpack_binary
from telediag.viewer.server import ViewerThread

# --------------------------------------------------------------------------- SeqTracker


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_seq_tracker_matches_numpy_oracle(seed: int) -> None:
    rng = np.random.default_rng(seed)
    topics = [f"t{i}" for i in range(4)]
    tracker = SeqTracker()
    kept: dict[str, np.ndarray] = {}
    # interleave topics; each loses a random subset (never its first or last message)
    events = []
    for t in topics:
        n = int(rng.integers(50, 400))
        keep = rng.random(n) > rng.uniform(0.0, 0.6)
        keep[0] = keep[-1] = True
        kept[t] = np.flatnonzero(keep)
        events += [(t, int(s)) for s in kept[t]]
    order = rng.permutation(len(events))
    by_topic: dict[str, list[int]] = {t: [] for t in topics}
    for i in order:  # a per-topic order must be kept: sort back within each topic
        by_topic[events[i][0]].append(events[i][1])
    stream = []
    cursors = dict.fromkeys(topics, 0)
    for i in order:
        t = events[i][0]
        stream.append((t, sorted(by_topic[t])[cursors[t]]))
        cursors[t] += 1
    for t, s in stream:
        tracker.observe(t, s)
    for t in topics:
        k = kept[t]
        n_missing = int(k[-1] + 1 - k.size)
        n_gaps = int(np.count_nonzero(np.diff(k) > 1))
        c = tracker.topics[t]
        assert (c.drops, c.gaps, c.received, c.last_seq) == (n_missing, n_gaps, k.size, int(k[-1]))
    assert tracker.drops == sum(int(kept[t][-1] + 1 - kept[t].size) for t in topics)


def test_seq_tracker_restart_is_not_a_drop() -> None:
    t = SeqTracker()
    for s in (0, 1, 2, 3, 0, 1, 3):
        t.observe("x", s)
    c = t.topics["x"]
    assert (c.restarts, c.drops, c.gaps, c.received) == (1, 1, 1, 7)


def test_tail_summary_reports_drops() -> None:
    s = TailSummary()
    for seq in (0, 1, 2, 10, 11, 20):
        s.add(Chunk.record("hr", "bed-9/ecg", seq, seq * 10**9, {"bpm": 60.0}))
    lines = s.lines(1.0)
    assert "DROPPED 15 in 2 gap(s)" in lines[0]
    assert lines[-1].startswith("subscriber: 6 received, 15 dropped in 2 gap(s)")


def test_wait_connected_keeps_the_messages_it_reads() -> None:
    """Messages of the subscriber's own topics that arrive while it waits are not lost."""
    ctx = zmq.Context()
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind("tcp://127.0.0.1:*")
    sub = Subscriber(pub.getsockopt_string(zmq.LAST_ENDPOINT), ["hr/"], ctx=ctx)
    try:
        assert pub.poll(5000)
        pub.recv()  # the subscription arrived
        for seq in range(20):
            pub.send_multipart(encode(Chunk.record("hr", "bed-3/ecg", seq, seq, {"bpm": 60.0})))
        stats_seq = 0
        while True:  # the probe's subscription may arrive later than the data: keep publishing stats
            pub.send_multipart(encode(Chunk.record("stats", "engine/w0", stats_seq, 0, {})))
            stats_seq += 1
            if sub.wait_connected(0.05):
                break
            assert stats_seq < 200, "no probe subscription"
        got = [c.seq for c in sub.iter(timeout_s=0.3) if c.kind == "hr"]
        assert got == list(range(20)) and sub.drops == 0
    finally:
        sub.close()
        pub.close(0)
        ctx.term()


# --------------------------------------------------------------------------- engine


def _engine(publish_hwm: int) -> Engine:
    cfg = load_config()
    cfg = dataclasses.replace(cfg, engine=dataclasses.replace(
        cfg.engine, ingest="tcp://127.0.0.1:*", publish="tcp://127.0.0.1:*", stats_interval_s=0.2,
        publish_hwm=publish_hwm))
    eng = Engine(cfg, drain_idle_s=0.1)
    eng.start()
    return eng


@dataclasses.dataclass
class _Seen:
    """Seqs per topic and samples per topic, as one subscriber received them."""

    seqs: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    samples: dict[str, int] = dataclasses.field(default_factory=dict)


def _drain(sub: Subscriber, seen: _Seen, quiet_s: float, max_s: float,
           until: threading.Event | None = None) -> None:
    """Read into ``seen`` until ``until`` is set and ``quiet_s`` passed without a non-stats message."""
    end = time.monotonic() + max_s
    last = time.monotonic()
    while time.monotonic() < end:
        c = sub.recv(timeout_s=0.05)
        if c is not None:
            seen.seqs.setdefault(c.topic, []).append(c.seq)
            seen.samples[c.topic] = seen.samples.get(c.topic, 0) + c.n_samples
            if c.kind != "stats":
                last = time.monotonic()
        elif (until is None or until.is_set()) and time.monotonic() - last > quiet_s:
            return


@pytest.mark.slow
@pytest.mark.data
def test_slow_subscriber_loses_alone_and_counts_exactly(mitdb: Path) -> None:
    rec = read_wfdb(mitdb / "101")
    tail = Recording(rec.signal[: int(rec.fs * 5)], rec.fs, rec.channels, rec.units, rec.name)
    eng = _engine(publish_hwm=500)
    healthy = Subscriber(eng.publish_endpoint, [""])
    slow = Subscriber(eng.publish_endpoint, [""], rcvhwm=1, sockopts={zmq.RCVBUF: 4096})
    sent: list[Any] = []
    done = threading.Event()

    def source(r: Recording) -> None:
        try:
            sent.append(replay(r, kind="ecg", stream="slowtest/ecg", connect=eng.ingest_endpoint,
                               speed=float("inf"), linger_s=10))
        finally:
            done.set()

    seen_h, seen_s = _Seen(), _Seen()
    try:
        assert healthy.wait_connected(10) and slow.wait_connected(10)
        # 1. the whole record at max speed; the slow subscriber does not read at all
        th = threading.Thread(target=source, args=(rec,), daemon=True)
        th.start()
        _drain(healthy, seen_h, quiet_s=1.0, max_s=120, until=done)
        th.join(10)
        # 2. the slow one wakes up and reads what reached it
        _drain(slow, seen_s, quiet_s=1.0, max_s=60)
        # 3. a little more on the same topics, so that losses at the end of phase 1 show as gaps
        done.clear()
        rest = threading.Thread(target=_drain, args=(slow, seen_s, 1.0, 30, done), daemon=True)
        rest.start()
        th = threading.Thread(target=source, args=(tail,), daemon=True)
        th.start()
        _drain(healthy, seen_h, quiet_s=1.0, max_s=30, until=done)
        th.join(10)
        rest.join(35)
    finally:
        healthy.close()
        slow.close()
        eng.stop()
        eng.join(10)

    n_chunks = sum(r.chunks for r in sent)
    n_samples = rec.signal.shape[0] + tail.signal.shape[0]
    assert len(sent) == 2 and sum(r.samples for r in sent) == n_samples
    # the engine never waited for the slow subscriber, and the healthy one lost nothing:
    # every chunk was filtered and published, every topic's seq is contiguous
    filtered = "ecg/slowtest/ecg/filtered"
    assert seen_h.seqs[filtered] == list(range(n_chunks))
    assert seen_h.samples[filtered] == n_samples
    assert healthy.drops == 0 and healthy.gaps == 0
    assert healthy.stats()["topics"][filtered]["received"] == n_chunks
    # the slow subscriber lost a lot ...
    st = slow.stats()
    assert st["drops"] > 1000 and st["gaps"] >= 1
    # ... and its counter is exactly what it misses of what was published (what the healthy
    # subscriber received), topic by topic, between its first and last message of the topic
    missing_total = 0
    for topic, seqs in seen_s.seqs.items():
        lo, hi = seqs[0], seqs[-1]
        published = {s for s in seen_h.seqs.get(topic, []) if lo <= s <= hi}
        missing = len(published - set(seqs))
        assert st["topics"][topic]["drops"] == missing, topic
        missing_total += missing
    assert st["drops"] == missing_total
    # the signal topic got its tail (step 3), so all its losses after the first message show
    assert seen_s.seqs[filtered][-1] == n_chunks - 1
    assert st["topics"][filtered]["drops"] == n_chunks - len(seen_s.seqs[filtered]) - seen_s.seqs[filtered][0]


# --------------------------------------------------------------------------- socket monitor


def test_socket_monitor_counts_subscribers_and_refused_keys(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    for name in ("engine", "viewer", "intruder"):
        security.generate(name, keys)
    security.allow(keys / "viewer.key", keys / "allowed")
    ctx = zmq.Context()
    curve = security.CurveServer(ctx, keys / "engine.key_secret", keys / "allowed")
    xpub = ctx.socket(zmq.XPUB)
    xpub.setsockopt(zmq.LINGER, 0)
    curve.secure(xpub)
    xpub.bind("tcp://127.0.0.1:*")
    addr = xpub.getsockopt_string(zmq.LAST_ENDPOINT)
    mon = SocketMonitor(xpub, "publish")
    subs = []
    try:
        for _ in range(2):
            s = ctx.socket(zmq.SUB)
            s.setsockopt(zmq.LINGER, 0)
            security.secure_client(s, keys / "viewer.key_secret", keys / "engine.key")
            s.connect(addr)
            subs.append(s)
        assert mon.wait_for(lambda c: c["connections"] == 2 and c["handshakes"] == 2, 10), mon.snapshot()
        bad = ctx.socket(zmq.SUB)
        bad.setsockopt(zmq.LINGER, 0)
        security.secure_client(bad, keys / "intruder.key_secret", keys / "engine.key")
        bad.connect(addr)
        assert mon.wait_for(lambda c: c["auth_refused"] >= 1, 10), mon.snapshot()
        bad.close(0)
        subs.pop().close(0)
        assert mon.wait_for(lambda c: c["connections"] == 1, 10), mon.snapshot()
        snap = mon.snapshot()
        assert snap["handshakes"] == 2 and curve.allow_list.refused >= 1
        text = render([], {"publish": snap})
        assert 'telediag_socket_connections{socket="publish"} 1' in text
        assert f'telediag_socket_auth_refused_total{{socket="publish"}} {snap["auth_refused"]}' in text
    finally:
        for s in subs:
            s.close(0)
        xpub.close(0)
        mon.stop()
        curve.stop()
        ctx.term()


# --------------------------------------------------------------------------- viewer bridge


class _RawWs:
    """A minimal WebSocket client on a plain socket, so a test controls when it reads."""

    def __init__(self, port: int, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
                          .encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.sock.recv(4096)
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head[:80]

    def _need(self, n: int) -> bytes:
        while len(self.buf) < n:
            data = self.sock.recv(1 << 16)
            if not data:
                raise ConnectionError("closed")
            self.buf += data
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv(self) -> tuple[int, bytes]:
        """Next data frame ``(opcode, payload)``; answers pings."""
        while True:
            b0, b1 = self._need(2)
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack(">H", self._need(2))
            elif n == 127:
                (n,) = struct.unpack(">Q", self._need(8))
            payload = self._need(n)
            op = b0 & 0x0F
            if op == 9:  # ping -> masked pong (mask key 0)
                self.sock.sendall(bytes([0x8A, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)
                continue
            return op, payload

    def close(self) -> None:
        self.sock.close()


def _topic_seq(op: int, payload: bytes) -> tuple[str, int | None]:
    if op == 2:
        head, _ = unpack_binary(payload)
        return head["topic"], head["seq"]
    doc = json.loads(payload)
    return str(doc.get("topic", doc.get("kind"))), doc.get("seq")


def test_stalled_browser_is_counted_and_never_slows_the_others() -> None:
    ctx = zmq.Context()
    pub = ctx.socket(zmq.XPUB)  # XPUB: we see the bridge's subscription arrive (no slow joiner)
    pub.setsockopt(zmq.LINGER, 0)
    pub.setsockopt(zmq.SNDHWM, 0)
    pub.bind("tcp://127.0.0.1:*")
    viewer = ViewerThread(pub.getsockopt_string(zmq.LAST_ENDPOINT), port=0, queue_max=64, history_s=0.1)
    viewer.start()
    port = viewer.server.port
    topic, n_msgs, lead = "ecg/wsdrop/ecg", 400, 16
    healthy_seqs: list[int] = []
    got = threading.Condition()
    stalled = healthy = None
    try:
        assert pub.poll(10_000), "the bridge never subscribed"
        pub.recv()
        stalled = _RawWs(port, rcvbuf=4096)
        while json.loads(stalled.recv()[1]).get("state") != "end":  # hello + empty snapshot
            pass
        healthy = _RawWs(port)
        hws = healthy

        def read_healthy() -> None:
            while True:
                try:
                    op, payload = hws.recv()
                except (ConnectionError, OSError):
                    return
                t, seq = _topic_seq(op, payload)
                if t == topic and seq is not None:
                    with got:
                        healthy_seqs.append(seq)
                        got.notify_all()
                        if seq == n_msgs - 1:
                            return

        reader = threading.Thread(target=read_healthy, daemon=True)
        reader.start()
        deadline = time.monotonic() + 10
        while viewer.status()["clients"] < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        rng = np.random.default_rng(3)
        data = rng.standard_normal((3600, 4)).astype(np.float32)  # 57.6 kB per message
        for i in range(n_msgs):
            with got:  # keep at most `lead` messages ahead of the healthy browser
                need = i - lead
                assert got.wait_for(lambda: len(healthy_seqs) >= need, 20), "healthy browser stalled"  # noqa: B023
            c = Chunk.signal("ecg", "wsdrop/ecg", i, i * 10 * 10**9, data, 360.0, ("a", "b", "c", "d"),
                             ("mV",) * 4)
            pub.send_multipart(encode(c), copy=False)
        reader.join(20)
        st = viewer.status()
        per = {c["peer"].rsplit(":", 1)[1]: c for c in st["per_client"]}
        s_stats = per[str(stalled.sock.getsockname()[1])]
        h_stats = per[str(healthy.sock.getsockname()[1])]
        # the healthy browser got every message, in order, and lost none
        assert healthy_seqs == list(range(n_msgs))
        assert h_stats["dropped"] == 0
        # the stalled one lost messages in its own queue, counted per topic
        assert s_stats["dropped_by_topic"].get(topic, 0) > 0
        assert st["dropped_total"] >= s_stats["dropped"] > 0
        metrics = urllib.request.urlopen(f"{viewer.url}metrics", timeout=5).read().decode()
        assert f'telediag_viewer_client_dropped_total{{client="{s_stats["id"]}"' in metrics
        stats_json = json.loads(urllib.request.urlopen(f"{viewer.url}stats", timeout=5).read())
        assert {c["id"] for c in stats_json["per_client"]} == {s_stats["id"], h_stats["id"]}
        # the stalled browser wakes up: what it misses of the topic is exactly its drop count
        seen: list[int] = []
        while not seen or seen[-1] != n_msgs - 1:
            t, s_seq = _topic_seq(*stalled.recv())
            if t == topic and s_seq is not None:
                seen.append(s_seq)
        assert seen == sorted(seen)
        final = {c["id"]: c for c in viewer.status()["per_client"]}[s_stats["id"]]
        assert final["dropped_by_topic"][topic] == n_msgs - len(seen) == len(set(range(n_msgs)) - set(seen))
    finally:
        for w in (stalled, healthy):
            if w is not None:
                w.close()
        viewer.stop()
        pub.close(0)
        ctx.term()
