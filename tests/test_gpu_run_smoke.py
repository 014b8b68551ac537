"""`benchmarks/gpu_run.sh --smoke`: the GPU run's real sequence, on the CPU, at toy sizes (about 3 minutes).

On a busy machine the stages may be stopped at their deadlines before they
measure much; what must hold everywhere: the four stages run in order, none
fails (a wrong flag, a crash), the driver ends within its budget, and the
folder fits what comes back from the device.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_smoke_run_goes_through_every_stage_in_order(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(out), "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([str(ROOT / "benchmarks" / "gpu_run.sh"), "--smoke"], capture_output=True, text=True,
                          env=env, timeout=400, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["run"].startswith("smoke") and summary["preflight"]["missing_modules"] == []
    assert list(summary["stages"]) == ["targets", "end_to_end", "seeds", "localisation"]
    for name, stage in summary["stages"].items():
        assert stage["status"] != "failed", (name, stage, (out / "gpu_run.log").read_text()[-3000:])
    assert summary["wall_s"] < summary["budget_s"] + 60
    assert summary["files"]["within_limits"]
    assert {"summary.json", "gpu_run.log"} <= set(summary["files"]["names"])
    assert set(summary["files"]["names"]) <= {"summary.json", "gpu_run.log", "gpu_targets.json", "end_to_end.json",
                                              "seeds_comparison.json", "seeds_results.md", "localisation.json"}
    printed = [line for line in done.stdout.splitlines() if line.startswith("target ")]
    assert printed == summary["targets"]  # one line per measured (or skipped) target, met / not met / n/a
    assert not any(line.endswith(": met") or "NOT met" in line for line in printed)  # a CPU judges nothing
