"""Where results go: metrics.jsonl (always), Weights & Biases (logger=wandb), plots.

    tracker = Tracker(cfg, run_dir)
    tracker.log(row, records)   # one evaluation: a metrics.jsonl row, W&B scalars + transcripts
    tracker.finish()
    plot_rounds(rows, run_dir / "accuracy_by_round.png")

W&B runs one run per Hydra job, grouped by cfg.logger.group, with its files inside the
run directory. Mode: cfg.logger.mode if set, else $WANDB_MODE, else online only when an
API key is configured (offline otherwise, so a missing key never blocks a run). The run id
is kept in the run directory so a resumed job continues the same W&B run.
"""

from __future__ import annotations

import logging
import netrc
import os
import tempfile
import uuid
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mfsi import rundir

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


class Tracker:
    def __init__(self, cfg: DictConfig, run_dir: Path):
        self.metrics_path = Path(run_dir) / "metrics.jsonl"
        self.wandb = None
        if cfg.logger.name != "wandb":
            return
        import wandb

        id_file = Path(run_dir) / "wandb_id.txt"
        if not id_file.exists():
            rundir.write_text(id_file, uuid.uuid4().hex[:8])
        self.wandb = wandb.init(
            project=cfg.logger.project,
            entity=cfg.logger.entity,
            group=cfg.logger.group,
            name=f"{cfg.name}-{Path(run_dir).name}",
            id=id_file.read_text().strip(),
            resume="allow",
            dir=str(run_dir),
            mode=wandb_mode(cfg.logger.mode),
            config=OmegaConf.to_container(cfg, resolve=True),
        )

    def logged(self) -> list[dict]:
        return rundir.read_jsonl(self.metrics_path) if self.metrics_path.exists() else []

    def log(self, row: dict, records: list[dict]) -> None:
        """Append row to metrics.jsonl; to W&B: per-round accuracy, scalars, transcripts."""
        rundir.append_jsonl(self.metrics_path, row)
        if self.wandb is None:
            return
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

            self.wandb.log({key: wandb.Image(str(path))})

    def finish(self) -> None:
        if self.wandb is not None:
            offline = self.wandb.settings.mode == "offline"
            folder = Path(self.wandb.dir).parent
            self.wandb.finish()
            if offline:
                print(f"W&B offline run: {folder} (upload with: wandb sync {folder})")


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(5, 3.5))


def _save(fig, path: Path) -> None:
    """Write a figure atomically, then close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(fd)
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def _title(rows: list[dict]) -> str:
    first = rows[0] if rows else {}
    label = first.get("variant", first.get("method", ""))
    return f"{first.get('task', '')} {label}, {first.get('agents', '')} agents"


def plot_rounds(rows: list[dict], path: Path) -> None:
    """Majority accuracy (± stderr) after each debate round, one line per evaluation."""
    fig, ax = _figure()
    for row in rows:
        rounds = range(1, len(row["accuracy_by_round"]) + 1)
        acc = [100 * a for a in row["accuracy_by_round"]]
        err = [100 * row["stderr"] if m == len(acc) else 0 for m in rounds]  # final round only
        ax.errorbar(
            rounds, acc, yerr=err, marker="o", capsize=3, label=f"iter {row['iteration']} {row['split']}"
        )
    ax.set(xlabel="debate round", ylabel="majority accuracy (%)", title=_title(rows), ylim=(0, 100))
    ax.set_xticks(range(1, max((len(r["accuracy_by_round"]) for r in rows), default=1) + 1))
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_iterations(rows: list[dict], path: Path) -> None:
    """Final-round majority accuracy (± stderr) and consensus after each finetuning iteration."""
    fig, ax = _figure()
    iterations = [r["iteration"] for r in rows]
    ax.errorbar(
        iterations,
        [100 * r["accuracy"] for r in rows],
        yerr=[100 * r["stderr"] for r in rows],
        marker="o",
        capsize=3,
        label="accuracy",
    )
    ax.plot(iterations, [100 * r["consensus"] for r in rows], marker="s", ls="--", label="consensus")
    ax.set(xlabel="finetuning iteration", ylabel="%", title=_title(rows), ylim=(0, 100))
    ax.set_xticks(iterations)
    ax.legend(fontsize=8)
    _save(fig, path)
