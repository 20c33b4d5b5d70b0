"""Beat classifier accuracy under the evaluation protocols of the model card (AAMI EC57).

Usage::

    python benchmarks/beat_accuracy.py                      # tables of the shipped card
    python benchmarks/beat_accuracy.py --rerun [--data DIR] [--cache /tmp/ecg_beats_v2.npz]

Without ``--rerun`` it prints, as Markdown, the figures recorded in
``models/ecg_beats/card.json`` by the training run (so the README and the card can be
checked against each other without the data).  With ``--rerun`` it recomputes them from the
data (``DIR``: ``../shared/data`` or ``TELEDIAG_DATA``) with the card's hyper-parameters:
every protocol retrains its fold models (about 10-20 minutes on one core), then prints the
same tables and the largest difference to the card.

Protocols (all split by patient = record; gross statistics, confusion matrices summed over
records; EC57 / de Chazal 2004 conventions: VEB FP = Nv + Sv, SVEB FP = Ns + Vs + Fs):

* patient-wise CV on MIT-BIH DS1 (22 records, paced excluded) + svdb (78 records) together,
  reported pooled and per database;
* cross-database: train DS1 -> test svdb, and train svdb -> test DS1;
* the previous model (1.3.0, trained on DS1 only) on svdb, and on DS1 as a resubstitution
  figure (its training records), for the before/after comparison;
* every protocol also on the labels the engine publishes: the model's labels after the
  engine's rhythm monitor (AF detector of ``telediag.dsp.af``), which calls S beats inside
  detected atrial fibrillation N ("trees + AF (engine labels)" rows);
* the previous version's (2.0.0) figures, for the before/after comparison;
* per-class gross Se / +P / F1 (N S V F Q) of every protocol and database (second table).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CARD = ROOT / "models" / "ecg_beats" / "card.json"
TARGETS = {"SVEB_f1": 0.80, "SVEB_f1_cross": 0.70, "VEB_f1": 0.92, "accuracy": 0.95}


def _pc(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def rows(metrics: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(protocol label, metrics dict) of every protocol in the card's ``metrics``."""
    out: list[tuple[str, dict[str, Any]]] = []
    models = [("gbt", "trees (shipped)", metrics.get("gbt"))]
    if metrics.get("gbt", {}).get("with_rhythm"):  # the labels the engine publishes
        models.append(("gbt", "trees + AF (engine labels)", metrics["gbt"]["with_rhythm"]))
    models.append(("mlp", "MLP (compared)", metrics.get("mlp")))
    prev = metrics.get("previous_2.0.0")
    if prev:
        models.append(("gbt", "2.0.0 trees (before)", prev))
        if prev.get("with_rhythm"):
            models.append(("gbt", "2.0.0 trees + AF (before)", prev["with_rhythm"]))
    for _, label, m in models:
        if not m:
            continue
        for db in ("pooled", "mitdb", "svdb"):
            if db in m.get("cv", {}):
                out.append((f"{label}: CV DS1+svdb, {db}", m["cv"][db]))
        for k, name in (("train_DS1_test_svdb", "DS1 -> svdb"), ("train_svdb_test_DS1", "svdb -> DS1")):
            if k in m:
                out.append((f"{label}: {name}", m[k]))
    alt = metrics.get("comparison_lookahead3")
    if alt:  # the same protocols on the 3-beat look-ahead features: trees vs the MLP
        out += [(f"3-beat look-ahead, {name.replace(' (shipped)', '')}", m) for name, m in rows({k: alt[k] for k in ("gbt", "mlp") if k in alt})]
    base = metrics.get("baseline_1.3.0", {})
    if "test_svdb" in base:
        out.append(("1.3.0: DS1 -> svdb", base["test_svdb"]))
    if "train_DS1_resubstitution" in base:
        out.append(("1.3.0: on DS1 (its training set)", base["train_DS1_resubstitution"]))
    return out


def table(metrics: dict[str, Any]) -> str:
    """Markdown table: SVEB and VEB Se/+P/F1 and accuracy per protocol."""
    lines = [
        "| protocol | SVEB Se | SVEB +P | SVEB F1 | VEB Se | VEB +P | VEB F1 | accuracy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in rows(metrics):
        c = m["classes"]
        lines.append(
            f"| {name} | {_pc(c['S']['se'])} | {_pc(c['S']['ppv'])} | {_pc(m['sveb_f1_ec57'])} | "
            f"{_pc(c['V']['se'])} | {_pc(c['V']['ppv'])} | {_pc(m['veb_f1_ec57'])} | {_pc(m['accuracy'])} |"
        )
    return "\n".join(lines)


def class_table(metrics: dict[str, Any]) -> str:
    """Markdown table: gross Se / +P / F1 of every AAMI class per protocol and database (plain
    per-class figures from the confusion matrix; F is merged into N by the model, so its Se is 0)."""
    head = "| protocol | " + " | ".join(f"{c} Se | {c} +P | {c} F1" for c in "NSVFQ") + " |"
    lines = [head, "|---|" + "---:|" * 15]
    for name, m in rows(metrics):
        cells = []
        for c in "NSVFQ":
            k = m["classes"][c]
            cells += [_pc(k["se"]), _pc(k["ppv"]), _pc(k["f1"])]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def max_difference(a: dict[str, Any], b: dict[str, Any]) -> float:
    """Largest absolute difference between the headline figures of two metrics dicts."""
    worst = 0.0
    ra, rb = dict(rows(a)), dict(rows(b))
    for name in ra.keys() & rb.keys():
        for key in ("sveb_f1_ec57", "veb_f1_ec57", "accuracy"):
            x, y = ra[name][key], rb[name][key]
            if x is not None and y is not None:
                worst = max(worst, abs(x - y))
    return worst


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rerun", action="store_true", help="recompute the protocols from the data")
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--cache", type=Path, default=None)
    a = ap.parse_args(argv)
    card = json.loads(CARD.read_text())
    print(f"## ecg_beats {card['version']}: figures recorded in the card\n")
    print(table(card["metrics"]))
    print("\n### per class (gross, every protocol and database)\n")
    print(class_table(card["metrics"]))
    if not a.rerun:
        return 0
    from telediag.models.ecg_beats import train

    data = a.data or Path(os.environ.get("TELEDIAG_DATA", ROOT.parent / "shared" / "data"))
    if not (data / "svdb").is_dir() or not (data / "mitdb").is_dir():
        print(f"no mitdb/ and svdb/ under {data}: nothing to rerun", file=sys.stderr)
        return 2
    t = card["training"]
    ns = argparse.Namespace(
        rounds=t["rounds"], leaves=t["leaves"], lr=t["lr"], weight_power=t["weight_power"],
        lead2=t["lead2"], folds=t["folds"], seed=t["seed"], n_keep=t["n_keep"],
        protocols="cross,cv",
    )
    d = train.load_all(data, a.cache)
    train.exclude_columns(d, ",".join(t.get("excluded_features", [])))
    fresh: dict[str, Any] = {"gbt": train.run_protocols(d, ns, train.fit_gbt, "gbt")}
    print("\n## recomputed now (trees)\n")
    print(table(fresh))
    print(f"\nlargest difference to the card: {100 * max_difference(fresh, card['metrics']):.2f} points")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
