"""Issue 16 item 3: every surface says the abnormality result the same plain way.

``"abnormal 0.82"`` (probability of abnormal), ``"normal 0.91"`` (probability of *normal*, i.e.
1 - abnormal_prob) or ``"uncertain"``: the engine's :func:`verdict_text`, the document of
``telediag analyze pcg`` / the API's ``pcg.analyze`` op, and the viewer's ``pcgVerdict``
(``viewer/static/app.js``, run in Node).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from telediag.engine.stages.pcg import load_abnormality_model, verdict_text

APP_JS = Path(__file__).resolve().parents[1] / "viewer" / "static" / "app.js"
VERDICT_RE = re.compile(r"^(abnormal|normal) (0\.\d\d|1\.00)$|^uncertain$")

CASES: list[tuple[float | None, str | None]] = [
    (0.82, "abnormal"), (0.09, "normal"), (0.4, "uncertain"), (0.95, "uncertain"),
    (0.5, "abnormal"), (0.4999, "normal"), (0.0, "normal"), (1.0, "abnormal"),
    (0.7, None), (0.2, None), (None, "abnormal"), (None, None),
]


def test_verdict_text_cases() -> None:
    got = [verdict_text(p, lab) for p, lab in CASES]
    assert got[:4] == ["abnormal 0.82", "normal 0.91", "uncertain", "uncertain"]
    assert got[4:8] == ["abnormal 0.50", "normal 0.50", "normal 1.00", "abnormal 1.00"]
    assert got[8:] == ["abnormal 0.70", "normal 0.80", "abnormal", None]
    # never the old "abnormal 40 % normal" style, never a percent sign
    assert all(g is None or VERDICT_RE.match(g) or g in ("abnormal", "normal") for g in got)


def _pcg_verdict_js() -> str:
    src = APP_JS.read_text()
    m = re.search(r"function pcgVerdict\(q\) \{.*?\n\}\n", src, re.S)
    assert m, "pcgVerdict not found in viewer/static/app.js"
    return m.group(0)


def test_viewer_shows_the_same_verdict_as_the_engine(tmp_path: Path) -> None:
    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        pytest.skip("Node.js is not installed (apt-get install nodejs)")
    qs = [{"abnormal_prob": p, "label": lab} for p, lab in CASES]
    script = tmp_path / "v.mjs"
    script.write_text(_pcg_verdict_js() + f"\nconst qs = {json.dumps(qs)};\n"
                      "console.log(JSON.stringify(qs.map(pcgVerdict).concat([pcgVerdict(null)])));\n")
    out = json.loads(subprocess.run([node, str(script)], capture_output=True, text=True,
                                    timeout=60, check=True).stdout)
    want = [verdict_text(p, lab) for p, lab in CASES]
    # the viewer shows "--" where the engine has no result (None)
    assert out == [w if w is not None else "--" for w in want] + ["--"]


def test_api_and_cli_document_carries_the_verdict(shared_data: Path) -> None:
    from telediag.api.ops import analyze_pcg_array
    from telediag.evaluation.pcg_analyze import read_wav

    wav = shared_data / "pcg2016" / "training-a" / "a0001.wav"
    if not wav.exists():
        pytest.skip(f"{wav} not found")
    x, fs = read_wav(wav)
    doc = analyze_pcg_array(np.asarray(x, dtype=np.float64), fs)
    if load_abnormality_model() is None:
        assert doc["verdict"] is None and doc["label"] is None
        return
    assert doc["label"] in ("normal", "abnormal", "uncertain")
    assert doc["verdict"] == verdict_text(doc["abnormal_prob"], doc["label"])
    assert VERDICT_RE.match(doc["verdict"]), doc["verdict"]
    if doc["label"] != "uncertain":
        shown = float(doc["verdict"].split()[1])
        assert shown >= 0.5  # the probability of the label stated, never below one half
