"""Where results go: metrics.jsonl (always) and Weights & Biases (logger=wandb).

    tracker = Tracker(cfg, run_dir)
    tracker.log(row, records)   # one evaluation: a metrics.jsonl row, W&B scalars + transcripts
    tracker.log_image("accuracy_by_iteration", path)   # a plot (mfsi.plots) to W&B
    tracker.finish()

W&B runs one run per Hydra job, grouped by cfg.logger.group, with its files inside the
run directory. Mode: cfg.logger.mode if set, else $WANDB_MODE, else online only when an
API key is configured (offline otherwise, so a missing key never blocks a run). The run id
is kept in the run directory so a resumed job continues the same W&B run. W&B never ends
a run: when it cannot start online within cfg.logger.init_timeout seconds (unreachable
server, bad key) the run logs offline, with the command to upload it later; when it fails
later, the run goes on without it. metrics.jsonl holds every row either way.
"""

from __future__ import annotations

import logging
import netrc
import os
import uuid
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mfsi import rundir
from mfsi.errors import DataError

log = logging.getLogger(__name__)
TRANSCRIPTS = 8  # questions shown in each W&B transcript table


def wandb_mode(configured: str | None) -> str:
    if configured:
        return configured
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    try:
        logged_in = bool(netrc.netrc().authenticators("api.wandb.ai"))
    except (OSError, netrc.NetrcParseError):
        logged_in = False
    return "online" if os.environ.get("WANDB_API_KEY") or logged_in else "offline"


def transcript(record: dict) -> str:
    """Every agent's conversation, as plain text."""
    return "\n\n".join(
        f"=== agent {n} ===\n" + "\n".join(f"[{m['role']}] {m['content']}" for m in conversation)
        for n, conversation in enumerate(record["conversations"])
    )


def start_wandb(cfg: DictConfig, run_dir: Path, verbose: bool = False):
    """A W&B run for this job, offline if it cannot start online; None if it cannot start at all."""
    import wandb

    id_file = Path(run_dir) / "wandb_id.txt"
    try:
        run_id = rundir.read_text(id_file).strip() if id_file.exists() else ""
    except DataError:  # damaged: a new W&B run, as for any id that is not one
        run_id = ""
    if not run_id.isalnum():  # new, or damaged: a new W&B run
        run_id = uuid.uuid4().hex[:8]
        rundir.write_text(id_file, run_id)
    settings = dict(
        project=cfg.logger.project,
        entity=cfg.logger.entity,
        group=cfg.logger.group,
        name=f"{cfg.name}-{Path(run_dir).name}",
        id=run_id,
        resume="allow",
        dir=str(run_dir),
        config=OmegaConf.to_container(cfg, resolve=True),
    )
    mode = wandb_mode(cfg.logger.mode)
    try:
        run = wandb.init(
            mode=mode,
            settings=wandb.Settings(init_timeout=cfg.logger.init_timeout, silent=not verbose),
            **settings,
        )
        if mode == "online":
            log.info("W&B run: %s", run.url)
        return run
    except Exception as e:  # CommError, AuthenticationError, UsageError, timeouts, ...
        problem = str(e).splitlines()[0] if str(e) else type(e).__name__
        wandb.teardown()  # the failed run still holds its id in W&B's service
    if mode != "online":
        log.warning("W&B could not start (%s): this run goes on without it", problem)
        return None
    try:
        run = wandb.init(mode="offline", settings=wandb.Settings(silent=not verbose), **settings)
    except Exception as e:
        log.warning("W&B could not start, not even offline (%s): this run goes on without it", e)
        return None
    folder = Path(run.dir).parent
    log.warning(
        "W&B could not start online (%s): logging offline; upload later with: wandb sync %s", problem, folder
    )
    return run


class Tracker:
    def __init__(self, cfg: DictConfig, run_dir: Path):
        self.metrics_path = Path(run_dir) / "metrics.jsonl"
        self.wandb = None
        if cfg.logger.name == "wandb":
            self.wandb = start_wandb(cfg, run_dir, cfg.verbose)

    def logged(self) -> list[dict]:
        """The rows logged so far; a damaged line is left out (with a warning), so its
        evaluation is computed again, and the next row written drops it from the file."""
        rows = rundir.read_jsonl(self.metrics_path, skip_damaged=True) if self.metrics_path.exists() else []
        ours = [r for r in rows if isinstance(r, dict) and {"iteration", "split"} <= r.keys()]
        if len(ours) < len(rows):
            left_out = len(rows) - len(ours)
            log.warning("%s: %d lines are not metrics rows: left out", self.metrics_path, left_out)
        return ours

    def log(self, row: dict, records: list[dict]) -> None:
        """Add row to metrics.jsonl (in place of an earlier row of the same evaluation, whose
        debate was redone); to W&B: per-round accuracy, scalars, transcripts."""
        key = (row["iteration"], row["split"])
        rows = [r for r in self.logged() if (r["iteration"], r["split"]) != key]
        rundir.write_jsonl(self.metrics_path, sorted([*rows, row], key=lambda r: r["iteration"]))
        if self.wandb is None:
            return
        try:
            self._log_wandb(row, records)
        except Exception as e:
            self._lost(e)

    def _lost(self, error: Exception) -> None:
        """W&B failed during the run: go on without it (metrics.jsonl has every row)."""
        log.warning("W&B failed (%s): this run goes on without it; metrics.jsonl has every row", error)
        self.wandb = None

    def _log_wandb(self, row: dict, records: list[dict]) -> None:
        split, step = row["split"], row["iteration"]
        scalars = {k: v for k, v in row.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        data = {f"{split}/{k}": v for k, v in scalars.items()}
        data.update({f"{split}/accuracy_round_{m + 1}": a for m, a in enumerate(row["accuracy_by_round"])})
        data.update({f"{split}/accuracy_agent_{n}": a for n, a in enumerate(row["agent_accuracy"])})
        import wandb

        table = wandb.Table(columns=["id", "question", "gold", "majority", "correct", "transcript"])
        for r in records[:TRANSCRIPTS]:
            table.add_data(r["id"], r["question"], r["gold"], r["majority"], r["correct"], transcript(r))
        data[f"{split}/transcripts_iter_{step}"] = table
        for adapter, size in row.get("data_sizes", {}).items():  # |D_G|, |C-|, |C+|, |D_C|
            data.update({f"data/{adapter}/{kind}": n for kind, n in size.items()})
        for adapter, result in row.get("training", {}).items():  # one loss curve per adapter
            curve = wandb.Table(columns=["step", "loss"], data=list(enumerate(result["losses"], 1)))
            data[f"train/{adapter}/loss_iter_{step}"] = wandb.plot.line(
                curve, "step", "loss", title=f"{adapter} training loss, iteration {step}"
            )
        self.wandb.log(data)

    def log_image(self, key: str, path: Path) -> None:
        if self.wandb is not None:
            import wandb

            try:
                self.wandb.log({key: wandb.Image(str(path))})
            except Exception as e:
                self._lost(e)

    def finish(self) -> None:
        if self.wandb is None:
            return
        offline = self.wandb.settings.mode == "offline"
        folder = Path(self.wandb.dir).parent
        try:
            self.wandb.finish()
        except Exception as e:
            self._lost(e)
        if offline:
            print(f"W&B offline run: {folder} (upload with: wandb sync {folder})")
