"""Audio capture agent: a sound-card input (digital stethoscope) streamed to the engine.

Real-time contract (after python-sounddevice): PortAudio calls :meth:`AudioCapture._callback`
on its own thread for every buffer of ``frames_per_buffer`` frames. The callback only copies
the buffer into a preallocated ring (a bounded queue of fixed-size slots) and updates a few
counters; it never allocates arrays, blocks, logs or touches a socket. A sender thread turns
queued buffers into wire chunks (kind ``pcg``, one chunk per buffer) and PUSHes them; when the
engine applies back-pressure the sender blocks, the ring fills, and the callback *drops and
counts* further buffers instead of blocking the audio thread.

Everything that can go wrong at the edge is reported as data, never as a silent loss:

* ``meta.overflows`` - buffers PortAudio flagged ``paInputOverflow`` (samples lost in the
  driver before they reached us);
* ``meta.dropped_buffers`` / ``meta.dropped_frames`` - buffers the full ring refused; each one
  is also a ``seq`` gap (one chunk per buffer), so the engine publishes a ``gap`` event with the
  exact number of missing chunks, and the timestamps after it stay right;
* ``meta.device_lost`` / ``meta.reopens`` - the device stopped (unplugged, driver error, no
  callback for ``stall_s``); the agent closes it, re-enumerates devices and reopens it by name
  with exponential back-off. Buffers already queued are still sent; the time the device was
  away is a ``seq`` gap (its length in buffers) and a jump of ``t0_ns``;
* ``meta.clipped`` - samples at the converter's full scale.

All counters are cumulative per agent run and travel in every chunk's ``meta``; the engine's
PCG stage republishes them as events and in its ``hr`` records.

Timestamps: the first callback of each device opening anchors the stream on the wall clock
(``time.time_ns()`` at the callback minus one buffer); sample ``k`` of that opening is then at
``anchor + k / rate`` (the device's sample clock; its drift against the wall clock is not
corrected).

PyAudio is an optional dependency (the ``audio`` extra); it is imported lazily and a missing
install raises :class:`telediag.errors.ConfigError` with the exact install line.
"""

from __future__ import annotations

import secrets
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import zmq

from telediag.errors import ConfigError, DataError
from telediag.sources.replay import _send
from telediag.transports.wire import Chunk

__all__ = [
    "INSTALL_HINT",
    "SAMPLE_FORMATS",
    "AudioCapture",
    "CaptureCounters",
    "CaptureResult",
    "DeviceError",
    "InputDevice",
    "find_device",
    "import_pyaudio",
    "list_input_devices",
    "quiet_alsa",
]

INSTALL_HINT = (
    "audio capture needs PyAudio and the PortAudio library: "
    "apt-get install -y portaudio19-dev && pip install 'telediag[audio]' "
    "(or: pip install pyaudio)"
)

#: sample format name -> (PyAudio constant name, wire dtype, units, full-scale magnitude)
SAMPLE_FORMATS: dict[str, tuple[str, str, str, float]] = {
    "int16": ("paInt16", "<i2", "adu", 32767.0),
    "float32": ("paFloat32", "<f4", "FS", 1.0),
}

_PA_CONTINUE = 0  # paContinue
_PA_COMPLETE = 1  # paComplete
_PA_INPUT_OVERFLOW = 2  # paInputOverflow status flag


class DeviceError(DataError):
    """An audio device is missing, busy or stopped working."""


def import_pyaudio() -> Any:
    """Import PyAudio, or raise :class:`ConfigError` saying how to install it.

    Examples
    --------
    >>> pa = import_pyaudio()  # doctest: +SKIP
    """
    try:
        import pyaudio
    except ImportError as e:  # missing module or missing libportaudio.so
        raise ConfigError(f"{INSTALL_HINT} ({e})") from e
    return pyaudio


_ALSA_HANDLER: list[Any] = []


