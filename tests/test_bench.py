"""
The benchmark suite runs (a short, small smoke run): it is not a speed test,
only a guard against the suite rotting.  Figures come from `make bench`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.helpers import ROOT


def test_benchmarkSuiteRuns(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "run.py"), "--quick",
         "--json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(out.read_text())
    for section in ("calls", "fanout", "clients", "scale", "reconnect"):
        assert section in figures, section
    seq = figures["calls"][0]["seq"]
    assert seq["aurora"]["calls"] > 0 and seq["raw PB"]["calls"] > 0
    assert figures["scale"]["wrapper"]["live"] == 200
    assert {t["target"] for t in figures["targets"]} >= {
        "aurora sequential calls/s >= 0.85x raw PB",
        "resync within 250 ms of the new connection"}
    assert "Targets" in done.stdout
