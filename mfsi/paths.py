"""Where a relative path in a config points: the working directory first, then the
repository root, so `model.path=models/tiny-arith` or `task.path=data/MATH` work from
anywhere (Hydra keeps the working directory; tests and sweeps may run elsewhere)."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository root


def find(path: str) -> Path | None:
    """The existing file or folder at path (~ expanded), as an absolute path (what a run
    records of it, such as an adapter's base model, is then the same from any working
    directory), or None."""
    given = Path(os.path.expanduser(path))
    candidates = [given] if given.is_absolute() else [given, ROOT / given]
    return next((c.absolute() for c in candidates if c.exists()), None)