def quiet_alsa() -> bool:
    """Silence alsa-lib's diagnostics on stderr (PortAudio's probing of absent cards).

    Installs a no-op ``snd_lib_error_set_handler`` for the whole process (command-line
    use); returns False when alsa-lib is not there. JACK's own messages are not affected.
    """
    if _ALSA_HANDLER:
        return True
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("asound")
    if not name:
        return False
    try:
        lib = ctypes.CDLL(name)
        proto = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int,
                                 ctypes.c_char_p)
        handler = proto(lambda *a: None)
        lib.snd_lib_error_set_handler(handler)
    except (OSError, AttributeError):
        return False
    _ALSA_HANDLER.append(handler)  # keep the callback alive
    return True


# --------------------------------------------------------------------------- devices


@dataclass(frozen=True, slots=True)
class InputDevice:
    """An audio input device as PortAudio lists it."""

    index: int
    name: str
    max_input_channels: int
    default_rate_hz: float
    host_api: str


def list_input_devices(pyaudio_module: Any = None) -> list[InputDevice]:
    """The devices with at least one input channel.

    PortAudio enumerates devices when it initialises, so every call starts a fresh
    PortAudio session (a device plugged in since the last call is seen).

    Examples
    --------
    >>> [d.name for d in list_input_devices()]  # doctest: +SKIP
    ['stetho', 'default']
    """
    mod = pyaudio_module if pyaudio_module is not None else import_pyaudio()
    pa = mod.PyAudio()
    try:
        return _input_devices(pa)
    finally:
        pa.terminate()


def _input_devices(pa: Any) -> list[InputDevice]:
    out = []
    for i in range(pa.get_device_count()):
        d = pa.get_device_info_by_index(i)
        if int(d.get("maxInputChannels", 0)) < 1:
            continue
        try:
            api = str(pa.get_host_api_info_by_index(d.get("hostApi", 0)).get("name", ""))
        except Exception:  # a host API that cannot be described is still usable
            api = ""
        out.append(InputDevice(i, str(d.get("name", "")), int(d["maxInputChannels"]),
                               float(d.get("defaultSampleRate", 0.0)), api))
    return out


def find_device(devices: list[InputDevice], spec: str | int) -> InputDevice:
    """Pick a device by index, exact name, or a name fragment that matches exactly one.

    Raises
    ------
    DeviceError
        Nothing (or more than one device) matches; the message lists the devices.

    Examples
    --------
    >>> devs = [InputDevice(0, "stetho", 1, 4000.0, "ALSA")]
    >>> find_device(devs, "stetho").index
    0
    """
    listing = ", ".join(f"{d.index}: {d.name!r}" for d in devices) or "none"
    text = str(spec).strip()
    if text.lstrip("-").isdigit():
        for d in devices:
            if d.index == int(text):
                return d
        raise DeviceError(f"no audio input device with index {text}; input devices: {listing}")
    exact = [d for d in devices if d.name == text]
    if exact:
        return exact[0]
    part = [d for d in devices if text.lower() in d.name.lower()]
    if len(part) == 1:
        return part[0]
    if part:
        raise DeviceError(f"audio device name {text!r} is ambiguous ({[d.name for d in part]}); "
                          "give the exact name or the index")
    raise DeviceError(f"no audio input device named {text!r}; input devices: {listing}")


# --------------------------------------------------------------------------- ring


class _Ring:
    """Single-producer single-consumer ring of fixed-size buffers, preallocated.

    The producer (audio callback) writes slot ``write % capacity`` and then advances
    ``write``; the consumer reads slot ``read % capacity`` and then advances ``read``.
    Each index is written by one thread only, and a Python attribute store is atomic under
    the GIL, so no lock is needed.
    """

    __slots__ = ("anchor", "buf", "bufno", "capacity", "epoch", "frame0", "frames", "read",
                 "status", "write")

    def __init__(self, capacity: int, samples_per_slot: int, dtype: str) -> None:
        self.capacity = capacity
        self.buf = np.zeros((capacity, samples_per_slot), dtype=dtype)
        self.frames = np.zeros(capacity, dtype=np.int64)  # valid frames in the slot
        self.frame0 = np.zeros(capacity, dtype=np.int64)  # index of its first frame (per opening)
        self.bufno = np.zeros(capacity, dtype=np.int64)  # buffer number (per opening)
        self.anchor = np.zeros(capacity, dtype=np.int64)  # wall-clock ns of frame 0 of the opening
        self.epoch = np.zeros(capacity, dtype=np.int64)  # device opening number
        self.status = np.zeros(capacity, dtype=np.int64)  # PortAudio status flags
        self.write = 0
        self.read = 0


