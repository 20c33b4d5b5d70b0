"""List audio input devices (index, name, input channels, default rate) for ``--device``.

PortAudio is initialised afresh for the listing, so a stethoscope plugged in since the
last run is shown. Needs the ``audio`` extra (PyAudio).
"""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``telediag devices``."""
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.add_argument("--verbose", action="store_true", help="keep ALSA's diagnostics on stderr")


def run(args: argparse.Namespace) -> int:
    """Run ``telediag devices``."""
    from dataclasses import asdict

    from telediag.sources.audio import list_input_devices, quiet_alsa

    if not args.verbose:
        quiet_alsa()
    devices = list_input_devices()
    if args.json:
        print(json.dumps([asdict(d) for d in devices], indent=2))
        return 0
    if not devices:
        print("no audio input devices")
        return 0
    width = max(len(d.name) for d in devices)
    print(f"{'index':>5}  {'name':<{width}}  {'inputs':>6}  {'default Hz':>10}  host API")
    for d in devices:
        print(f"{d.index:>5}  {d.name:<{width}}  {d.max_input_channels:>6}  {d.default_rate_hz:>10g}  {d.host_api}")
    return 0
