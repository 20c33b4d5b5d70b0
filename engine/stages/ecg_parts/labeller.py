"""Beat labeller: the shipped beat classifier's feature stream, labels and beat release.

The classifier (:mod:`telediag.models.ecg_beats`) is used through its public API only:
``BeatClassifier.load()``, ``.stream(fs)`` -> a feature stream whose ``push(x, beats)``
returns the features of the beats now classifiable (possibly several beats late, for
look-ahead features) and ``finish()`` those of the rest, and ``.classify(features)``.
A labelled beat is released (published) when the ``L``-th decided beat after it was released
(``L``: the feature builder's look-ahead, ``LOOKAHEAD_BEATS`` of
:mod:`telediag.models.ecg_beats.features`, 1 when the builder does not say), at that beat's
release sample, so the result does not depend on the chunking. A model failure never
stops detection: from then on beats go out unlabelled.

The feature builder's per-patient state (amplitude scale: median peak-to-peak of the last 64
beats; template: median of the last 32 windows; per-patient normalisation over 256 beats) is fed
every decided beat. Beats the detector finds in an asystole are isoelectric noise: after 30 s
(60 s) of asystole on MIT-BIH 119 they were most of the amplitude ring, the scale came out ~27x
too small, the template was noise, and the resumed N N V beats were labelled V V V (false PVCs on
the physician's display). So when a usable beat follows at least :data:`RESTART_BEATS` unusable
ones spanning :data:`RESTART_S` or more since the last usable beat, and those beats are
isoelectric noise (median peak-to-peak of the lead within +-:data:`AMP_HALF_S` of them under
:data:`RESTART_AMP` x that of the last 8 usable beats: an asystole, not ventricular flutter or
muscle noise, after which the patient's state is still the right one - a restart there cost MIT-BIH
207 correct labels), the builder is restarted at that beat (fresh per-patient state, fed
:data:`RESTART_LEAD_S` of signal before it): the beats before it are finished with the old state
(their labels unchanged), the beats after it are labelled as at the start of a stream, which on
119 gives the labels of the record without the asystole.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from telediag.engine.stages.ecg_parts.gate import Decided

__all__ = ["BeatLabeller", "Labelled", "classifier", "classify_batch"]

Labelled = tuple[int, int, int, bool, str | None, dict[str, float] | None]
"""``(sample, confirm, release, usable, label, probs)`` (received indices)."""

_CLASSIFIERS: dict[tuple[str, int], Any] = {}

RESTART_BEATS = 8
"""Unusable beats in a row (since the last usable one) after which the feature state restarts."""
RESTART_S = 10.0
"""... when they also span at least this long (s) from the last usable beat (or the stream start)."""
RESTART_LEAD_S = 2.0
"""Signal (s) before the restart beat fed to the new feature builder (filter settling, window)."""
RESTART_AMP = 0.2
"""... and only when the unusable beats' median amplitude is under this fraction of the usable ones'."""
AMP_HALF_S = 0.06
"""Half-width (s) of the window whose peak-to-peak is a beat's amplitude here."""
_TAIL_S = 12.0  # raw lead signal kept for a restart (decided beats lag the newest sample by a few s)
_NO_BEATS = np.zeros(0, np.int64)
_NO_BEATS.flags.writeable = False


def classifier(variant: str, threads: int = 1) -> Any:
    """The shipped beat classifier: one ONNX session per (variant, threads) per process, shared by streams.

    With one thread its trees run in the Numba kernel of
    :mod:`telediag.engine.stages.ecg_parts.trees` (the same float32 output as ONNX Runtime, bit for
    bit, checked when it loads; ONNX Runtime's per-call overhead dominates the few beats of a
    chunk), unless the model's graph is not one it reproduces exactly: then ONNX Runtime.
    """
    key = (variant, threads)
    if key not in _CLASSIFIERS:
        from telediag.models.ecg_beats import BeatClassifier

        clf = BeatClassifier.load(variant, intra_op_threads=threads)  # type: ignore[arg-type]
        if threads == 1:
            from telediag.engine.stages.ecg_parts.trees import fast_classifier

            clf = fast_classifier(clf) or clf
        _CLASSIFIERS[key] = clf
    return _CLASSIFIERS[key]


