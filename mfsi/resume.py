"""A run directory's bookkeeping across starts: what it ran with, which stages finished.

    changed = check_resume(cfg, run_dir)             # {key: [old, new]}, or ConfigError
    splits = check_splits(task, eval_task, run_dir)  # to record; None when recorded already
    started = start_time(run_dir)
    record_config(cfg, run_dir, changed, launch); record_splits(run_dir, splits)
    record_start(run_dir, started)
    if not stage_done(output): ...                   # else the stage is skipped

Every stage writes its files atomically, then its done marker (mfsi.rundir.seal: sizes and
checksums of the files it wrote and of the files it read), e.g. iter_0/debate_eval.done.json,
iter_1/data.done.json, iter_1/adapters/gen0.done.json. Rerunning the command with the same
run directory (`hydra.run.dir=<dir>`) skips finished stages and redoes nothing; a stage cut
short, damaged since, or whose inputs were redone differently is redone from its inputs
with the same seeds (with a warning naming the file), so the files come out the same.

A config that changed in a way that invalidates finished stages is refused, naming the keys;
the RESUMABLE ones (`iterations` may grow; logging, batching, device and backend settings)
may change. Each start appends the config it ran with, and the keys that changed, to
config_history.jsonl; config.yaml holds the latest. splits.json records the question ids
and the SHA-256 of the data files they are positions in: changed data is refused too.
started.txt holds the first start's time, the date chat templates render.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf

from mfsi import rundir
from mfsi.config import Config
from mfsi.errors import ConfigError, DataError
from mfsi.rundir import done_marker
from mfsi.tasks import Task

log = logging.getLogger(__name__)

# Keys that may differ when a run directory is resumed: they change no finished stage.
RESUMABLE = (
    "iterations",
    "verbose",
    "logger.",
    "model.device",
    "generation.batch_size",
    "generation.memory_fraction",
    "generation.cache_growth",
    "generation.mixed_adapters",
    "generation.backend",
    "generation.decoder",  # renamed generation.backend; still in older run directories
    "generation.prefill_chunk",
    "generation.prefix_cache_mb",
    "generation.lookup_",
    "generation.vllm_",
    "generation.base_url",
    "generation.api_key_env",
    "generation.concurrency",
    "generation.timeout",
    "generation.retries",
    "generation.cache",
    "finetune.trainer.",
)
HISTORY = "config_history.jsonl"  # one line per start: when, the keys that changed, the config
STARTED = "started.txt"  # the first start's time: the date chat templates render


def check_resume(cfg: DictConfig, run_dir: Path) -> dict[str, list]:
    """The keys whose values differ from the config run_dir last ran with, {key: [old, new]}.
    Once a stage has finished, only RESUMABLE keys may differ (the others would change what
    the finished stages hold); before that, any change is taken."""
    old = last_config(run_dir)
    if old is None:
        return {}
    old, new = _flat(old), _flat(OmegaConf.to_container(cfg, resolve=True))
    # A key added to the schema after the run was made ran with the behaviour of its default.
    defaults = _flat(OmegaConf.to_container(OmegaConf.structured(Config), resolve=False))
    old = {k: old.get(k, defaults.get(k)) for k in old.keys() | new.keys()}
    changed = {
        k: [old.get(k), new.get(k)] for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)
    }
    fixed = [k for k in changed if not k.startswith(RESUMABLE)]
    if fixed and finished_stages(run_dir):
        shown = "; ".join(f"{k}: {changed[k][0]!r} -> {changed[k][1]!r}" for k in fixed[:8])
        raise ConfigError(
            f"{run_dir} holds a run made with another config ({shown}): rerun with the original "
            "values, or use a new run directory"
        )
    return changed


def last_config(run_dir: Path) -> dict | None:
    """The config run_dir last ran with: the last entry of its config history (config.yaml in
    run directories made before the history), None for a new run directory."""
    path, history = run_dir / "config.yaml", run_dir / HISTORY
    entries = rundir.read_jsonl(history, skip_damaged=True) if history.exists() else []
    entries = [e for e in entries if isinstance(e, dict) and isinstance(e.get("config"), dict)]
    try:
        shown = yaml.safe_load(rundir.read_text(path)) if path.exists() else None
    except (yaml.YAMLError, DataError):
        shown = None
    if entries:
        if path.exists() and shown != entries[-1]["config"]:
            log.warning("%s is damaged or was edited: the run's config is read from %s", path, history)
        return entries[-1]["config"]
    if not path.exists():
        if finished_stages(run_dir):
            raise DataError(
                f"{run_dir} holds finished stages but neither config.yaml nor {HISTORY}, so what "
                "made them is unknown: restore those files from a copy of this run, or use a new "
                "run directory"
            )
        return None
    if isinstance(shown, dict) and shown:
        return shown
    if not finished_stages(run_dir):
        log.warning("%s is damaged; no stage has finished yet: the config given now replaces it", path)
        return None
    raise DataError(
        f"{path} is damaged and there is no {HISTORY} to restore it from: restore it from a copy "
        "of this run, or use a new run directory"
    )


def finished_stages(run_dir: Path) -> bool:
    """Whether any stage of run_dir has finished (has a done marker)."""
    return any(run_dir.glob("iter_*/**/*.done.json"))


def record_config(
    cfg: DictConfig, run_dir: Path, changed: dict[str, list], launch: dict[str, str] | None = None
) -> None:
    """config.yaml: what this start runs with; config_history.jsonl: one more entry; `launch`:
    more files that record how this start was launched ({relative path: text}, e.g. Hydra's
    .hydra/*.yaml)."""
    config = OmegaConf.to_container(cfg, resolve=True)
    rundir.write_text(run_dir / "config.yaml", OmegaConf.to_yaml(config))
    entry = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "changed": changed, "config": config}
    rundir.append_jsonl(run_dir / HISTORY, entry)
    if changed:
        log.info(
            "resumed with other settings: %s",
            "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items()),
        )
    for name, text in (launch or {}).items():
        rundir.write_text(run_dir / name, text)


def stage_done(output: Path) -> bool:
    """Whether the stage that writes output finished and is intact; a damaged one, or one whose
    inputs were redone differently, is reported and redone."""
    marker = done_marker(output)
    if not marker.exists():
        return False
    problem = rundir.damage(marker)
    if problem:
        log.warning("%s: redoing that stage", problem)
    return problem is None


def _flat(tree, prefix: str = "") -> dict:
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}


def check_splits(task: Task, eval_task: Task, run_dir: Path) -> dict | None:
    """The train/eval ids and the data files they are positions in (size, SHA-256), to record
    in splits.json; None when recorded already. A run directory with finished stages must
    have the same ones: other questions (task, seed or sizes) or a changed data file stop
    here, naming it."""
    files = dict.fromkeys(str(f.resolve()) for f in [*task.files, *eval_task.files])
    splits = {
        "train": [p.id for p in task.split("train")],
        "eval": [p.id for p in eval_task.split("eval")],
        "data": {f: rundir.describe(Path(f)) for f in files},
    }
    log.info(
        "%d train (%s) / %d eval (%s) questions",
        len(splits["train"]),
        task.name,
        len(splits["eval"]),
        eval_task.name,
    )
    path = run_dir / "splits.json"
    try:
        recorded = rundir.read_json(path) if path.exists() else None
    except DataError as e:  # rebuilt: the config it follows from was checked
        log.warning("%s; rewritten from the task", e)
        recorded = None
    if recorded == splits:
        return None
    if recorded is not None and finished_stages(run_dir):
        old, new = recorded.get("data", splits["data"]), splits["data"]  # no "data": made before it was kept
        changed = [f for f in sorted(old.keys() | new.keys()) if old.get(f) != new.get(f)]
        if changed:
            shown = "; ".join(f"{f} ({data_change(old.get(f), new.get(f))})" for f in changed[:3])
            raise DataError(
                f"data changed since {run_dir} was made: {shown}. Question ids are positions in "
                "these files, so the finished stages would not match the questions now: restore "
                "the data, or use a new run directory"
            )
        if (recorded.get("train"), recorded.get("eval")) != (splits["train"], splits["eval"]):
            raise ConfigError(
                f"{path}: this run directory was made with other questions (task, seed or sizes differ)"
            )
    return splits


def record_splits(run_dir: Path, splits: dict | None) -> None:
    """splits.json, unless check_splits found it recorded already (None)."""
    if splits:
        rundir.write_json(run_dir / "splits.json", splits)


def data_change(old: dict | None, new: dict | None) -> str:
    """How a data file's record (rundir.describe) changed between two starts."""
    if old is None:
        return "not read by this run before"
    if new is None:
        return "no longer read"
    return f"{new['bytes']} bytes with SHA-256 {new['sha256'][:12]}..., {old['sha256'][:12]}... before"


def start_time(run_dir: Path) -> datetime:
    """When the run directory was first started (STARTED), or now for a new one: chat
    templates that print today's date render every prompt of a run with it."""
    path = run_dir / STARTED
    try:
        return datetime.fromisoformat(rundir.read_text(path).strip())
    except FileNotFoundError:
        return datetime.now().replace(microsecond=0)
    except (ValueError, DataError):
        raise DataError(
            f"{path} is damaged (expected the run's start time, e.g. 2025-01-31T23:59:00): restore it "
            "from a copy of this run, or write the day its first stage ran"
        ) from None


def record_start(run_dir: Path, started: datetime) -> None:
    """Write the run's start time at its first start; later starts keep it."""
    if not (run_dir / STARTED).exists():
        rundir.write_text(run_dir / STARTED, started.isoformat() + "\n")
