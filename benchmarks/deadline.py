"""Time budgets for the benchmark scripts: a clock that runs out, and commands stopped when it does.

Used by ``gpu_run.py`` (one deadline per stage) and by the stages themselves
(``--time-budget``), so a run cut short keeps what it measured: every stage
writes its JSON after each unit of work, and a command past its deadline is
stopped with its whole process group (loader workers included).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass

log = logging.getLogger("deadline")

GRACE_S = 5.0
"""Between SIGTERM and SIGKILL when a command outlives its deadline."""
OUT_OF_TIME = 3
"""Exit code of a script whose budget ran out before it measured anything (not a failure)."""
RESERVE_S = 10.0
"""What a script keeps back from its ``--time-budget`` to stop its last command and write its JSON."""


@dataclass
class Clock:
    """Seconds left until a fixed point in time (``budget_s`` None: never runs out)."""

    budget_s: float | None = None
    reserve_s: float = 0.0  # kept back at the end (see RESERVE_S)

    def __post_init__(self) -> None:
        self.started = time.monotonic()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def left(self) -> float:
        return float("inf") if self.budget_s is None else self.budget_s - self.reserve_s - self.elapsed


def run_until(cmd: Sequence[str], seconds: float, *, env: dict[str, str] | None = None,
              log_file: str | os.PathLike | None = None) -> tuple[int | None, float]:
    """Run ``cmd``, stopped after ``seconds``; returns (exit code or None when stopped, wall seconds).

    The command gets its own process group, so stopping it stops its children
    too. Output is appended to ``log_file`` when given, else inherited.
    """
    started = time.monotonic()
    out = open(log_file, "a") if log_file else None  # noqa: SIM115 - closed below
    try:
        proc = subprocess.Popen(list(cmd), env=env, stdout=out, stderr=subprocess.STDOUT if out else None,
                                start_new_session=True)
        try:
            code: int | None = proc.wait(timeout=max(1.0, seconds))
        except subprocess.TimeoutExpired:
            log.warning("stopped after %.0f s (its deadline): %s", seconds, " ".join(cmd[:6]))
            _stop_group(proc)
            code = None
    finally:
        if out:
            out.close()
    return code, time.monotonic() - started


def _stop_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, GRACE_S), (signal.SIGKILL, 30.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