# --------------------------------------------------------------------------- capture


@dataclass(slots=True)
class CaptureCounters:
    """Cumulative counters of one capture run (all published in chunk ``meta``)."""

    overflows: int = 0
    dropped_buffers: int = 0
    dropped_frames: int = 0
    device_lost: int = 0
    reopens: int = 0
    open_failures: int = 0
    clipped: int = 0


@dataclass(frozen=True, slots=True)
class CaptureResult:
    """What :meth:`AudioCapture.run` did."""

    chunks: int
    frames: int
    elapsed_s: float
    counters: CaptureCounters
    interrupted: bool
    reached: bool = True  # an engine completed the handshake at some point (else nothing was delivered)


class AudioCapture:
    """Capture a sound-card input and PUSH it to the engine as ``pcg`` chunks.

    Parameters
    ----------
    device : str or int
        Device index, exact name or a unique name fragment (see ``telediag devices``).
    connect : str
        Engine ingest address (PUSH connects there).
    stream : str
        Stream id, e.g. ``"bed-12/pcg"``.
    rate_hz : int
        Sample rate asked of the device (the device must support it; no resampling here).
    channels : int
        Input channels; chunk channels are named ``stetho`` (one) or ``stetho0..``.
    frames_per_buffer : int, optional
        PortAudio buffer (= wire chunk) size; default 50 ms of frames.
    sample_format : str
        ``"int16"`` (wire ``<i2``, units ``adu``) or ``"float32"`` (``<f4``, units ``FS``).
    queue_buffers : int
        Ring capacity in buffers (default: 10 s of audio).
    duration_s : float, optional
        Stop after exactly ``round(duration_s * rate_hz)`` frames (default: run until stopped).
    stall_s : float
        A device that delivers no buffer for this long is treated as lost.
    backoff_s : tuple of float
        First and largest wait between reopen attempts (doubling).
    pyaudio_module : module, optional
        PyAudio or a stand-in with the same interface (tests); default: ``import pyaudio``.
    log : callable, optional
        Receives one line of text per device event (default: print to stderr).

    Examples
    --------
    >>> cap = AudioCapture("stetho", "tcp://127.0.0.1:5555", "bed-1/pcg")  # doctest: +SKIP
    >>> cap.run(stop_event)  # doctest: +SKIP
    """

    def __init__(
        self,
        device: str | int,
        connect: str,
        stream: str,
        *,
        rate_hz: int = 4000,
        channels: int = 1,
        frames_per_buffer: int | None = None,
        sample_format: str = "int16",
        queue_buffers: int | None = None,
        duration_s: float | None = None,
        stall_s: float = 2.0,
        backoff_s: tuple[float, float] = (0.1, 2.0),
        pyaudio_module: Any = None,
        ctx: zmq.Context | None = None,
        on_chunk: Callable[[Chunk], None] | None = None,
        log: Callable[[str], None] | None = None,
        linger_s: float = 30.0,
        curve_secret: str | None = None,
        server_key: str | None = None,
    ) -> None:
        if sample_format not in SAMPLE_FORMATS:
            raise ConfigError(f"sample_format must be one of {sorted(SAMPLE_FORMATS)}, got {sample_format!r}")
        if isinstance(rate_hz, bool) or not isinstance(rate_hz, int | float) or not 1 <= rate_hz <= 384_000 \
                or float(rate_hz) != int(rate_hz):
            raise ConfigError(f"rate_hz must be a whole number of Hz in 1..384000, got {rate_hz!r}")
        if isinstance(channels, bool) or not isinstance(channels, int) or not 1 <= channels <= 64:
            raise ConfigError(f"channels must be an int in 1..64, got {channels!r}")
        rate = int(rate_hz)
        fpb = frames_per_buffer if frames_per_buffer is not None else max(1, rate // 20)
        if isinstance(fpb, bool) or not isinstance(fpb, int) or not 1 <= fpb <= rate * 10:
            raise ConfigError(f"frames_per_buffer must be an int in 1..{rate * 10}, got {fpb!r}")
        qb = queue_buffers if queue_buffers is not None else max(4, -(-10 * rate // fpb))
        if isinstance(qb, bool) or not isinstance(qb, int) or not 2 <= qb <= 1_000_000:
            raise ConfigError(f"queue_buffers must be an int in 2..1000000, got {qb!r}")
        if duration_s is not None and not (np.isfinite(duration_s) and duration_s > 0):
            raise ConfigError(f"duration_s must be > 0 s, got {duration_s!r}")
        if not (stall_s > 0 and backoff_s[0] > 0 and backoff_s[1] >= backoff_s[0]):
            raise ConfigError(f"need stall_s > 0 and 0 < backoff_s[0] <= backoff_s[1], got {stall_s}, {backoff_s}")
        Chunk.record("event", stream, 0, 0, {})  # validates the stream id (ProtocolError) early
        if (curve_secret is None) != (server_key is None):
            raise ConfigError("CurveZMQ needs both --curve-secret (this client's .key_secret) and --server-key "
                              f"(the engine's .key), got {curve_secret!r} and {server_key!r}")
        self._curve = (curve_secret, server_key)
        self.device_spec = device
        self.connect = connect
        self.stream = stream
        self.rate = rate
        self.channels = channels
        self.fpb = fpb
        self.sample_format = sample_format
        self.pa_format_name, self.dtype, self.units, self.full_scale = SAMPLE_FORMATS[sample_format]
        self.channel_names = ("stetho",) if channels == 1 else tuple(f"stetho{i}" for i in range(channels))
        self.max_frames = None if duration_s is None else int(round(duration_s * rate))
        self.stall_s = float(stall_s)
        self.backoff_s = (float(backoff_s[0]), float(backoff_s[1]))
        self.counters = CaptureCounters()
        self.session = secrets.token_hex(8)
        self.device_name = ""
        self._mod = pyaudio_module
        self._ctx = ctx
        self._on_chunk = on_chunk
        self._log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self._linger_ms = int(linger_s * 1000)
        self._ring = _Ring(qb, fpb * channels, self.dtype)
        self._ready = threading.Event()
        # written by the callback thread only
        self._epoch = 0
        self._frame_pos = 0
        self._buf_no = 0
        self._anchor_ns = 0
        self._total_frames = 0
        self._last_cb = 0.0
        self._complete = False
        self.sent_chunks = 0
        self.sent_frames = 0

    # -- the real-time part ---------------------------------------------------------
    def _callback(self, in_data: bytes | None, frame_count: int, time_info: Any, status: int) -> tuple[None, int]:
        """PortAudio callback: copy into the ring, count, never block."""
        if status & _PA_INPUT_OVERFLOW:
            self.counters.overflows += 1
        if self._frame_pos == 0:
            self._anchor_ns = time.time_ns() - (frame_count * 1_000_000_000) // self.rate
        n = frame_count
        if self.max_frames is not None:
            n = min(n, self.max_frames - self._total_frames)
        r = self._ring
        w = r.write
        if n > 0 and in_data is not None:
            if w - r.read >= r.capacity:
                self.counters.dropped_buffers += 1
                self.counters.dropped_frames += n
            else:
                s = w % r.capacity
                k = min(n * self.channels, r.buf.shape[1])
                r.buf[s, :k] = np.frombuffer(in_data, dtype=self.dtype, count=k)
                r.frames[s] = k // self.channels
                r.frame0[s] = self._frame_pos
                r.bufno[s] = self._buf_no
                r.anchor[s] = self._anchor_ns
                r.epoch[s] = self._epoch
                r.status[s] = status
                r.write = w + 1
        self._frame_pos += frame_count
        self._buf_no += 1
        self._total_frames += max(n, 0)
        self._last_cb = time.monotonic()
        self._ready.set()
        if self.max_frames is not None and self._total_frames >= self.max_frames:
            self._complete = True
            return None, _PA_COMPLETE
        return None, _PA_CONTINUE

    # -- device handling --------------------------------------------------------------
    def _open(self, first: bool) -> tuple[Any, Any]:
        """Open the device (fresh PortAudio session); return (PyAudio, stream)."""
        mod = self._mod if self._mod is not None else import_pyaudio()
        self._mod = mod
        pa = mod.PyAudio()
        try:
            dev = find_device(_input_devices(pa), self.device_spec)
            if self.channels > dev.max_input_channels:
                raise ConfigError(f"device {dev.name!r} has {dev.max_input_channels} input channel(s), "
                                  f"--channels {self.channels} asked")
            fmt = getattr(mod, self.pa_format_name)
            try:
                ok = pa.is_format_supported(self.rate, input_device=dev.index, input_channels=self.channels,
                                            input_format=fmt)
            except ValueError as e:
                ok, why = False, str(e)
            else:
                why = ""
            if not ok:
                raise ConfigError(
                    f"device {dev.name!r} does not support {self.sample_format} x {self.channels} channel(s) at "
                    f"{self.rate} Hz ({why or 'unsupported'}); its default rate is {dev.default_rate_hz:g} Hz")
            self._epoch += 0 if first else 1
            self._frame_pos = 0
            self._buf_no = 0
            self._last_cb = time.monotonic()
            try:
                st = pa.open(format=fmt, channels=self.channels, rate=self.rate, input=True,
                             input_device_index=dev.index, frames_per_buffer=self.fpb,
                             stream_callback=self._callback, start=True)
            except (OSError, ValueError) as e:
                raise DeviceError(f"cannot open audio device {dev.name!r} ({self.sample_format}, "
                                  f"{self.channels} ch, {self.rate} Hz): {e}") from e
            self.device_name = dev.name
            return pa, st
        except BaseException:
            pa.terminate()
            raise

    @staticmethod
    def _shut(pa: Any, st: Any) -> None:
        for f in (getattr(st, "stop_stream", None), getattr(st, "close", None), getattr(pa, "terminate", None)):
            if f is None:
                continue
            try:
                f()
            except Exception:  # a vanished device may refuse to close cleanly
                pass

    def run(self, stop: threading.Event | None = None) -> CaptureResult:
        """Capture until ``stop`` is set or ``duration_s`` is reached; returns the totals.

        Raises
        ------
        DeviceError
            The device is not there when capture starts.
        ConfigError
            PyAudio is missing, or the device refuses the format, rate or channel count.
        """
        stop = stop or threading.Event()
        t_start = time.monotonic()
        pa, st = self._open(first=True)  # errors at start are the user's to fix: raise
        self._log(f"audio: capturing {self.device_name!r} {self.sample_format} x {self.channels} at "
                  f"{self.rate} Hz, {self.fpb} frames/buffer -> {self.connect} as pcg/{self.stream}")
        sender_done = threading.Event()
        sender_error: list[BaseException] = []
        sender = threading.Thread(target=self._sender, args=(stop, sender_done, sender_error),
                                  name="telediag-audio-sender", daemon=True)
        sender.start()
        try:
            backoff = self.backoff_s[0]
            while not stop.is_set() and not sender_done.is_set():
                if st is not None:
                    active = _is_active(st)
                    if self._complete:
                        break
                    stalled = time.monotonic() - self._last_cb > self.stall_s
                    if active and not stalled:
                        stop.wait(0.02)
                        continue
                    self.counters.device_lost += 1
                    why = f"no buffer for {self.stall_s:.1f} s" if active else "stream stopped"
                    self._log(f"audio: device {self.device_name!r} lost ({why}); reopening")
                    self._shut(pa, st)
                    pa = st = None
                    backoff = self.backoff_s[0]
                try:
                    pa, st = self._open(first=False)
                except (DeviceError, ConfigError, OSError) as e:
                    self.counters.open_failures += 1
                    if self.counters.open_failures == 1 or self.counters.open_failures % 20 == 0:
                        self._log(f"audio: reopen failed ({e}); retrying every <= {self.backoff_s[1]:g} s")
                    stop.wait(backoff)
                    backoff = min(backoff * 2, self.backoff_s[1])
                    continue
                self.counters.reopens += 1
                self._log(f"audio: device {self.device_name!r} reopened (reopen #{self.counters.reopens})")
        finally:
            if st is not None:
                # let a completed stream finish its callback before closing
                self._shut(pa, st)
            self._drain = True  # the sender sends what is queued, then exits
            self._ready.set()
            sender.join()
        if sender_error:
            raise sender_error[0]
        return CaptureResult(self.sent_chunks, self.sent_frames, time.monotonic() - t_start,
                             self.counters, interrupted=stop.is_set() and not self._complete,
                             reached=self._reached)

    # -- the sender ---------------------------------------------------------------------
    _drain = False
    _reached = True

    def _sender(self, stop: threading.Event, done: threading.Event, errors: list[BaseException]) -> None:
        """Turn queued buffers into chunks and PUSH them (blocks on back-pressure)."""
        ctx = self._ctx or zmq.Context.instance()
        sock = ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.SNDHWM, 1000)
        sock.setsockopt(zmq.LINGER, self._linger_ms)
        if self._curve[0] is not None:
            from telediag.transports.security import secure_client_if

            secure_client_if(sock, *self._curve)
        from telediag.transports.sockets import PeerWatch

        watch = PeerWatch(sock)
        sock.connect(self.connect)
        r = self._ring
        cur_epoch = -1
        seq_base = 0
        next_seq = 0
        expected_end_ns = 0
        epoch_anchor = 0
        buf_ns = self.fpb * 1e9 / self.rate
        try:
            while True:
                if r.read == r.write:
                    if self._drain or stop.is_set():
                        break
                    self._ready.wait(0.05)
                    self._ready.clear()
                    continue
                s = r.read % r.capacity
                n = int(r.frames[s])
                data = r.buf[s, : n * self.channels].reshape(n, self.channels).copy()
                epoch, frame0, bufno, anchor = int(r.epoch[s]), int(r.frame0[s]), int(r.bufno[s]), int(r.anchor[s])
                status = int(r.status[s])
                r.read += 1  # the slot is free once copied
                if epoch != cur_epoch:
                    if cur_epoch >= 0:  # a reopened device: the time it was away is a seq gap
                        away_ns = anchor - expected_end_ns
                        seq_base = next_seq + max(1, int(round(away_ns / buf_ns)))
                        anchor = max(anchor, expected_end_ns + 1)
                    else:
                        seq_base = 0
                    cur_epoch = epoch
                    epoch_anchor = anchor
                seq = seq_base + bufno
                t0 = epoch_anchor + (frame0 * 1_000_000_000) // self.rate
                if self.dtype == "<i2":
                    clipped = int(np.count_nonzero((data == 32767) | (data == -32768)))
                else:
                    clipped = int(np.count_nonzero(np.abs(data) >= 1.0))
                self.counters.clipped += clipped
                meta = {"session": self.session, "source": "audio", "device": self.device_name,
                        "sent_ns": time.time_ns(), "status": status, **asdict(self.counters)}
                chunk = Chunk.signal("pcg", self.stream, seq, t0, data, float(self.rate),
                                     self.channel_names, (self.units,) * self.channels, meta=meta)
                if not _send(sock, chunk, stop):
                    break
                if self._on_chunk is not None:
                    self._on_chunk(chunk)
                self.sent_chunks += 1
                self.sent_frames += n
                next_seq = seq + 1
                expected_end_ns = t0 + (n * 1_000_000_000) // self.rate
        except BaseException as e:  # reported to run(), which re-raises in the main thread
            errors.append(e)
        finally:
            self._reached = watch.poll() or watch.poll(0.5)
            watch.close(sock)
            done.set()
            sock.close(linger=None if self._reached else 0)  # never linger for an absent engine


def _is_active(st: Any) -> bool:
    try:
        return bool(st.is_active())
    except Exception:  # a stream whose device vanished may raise here
        return False
