"""What recording the data files' SHA-256 in splits.json costs, next to loading the task.

    python -m experiments.data_hashing [--data /path/to/data] [--math-files 12500]

Each run hashes every data file it reads (mfsi.rundir.describe) so that a resume on changed
data stops. Prints, per real file given, the seconds to load the task from it and to hash
it; then the same for a synthetic MATH folder of --math-files small JSON files (the
Hendrycks layout, where hashing pays one open per file).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from omegaconf import OmegaConf

from mfsi import rundir
from mfsi.config import TaskConfig
from mfsi.tasks import load_task

ROOT = Path(__file__).resolve().parents[1]


def measure(name: str, task: dict) -> None:
    """Print the seconds to load the task and to hash the files it read."""
    start = time.perf_counter()
    loaded = load_task(OmegaConf.structured(TaskConfig(**task, n_train=100, n_eval=100, seed=0)))
    load = time.perf_counter() - start
    rundir._describe.cache_clear()  # hashed for the first time, as a new run does
    start = time.perf_counter()
    size = sum(rundir.describe(f)["bytes"] for f in loaded.files)
    hashing = time.perf_counter() - start
    print(
        f"{name}: {len(loaded.files)} files, {size / 1e6:.1f} MB: load {load:.3f} s, SHA-256 {hashing:.4f} s"
    )


def math_folder(root: Path, files: int) -> Path:
    """train/<subject>/<n>.json and test/... in Hendrycks form, about 500 bytes each."""
    for n in range(files):
        folder = root / ("train" if n % 5 else "test") / f"subject{n % 7}"
        folder.mkdir(parents=True, exist_ok=True)
        record = {"problem": f"Compute {n} + 1. " + "x" * 300, "level": "Level 1", "type": "Algebra"}
        record["solution"] = f"It is $\\boxed{{{n + 1}}}$."
        (folder / f"{n}.json").write_text(json.dumps(record))
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data", default=str(ROOT / "data"), help="a folder holding gsm8k/ and math/hendrycks_test.jsonl"
    )
    parser.add_argument("--math-files", type=int, default=12500)
    args = parser.parse_args()
    data = Path(args.data)
    cases = [
        ("GSM8K train + test", {"name": "gsm", "path": str(data / "gsm8k")}),
        (
            "MATH test (Hendrycks JSONL)",
            {"name": "math", "path": str(data / "math" / "hendrycks_test.jsonl")},
        ),
    ]
    for name, task in cases:
        if Path(task["path"]).exists():
            measure(name, task)
        else:
            print(f"{name}: {task['path']} not found, skipped")
    with tempfile.TemporaryDirectory() as tmp:
        measure(
            "MATH folder, synthetic", {"name": "math", "path": str(math_folder(Path(tmp), args.math_files))}
        )


if __name__ == "__main__":
    main()
