"""The main job: what `python run.py ...` does in a Hydra run directory.

    run(cfg, run_dir)  # splits -> base model -> iteration-0 debate on the eval split -> results

Each stage writes one file (atomically) and is skipped when that file already exists, so
rerunning a command on its run directory resumes where it stopped:
    iter_{l}/debate_{split}.jsonl   the debate records (mfsi.debate), the stage marker
    iter_{l}/debate_{split}.stats.json  generation counts (prompts cut to fit the context, ...)
    metrics.jsonl, summary.json, accuracy_by_round.png
Methods with method.selection=none (base, majority, debate) stop after iteration 0; the
finetuning iterations call `evaluate` once per iteration on top of the same stages.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mfsi import rundir
from mfsi.config import validate
from mfsi.debate import run_debate, seed_for
from mfsi.errors import ConfigError
from mfsi.generation import HFBackend
from mfsi.metrics import debate_metrics
from mfsi.society import Society, load_base, roles
from mfsi.tasks import Task, load_task
from mfsi.tracking import Tracker, plot_rounds

log = logging.getLogger(__name__)


def run(cfg: DictConfig, run_dir: Path) -> dict:
    """Run the configured experiment in run_dir (resuming it) and return its summary."""
    validate(cfg)
    run_dir = Path(run_dir)
    task = load_task(cfg.task)
    record_splits(task, run_dir)
    rundir.write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    society = Society(*load_base(cfg.model))
    tracker = Tracker(cfg, run_dir)
    try:
        rows = [evaluate(cfg, task, society, tracker, run_dir, iteration=0)]
        if cfg.method.selection != "none":
            log.warning(
                "finetuning (method.selection=%s) is not built yet: stopping after iteration 0",
                cfg.method.selection,
            )
        return write_results(cfg, run_dir, rows)
    finally:
        tracker.finish()


def record_splits(task: Task, run_dir: Path) -> None:
    """Save train/eval ids; a resumed run must have the same ones (same seed and sizes)."""
    splits = {name: [p.id for p in task.split(name)] for name in ("train", "eval")}
    path = run_dir / "splits.json"
    if path.exists() and rundir.read_json(path) != splits:
        raise ConfigError(
            f"{path}: this run directory was made with other questions (task, seed or sizes differ)"
        )
    rundir.write_json(path, splits)
    log.info("task %s: %d train / %d eval questions (disjoint)", task.name, *map(len, splits.values()))


def debate_stage(cfg: DictConfig, task: Task, society: Society, run_dir: Path, iteration: int, split: str):
    """(records, generation stats) of one iteration's debate on one split, run or reloaded."""
    path = run_dir / f"iter_{iteration}" / f"debate_{split}.jsonl"
    stats_path = path.with_suffix(".stats.json")
    if path.exists():
        records = rundir.read_jsonl(path)
        shape = (len(records[0]["responses"]), len(records[0]["responses"][0])) if records else None
        if shape and shape != (cfg.debate.rounds, cfg.agents):
            raise ConfigError(
                f"{path} holds {shape[1]} agents x {shape[0]} rounds but the config asks for "
                f"agents={cfg.agents}, debate.rounds={cfg.debate.rounds}: use a new run directory"
            )
        log.info("resume: %s exists, skipping that debate", path)
        return records, rundir.read_json(stats_path) if stats_path.exists() else {}
    backend = HFBackend(society.model, society.tokenizer, cfg.generation, cfg.model.context_length)
    start = time.time()
    records = run_debate(
        task,
        task.split(split),
        backend,
        roles(cfg.agents, cfg.method.shared, society.adapters),
        rounds=cfg.debate.rounds,
        summarize=cfg.debate.summarize,
        seed=seed_for(cfg.seed, iteration, split),
    )
    stats = {
        "truncated": backend.stats.truncated,
        "requests": backend.stats.requests,
        "new_tokens": backend.stats.new_tokens,
        "seconds": round(time.time() - start, 2),
    }
    if stats["truncated"]:
        log.warning("%d prompts were longer than the context and cut from the left", stats["truncated"])
    rundir.write_json(stats_path, stats)
    rundir.write_jsonl(path, records)  # written last: its presence marks the stage done
    return records, stats


def evaluate(
    cfg: DictConfig, task: Task, society: Society, tracker: Tracker, run_dir: Path, iteration: int
) -> dict:
    """Debate on the eval split with the current society; its metrics row (logged once)."""
    records, stats = debate_stage(cfg, task, society, run_dir, iteration, "eval")
    for row in tracker.logged():
        if row["iteration"] == iteration and row["split"] == "eval":
            return row
    row = {
        "iteration": iteration,
        "split": "eval",
        "method": cfg.method.name,
        "task": task.name,
        "model": cfg.model.name,
        "agents": cfg.agents,
        "rounds": cfg.debate.rounds,
        "summarize": cfg.debate.summarize,
        **debate_metrics(records, task),
        **stats,
    }
    tracker.log(row, records)
    return row


def write_results(cfg: DictConfig, run_dir: Path, rows: list[dict]) -> dict:
    """summary.json, the accuracy-by-round plot and a short table on stdout."""
    summary = {
        "task": cfg.task.name,
        "method": cfg.method.name,
        "model": cfg.model.name,
        "agents": cfg.agents,
        "rounds": cfg.debate.rounds,
        "final": rows[-1],
        "evaluations": rows,
    }
    rundir.write_json(run_dir / "summary.json", summary)
    plot_rounds(rows, run_dir / "accuracy_by_round.png")
    print(f"\n{cfg.task.name} / {cfg.method.name} / {cfg.model.name}: ", end="")
    print(f"{cfg.agents} agents, {cfg.debate.rounds} rounds")
    header = ("iter", "split", "n", "accuracy", "by round", "consensus", "unparsed")
    print("{:>4} {:>5} {:>5} {:>14} {:>24} {:>9} {:>8}".format(*header))
    for r in rows:
        by_round = " ".join(f"{100 * a:.1f}" for a in r["accuracy_by_round"])
        accuracy = f"{100 * r['accuracy']:.1f} ± {100 * r['stderr']:.1f}"
        print(
            f"{r['iteration']:>4} {r['split']:>5} {r['n']:>5} {accuracy:>14} {by_round:>24} "
            f"{r['consensus']:>9.2f} {r['parse_failure_rate']:>8.2f}"
        )
    print(f"results in {run_dir}\n")
    return summary
