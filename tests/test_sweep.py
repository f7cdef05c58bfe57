"""Hydra multirun: a sweep of two tiny jobs runs, and a failing job does not stop the other."""

import subprocess
import sys
from pathlib import Path

from mfsi import rundir

ROOT = Path(__file__).resolve().parents[1]


def test_a_failed_job_does_not_stop_the_sweep(tiny_model_dir, tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "run.py"),
            "-m",
            "task=gsm,arithmetic",
            "method=majority",
            "agents=2",
            "task.n_train=2",
            "task.n_eval=2",
            f"model.path={tiny_model_dir}",
            "generation.max_new_tokens=8",
            "evaluation.diversity=false",
            "logger=none",
            f"hydra.sweep.dir={tmp_path}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={
            "PATH": "/usr/bin:/bin",
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "HOME": str(tmp_path),
        },
    )
    assert "no data for task=gsm" in out.stdout + out.stderr  # job 0 fails on missing data
    [job] = [p for p in tmp_path.iterdir() if p.name[0].isdigit()]  # job 0's folder was removed
    assert job.name.startswith("1_") and "task=arithmetic" in job.name
    [row] = rundir.read_jsonl(job / "metrics.jsonl")
    assert (row["task"], row["agents"], row["rounds"], row["n"]) == ("arithmetic", 2, 1, 2)
