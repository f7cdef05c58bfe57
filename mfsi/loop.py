"""The main job: what `python run.py ...` does in a Hydra run directory.

Today it validates the config, loads the task and records the splits; debate and
finetuning stages are added on top of this orchestration.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mfsi import rundir
from mfsi.config import validate
from mfsi.tasks import load_task

log = logging.getLogger(__name__)


def run(cfg: DictConfig, run_dir: Path) -> dict:
    """Run the configured experiment in run_dir and return its summary."""
    validate(cfg)
    task = load_task(cfg.task)
    splits = {name: [p.id for p in task.split(name)] for name in ("train", "eval")}
    rundir.write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    rundir.write_json(run_dir / "splits.json", splits)
    summary = {"task": task.name, "n_train": len(splits["train"]), "n_eval": len(splits["eval"])}
    log.info(
        "task %s: %d train / %d eval questions (disjoint), ids in %s",
        task.name,
        summary["n_train"],
        summary["n_eval"],
        run_dir / "splits.json",
    )
    log.info("debate and finetuning are not built yet: stopping after the task splits")
    return summary