def classify_batch(items: list[tuple[Any, Any]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """One model call for the beat features of several streams (``Deferred.run``)."""
    clf = items[0][0]
    feats = [f for _, f in items]
    idx, probs = clf.classify(type(feats[0]).concat(feats))
    out = []
    k = 0
    for f in feats:
        n = len(f)
        out.append((idx[k:k + n], probs[k:k + n]))
        k += n
    return out


class BeatLabeller:
    """Labels every decided beat (usable or not) with the beat classifier.

    Parameters
    ----------
    clf : object
        A loaded ``BeatClassifier``.
    fs : float
        Sample rate of the stream.
    """

    def __init__(self, clf: Any, fs: float) -> None:
        from telediag.models.ecg_beats import BeatClassifier

        self.clf: Any | None = clf
        self.fs = float(fs)
        self.stream = BeatClassifier.stream(fs)
        self.offset = 0  # absolute index of the feature builder's sample 0 (moves on a restart)
        self.n = 0  # samples pushed (absolute)
        self.tail = np.zeros(0)  # the last _TAIL_S s of the (gap-filled) lead, ending at self.n
        self.last_usable = 0  # last usable decided beat (the stream start before one)
        self.unusable_run = 0  # unusable decided beats since then
        self.amp_usable: list[float] = []  # amplitudes of the last 8 usable beats
        self.amp_run: list[float] = []  # amplitudes of the unusable beats since the last usable one
        self.restarts = 0
        self.early: set[int] = set()  # global indices of the beats a restart finished early
        self.held: list[tuple[int, int, int, bool, str, dict[str, float], int | None]] = []  # ... labelled, waiting
        try:
            from telediag.models.ecg_beats.features import LOOKAHEAD_BEATS

            self.lookahead = max(1, int(LOOKAHEAD_BEATS))
        except Exception:  # noqa: BLE001 - an older builder: the next beat
            self.lookahead = 1
        self.release: dict[int, tuple[int, int, bool]] = {}
        self.order: list[tuple[int, int]] = []  # (sample, release) of the decided beats, in order
        self.order_base = 0  # global index of order[0]
        self.index: dict[int, int] = {}  # sample -> global index
        self.last = 0.0
        self.error = ""

    @property
    def active(self) -> bool:
        """False once the model failed (beats then go out unlabelled)."""
        return self.clf is not None

    def push(self, lead: NDArray[np.float64], decided: list[Decided], *, final: bool) -> Any:
        """Feed the feature stream; the features of the beats now classifiable.

        ``None`` when the feature builder failed (the caller then degrades to unlabelled beats).
        """
        fs_stream = self.stream
        x = np.asarray(lead, dtype=np.float64)
        if x.size:
            bad = ~np.isfinite(x) if not np.isfinite(x.sum()) else None  # finite sum: all finite
            if bad is not None and bad.any():  # the builder needs finite samples: hold the last finite value
                x = x.copy()
                for i in np.flatnonzero(bad):
                    x[i] = x[i - 1] if i > 0 else self.last
            self.last = float(x[-1])
        new = np.fromiter((a[0] for a in decided), np.int64, len(decided)) if decided else _NO_BEATS
        self.n += x.size
        if x.size:
            keep = int(_TAIL_S * self.fs)
            self.tail = np.concatenate((self.tail[-keep:], x))[-keep:] if x.size < keep else x[-keep:].copy()
        restart = -1
        gap = RESTART_S * self.fs
        for s_, c, r, u in decided:
            self.release[s_] = (c, r, u)
            self.index[s_] = self.order_base + len(self.order)
            self.order.append((s_, r))
            amp = self._amplitude(s_)
            if u:
                if (restart < 0 and self.unusable_run >= RESTART_BEATS and s_ - self.last_usable >= gap
                        and self.amp_usable
                        and np.median(self.amp_run) < RESTART_AMP * np.median(self.amp_usable)):
                    restart = s_
                self.last_usable = s_
                self.unusable_run = 0
                self.amp_run.clear()
                self.amp_usable = [*self.amp_usable[-7:], amp]
            else:
                self.unusable_run += 1
                if len(self.amp_run) < 4096:
                    self.amp_run.append(amp)
        begin = max(self.n - self.tail.size, restart - int(RESTART_LEAD_S * self.fs))
        if restart >= 0 and restart - begin < int(0.5 * self.fs):
            restart = -1  # (not reached: decided beats lag by far less than _TAIL_S) no signal to restart from
        try:
            if restart < 0:
                return self._feed(fs_stream, x, new, final)
            # the beats before the restart beat: finished with the old state
            old = self._feed(fs_stream, x, new[new < restart], True)
            self.early.update(self.index[b] for b in old.beats.tolist() if b in self.index)
            from telediag.models.ecg_beats import BeatClassifier

            self.stream = BeatClassifier.stream(self.fs)
            self.offset = begin
            self.restarts += 1
            rest = self._feed(self.stream, self.tail[begin - (self.n - self.tail.size):], new[new >= restart], final)
            return type(old).concat([old, rest])
        except Exception as e:  # noqa: BLE001 - a model problem must not stop detection
            self.error = f"{type(e).__name__}: {e}"
            return None

    def _amplitude(self, s_: int) -> float:
        """Peak-to-peak of the lead within +-AMP_HALF_S of sample ``s_`` (0 when not kept)."""
        lo = self.n - self.tail.size
        h = int(AMP_HALF_S * self.fs)
        a, b = max(s_ - h, lo) - lo, min(s_ + h + 1, self.n) - lo
        if b <= a:
            return 0.0
        w = self.tail[a:b]
        return float(w.max() - w.min())

    def _feed(self, fs_stream: Any, x: NDArray[np.float64], new: NDArray[np.int64], final: bool) -> Any:
        """Push ``x`` and the beats ``new`` (absolute) to ``fs_stream``; its features, beats absolute."""
        off = self.offset
        if off:
            new = new - off
        feats = fs_stream.finish() if final and x.size == 0 and not len(new) else fs_stream.push(x, new)
        if final:
            feats = type(feats).concat([feats, fs_stream.finish()]) if x.size or len(new) else feats
        if off and len(feats):
            feats = type(feats)(feats.beats + off, feats.rr, feats.morph)
        return feats

    def finish(self, feats: Any, result: Any, *, n_seen: int, final: bool) -> list[Labelled]:
        """Label the beats of ``feats`` (``result``: batched model output, ``None`` to run the
        model now, or the exception a batched run raised) and say when each is released."""
        from telediag.models.ecg_beats import AAMI_CLASSES

        try:
            if feats is None:
                raise RuntimeError(self.error)
            if isinstance(result, BaseException):
                raise result
            if result is None and not final and not len(feats):
                return []  # no beat to label (most short chunks): no model call, nothing released
            idx, probs = result if result is not None else self.clf.classify(feats)  # type: ignore[union-attr]
        except Exception as e:  # noqa: BLE001 - a model problem must not stop detection
            self.clf = None  # from now on beats go out unlabelled, as with classify = "off"
            newest = self.order[-1][1] if self.order else 0
            flushed: list[Labelled] = [(b, c, max(r, newest), u, lab, pr) for b, c, r, u, lab, pr, _ in self.held]
            self.held.clear()
            flushed += [(s_, c, r, u, None, None) for s_, (c, r, u) in sorted(self.release.items())]
            self.release.clear()
            self.index.clear()
            self.order.clear()
            self.error = f"{type(e).__name__}: {e}"
            return flushed

        out: list[Labelled] = []
        beats_done = feats.beats.tolist()
        if not beats_done and not final and not self.held:
            return out  # nothing labelled: nothing released, the kept beats unchanged
        newest = self.order[-1][1] if self.order else 0
        rows = np.asarray(probs).tolist()
        idx_l = np.asarray(idx).tolist()
        classes = AAMI_CLASSES
        items, self.held = self.held, []
        for k, b in enumerate(beats_done):
            c, r, u = self.release.pop(b)
            items.append((b, c, r, u, classes[idx_l[k]],
                          {cls: round(p_, 4) for cls, p_ in zip(classes, rows[k], strict=True)},
                          self.index.pop(b, None)))
        for b, c, r, u, lab, pr, g in items:
            # released with the L-th decided beat after it (the one that made it classifiable);
            # at the end of the stream, or if the builder released it earlier, now - except the
            # beats a restart finished early: they wait for that beat (chunking-independent)
            ahead = None if g is None else g + self.lookahead - self.order_base
            if ahead is not None and 0 <= ahead < len(self.order) and not self.held:
                rel = self.order[ahead][1]
            elif not final and (self.held or g in self.early):
                self.held.append((b, c, r, u, lab, pr, g))
                continue
            else:
                rel = n_seen - 1 if final else newest
            self.early.discard(g)
            out.append((b, c, max(r, rel), u, lab, pr))
        # keep the decided beats still needed (from the oldest unlabelled or held beat on)
        oldest = min(self.index.values(), default=self.order_base + len(self.order))
        if self.held:
            oldest = min([oldest, *(h[6] for h in self.held if h[6] is not None)])
        drop = max(0, oldest - self.order_base)
        if drop:
            del self.order[:drop]
            self.order_base += drop
        return out
