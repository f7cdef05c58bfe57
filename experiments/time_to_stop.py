"""Seconds from SIGTERM (or SIGINT) to the exit of `python run.py`, at several points of a run.

    python -m experiments.time_to_stop

A scheduler sends SIGTERM, then SIGKILL after a grace period (SLURM: KillWait, 30 s by
default): the stop must fit in it. Each case starts a small run of the tiny model in a
temporary folder, sends the signal when the run's output shows the point, and prints the
seconds until the process exited, its exit status and the stop line.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["logger=none", "task.n_train=8", "task.n_eval=4", "iterations=1", "finetune.epochs=3"]
CASES = [  # (what, the output that marks it, signal)
    ("start-up", "questions", signal.SIGTERM),
    ("a debate", "debate round 1/", signal.SIGTERM),
    ("training (inside Lightning's fit)", "critic0: training, ", signal.SIGTERM),
    ("a debate, Ctrl-C", "debate round 1/", signal.SIGINT),
]


def time_case(when: str, signum: int) -> tuple[float, int, str]:
    """(seconds from the signal to the exit, exit status, the stop line)."""
    with tempfile.TemporaryDirectory() as cwd:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "run.py"), *ARGS],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        sent = None
        for line in process.stdout:
            if when in line:
                process.send_signal(signum)
                sent = time.perf_counter()
                break
        rest = process.stdout.read()
        status = process.wait()
        seconds = time.perf_counter() - sent if sent else float("nan")
    stop = next((line for line in rest.splitlines() if "resume with" in line), "(no stop line)")
    return seconds, status, stop.split("] - ")[-1].split("; resume with")[0]


def main() -> None:
    for what, when, signum in CASES:
        seconds, status, stop = time_case(when, signum)
        print(f"{seconds:6.2f} s  exit {status}  {what}: {stop}", flush=True)


if __name__ == "__main__":
    main()
