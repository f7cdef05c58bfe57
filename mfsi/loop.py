"""The main job: what `python run.py ...` does in a Hydra run directory.

    run(cfg, run_dir)

Iteration 0 evaluates the base society (no adapters) on the eval split. Each iteration
l >= 1 then (DESIGN.md "Method semantics"):
    debate the train split with the iteration l-1 society    iter_{l-1}/debate_train.jsonl
    (STaR only) rationalise wrong answers with a hint          iter_{l-1}/rationalisations.jsonl
    select each adapter's finetuning data                      iter_{l}/data/{adapter}.jsonl
    finetune every adapter on its own data                     iter_{l}/adapters/{adapter}/
    debate the eval split with the new society (metrics)       iter_{l}/debate_eval.jsonl
Methods that select no data (base, majority, debate) stop after iteration 0.

Resume: every stage writes its files atomically, then its done marker (mfsi.rundir.seal:
sizes and checksums of the files it wrote and of the files it read), e.g.
iter_0/debate_eval.done.json, iter_1/data.done.json, iter_1/adapters/gen0.done.json.
Rerunning the command with the same run directory (`hydra.run.dir=<dir>`) skips finished
stages and redoes nothing; a stage cut short, damaged since, or whose inputs were redone
differently is redone from its inputs with the same seeds (with a warning naming the file),
so the files come out the same. A config that changed in a way that invalidates finished
stages is refused, naming the keys; `iterations` may grow, and logging/batching/device
settings may change. Each start appends the config it ran with, and the keys that changed,
to config_history.jsonl; config.yaml holds the latest. splits.json records the question
ids and the SHA-256 of the data files they are positions in: changed data is refused too.
A lock keeps a second process out.
"""

from __future__ import annotations

import logging
import shutil
import time
from datetime import datetime
from pathlib import Path

import torch
import yaml
from omegaconf import DictConfig, OmegaConf

from mfsi import console, rundir
from mfsi.chat import end_ids, final_answer, opens_reasoning, prompt_ids
from mfsi.config import Config, validate
from mfsi.debate import run_debate, seed_for
from mfsi.diversity import MODEL_BASED, embedding_dissimilarity, load_embedder, model_diversity
from mfsi.errors import ConfigError, DataError
from mfsi.generation import make_backend
from mfsi.generation.common import ReasoningBudget
from mfsi.generation.mfsi import unsupported
from mfsi.generation.openai import api_key
from mfsi.generation.vllm import check_setup
from mfsi.metrics import debate_metrics, mean
from mfsi.rundir import done_marker
from mfsi.selection import rationalisation_requests, sample_examples, select, sizes
from mfsi.society import (
    Society,
    check_preset,
    context_length,
    hf_config,
    load_model,
    load_tokenizer,
    model_config,
    resolve_device,
    roles,
)
from mfsi.tasks import Problem, Task, load_task
from mfsi.tracking import Tracker, plot_iterations, plot_rounds
from mfsi.training import check_encodable, check_trainer, train_adapter
from mfsi.versions import check_versions

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


def run(cfg: DictConfig, run_dir: Path, launch: dict[str, str] | None = None) -> dict:
    """Run the configured experiment in run_dir (resuming it) and return its summary.
    launch: more files to record how this start was launched ({relative path: text}; run.py
    passes Hydra's .hydra/*.yaml), written with config.yaml once the run directory is accepted."""
    console.doing("start-up (checks, data, model)")
    check_versions()
    validate(cfg)
    preflight(cfg)
    run_dir = Path(run_dir)
    with rundir.lock(run_dir):
        changed = check_resume(cfg, run_dir)
        task = load_task(cfg.task)
        eval_task = load_task(cfg.eval_task) if cfg.eval_task else task
        splits = check_splits(task, eval_task, run_dir)
        started = start_time(run_dir)
        society = load_society(cfg, task, started)
        check_prompt_room(cfg, task, society)
        # Only now, with every input checked, does the run directory get its first files.
        if splits:
            rundir.write_json(run_dir / "splits.json", splits)
        record_config(cfg, run_dir, changed)
        record_start(run_dir, started)
        for name, text in (launch or {}).items():
            rundir.write_text(run_dir / name, text)
        tracker = Tracker(cfg, run_dir)
        iterations = cfg.iterations if cfg.method.selection != "none" else 0
        try:
            rows = [evaluate(cfg, eval_task, society, tracker, run_dir, iteration=0)]
            for iteration in range(1, iterations + 1):
                records, _, _ = debate_stage(cfg, task, society, run_dir, iteration - 1, "train")
                datasets = selection_stage(cfg, task, society, records, run_dir, iteration)
                trained = finetune_stage(cfg, society, datasets, run_dir, iteration)
                extra = {"data_sizes": sizes(datasets), "training": trained}
                rows.append(evaluate(cfg, eval_task, society, tracker, run_dir, iteration, extra))
            summary = write_results(cfg, run_dir, rows)
            tracker.log_image("accuracy_by_iteration", run_dir / "accuracy_by_iteration.png")
            return summary
        finally:
            tracker.finish()


def load_society(cfg: DictConfig, task: Task, started: datetime | None = None) -> Society:
    """The base model and its tokenizer (its chat template rendered with
    model.chat_template_kwargs and the run's start time as the date), checked against the
    preset and the chat template; a society without local weights when an API generates
    (generation.backend=openai)."""
    if cfg.generation.backend == "openai":
        agents = max(cfg.agents, cfg.evaluation.agents or 0)
        served = [f"{role}{n}" for n in range(agents) for role in ("gen", "critic")]
        return Society(None, None, served if cfg.generation.served_adapters else ())
    tokenizer = load_tokenizer(cfg.model, started)
    check_preset(cfg.model, tokenizer)  # before the weights load
    if cfg.method.selection != "none" and cfg.iterations > 0:
        check_max_length(cfg.finetune.max_length, tokenizer, task)
    # Generation, training and the diversity metrics read conversations through the chat
    # template: a template that fails to render, or a reasoning budget it cannot serve,
    # stops the run now, before the weights load and hours of debate.
    examples = sample_examples(task, cfg.debate.summarize)
    check_encodable(tokenizer, None, examples)
    ReasoningBudget.of(tokenizer, cfg.generation.max_reasoning_tokens, opens_reasoning(tokenizer))
    society = Society(load_model(cfg.model, tokenizer), tokenizer)
    check_encodable(tokenizer, end_ids(society.model, tokenizer), examples)
    return society


def check_max_length(max_length: int, tokenizer, task: Task) -> None:
    """ConfigError when finetune.max_length is below the shortest example there can be (an
    empty question's prompt and one answer token): training would skip every example."""
    tokens = len(prompt_ids(tokenizer, task.prompt(Problem("", "", "")))) + 1
    if max_length < tokens:
        raise ConfigError(
            f"finetune.max_length={max_length}: every finetuning example would be skipped, since even an "
            f"empty question takes {tokens - 1} tokens before its answer with this chat template; "
            "expected the length of the longest conversations to learn from (default 2048)"
        )


def check_prompt_room(cfg: DictConfig, task: Task, society: Society) -> None:
    """Warn, before any debate, when the round-2 prompts must lose more than half of their
    tokens to fit the context: they hold the other agents' answers, so they grow with the
    agents however short the answers are. Counted with empty answers: real ones lose more."""
    if society.tokenizer is None:  # an API generates: nothing local to count with
        return
    agents = max([a for a, rounds in (shape(cfg, "train"), shape(cfg, "eval")) if rounds > 1], default=1)
    if agents < 2:
        return
    problem, others = Problem("", "", ""), [""] * (agents - 1)
    if cfg.debate.summarize:  # the summariser is sent all the others' answers
        prompt = task.summary_request(problem, others)
    else:
        first = [*task.prompt(problem), {"role": "assistant", "content": ""}]
        prompt = [*first, task.debate_prompt(others, cfg.debate.style)]
    tokens = len(prompt_ids(society.tokenizer, prompt))
    context = context_length(cfg.model, society.model)
    room = context - cfg.generation.max_new_tokens
    if tokens > 2 * room:
        log.warning(
            "agents=%d: each round-2 prompt takes at least %d tokens (the other %d agents' answers, "
            "even if empty) where the context leaves %d (model.context_length %d - "
            "generation.max_new_tokens %d): at least %.0f%% of every such prompt will be cut; use "
            "fewer agents or a longer context",
            agents,
            tokens,
            agents - 1,
            room,
            context,
            cfg.generation.max_new_tokens,
            100 * (1 - room / tokens),
        )


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


def preflight(cfg: DictConfig) -> None:
    """The checks that read the model's config.json (not its weights), the generation
    backend's needs, the embedder's and Lightning's settings: seconds, before the run
    directory is touched."""
    if cfg.generation.backend == "openai":
        api_key(cfg.generation)  # the model is not local: nothing of it to read
    else:
        check_model(cfg)
    if cfg.generation.backend == "vllm":
        check_setup(cfg)
    if cfg.evaluation.diversity and cfg.evaluation.embedder:
        hf_config(cfg.evaluation.embedder, "evaluation.embedder")
    if cfg.method.selection != "none" and cfg.iterations > 0:
        check_trainer(cfg.finetune.trainer, resolve_device(cfg.model.device))


def check_model(cfg: DictConfig) -> None:
    """The context and the decoder against the model's config.json."""
    config = model_config(cfg.model)
    limit = getattr(config.get_text_config(), "max_position_embeddings", None)
    context = cfg.model.context_length or limit
    if limit and context > limit:
        raise ConfigError(
            f"model.context_length={context}: expected at most {limit}, the max_position_embeddings "
            f"of {cfg.model.path}"
        )
    if context and cfg.generation.max_new_tokens >= context:
        raise ConfigError(
            f"generation.max_new_tokens={cfg.generation.max_new_tokens} leaves no room for the prompt in "
            f"the model's context of {context} tokens: expected max_new_tokens < context"
        )
    problem = (
        cfg.generation.backend == "mfsi"
        and context
        and config._attn_implementation
        and unsupported(config, context)
    )
    if problem:
        raise ConfigError(
            f"generation.backend=mfsi cannot drive this model ({problem}): set generation.backend=hf"
        )


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


def record_config(cfg: DictConfig, run_dir: Path, changed: dict[str, list]) -> None:
    """config.yaml: what this start runs with; config_history.jsonl: one more entry."""
    config = OmegaConf.to_container(cfg, resolve=True)
    rundir.write_text(run_dir / "config.yaml", OmegaConf.to_yaml(config))
    entry = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "changed": changed, "config": config}
    rundir.append_jsonl(run_dir / HISTORY, entry)
    if changed:
        log.info(
            "resumed with other settings: %s",
            "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items()),
        )


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


def selection_stage(
    cfg: DictConfig, task: Task, society: Society, records: list[dict], run_dir: Path, iteration: int
) -> dict[str, list[dict]]:
    """Each adapter's finetuning set for this iteration, selected or reloaded."""
    folder = run_dir / f"iter_{iteration}" / "data"
    if stage_done(folder):
        names = rundir.read_json(folder / "sizes.json")
        return {name: rundir.read_jsonl(folder / f"{name}.jsonl") for name in names}
    console.doing(f"the data selection of iteration {iteration}")
    inputs = [debate_path(run_dir, iteration - 1, "train")]
    rationalised = None
    if cfg.method.selection == "star":
        rationalised = rationalise_stage(cfg, task, society, records, run_dir, iteration - 1)
        inputs.append(run_dir / f"iter_{iteration - 1}" / "rationalisations.jsonl")
    datasets = select(
        records,
        cfg.method,
        agents=cfg.agents,
        task=task,
        seed=seed_for(cfg.seed, iteration, "select"),
        critic_weight=cfg.finetune.critic_weight,
        rationalised=rationalised,
        opened=rationalised is not None and opens_reasoning(society.tokenizer),
    )
    if not any(datasets.values()):
        raise DataError(
            f"iteration {iteration}: no finetuning data for any adapter (no question of the "
            f"train debate in {run_dir / f'iter_{iteration - 1}'} gave usable answers); "
            "nothing to learn: try more train questions or a stronger model"
        )
    for name, examples in datasets.items():
        rundir.write_jsonl(folder / f"{name}.jsonl", examples)
    rundir.write_json(folder / "sizes.json", sizes(datasets))
    rundir.seal(done_marker(folder), [folder], inputs)
    log.info("iteration %d data: %s", iteration, {k: v["n"] for k, v in sizes(datasets).items()})
    return datasets


def rationalise_stage(
    cfg: DictConfig, task: Task, society: Society, records: list[dict], run_dir: Path, iteration: int
) -> dict[tuple[str, int], str]:
    """STaR: answers to the wrongly answered train questions, re-asked with a hint."""
    path = run_dir / f"iter_{iteration}" / "rationalisations.jsonl"
    if not stage_done(path):
        console.doing(f"the rationalisations of iteration {iteration}")
        requests = rationalisation_requests(records, task)
        players = roles(cfg.agents, cfg.method.shared, society.adapters)
        with make_backend(cfg, society, run_dir) as generator:
            texts = generator.generate(
                [(players[agent][0], messages) for _, agent, messages in requests],
                seed=seed_for(cfg.seed, iteration, "rationalise"),
                desc="rationalise",
            )
        rationales = [{"id": q, "agent": a, "response": t} for (q, a, _), t in zip(requests, texts)]
        rundir.write_jsonl(path, rationales)
        rundir.seal(done_marker(path), [path], [debate_path(run_dir, iteration, "train")])
    return {(r["id"], r["agent"]): r["response"] for r in rundir.read_jsonl(path)}


def finetune_stage(
    cfg: DictConfig, society: Society, datasets: dict[str, list[dict]], run_dir: Path, iteration: int
) -> dict[str, dict]:
    """Train every adapter on its own data (or keep its weights) and load the results.

    An adapter starts from its previous-iteration weights (finetune.init=previous) or
    fresh (init=base). One with no data keeps its previous weights, or stays the base
    model if it has none yet. Returns per-adapter training results (losses, counts).
    """
    results = {}
    for name, examples in sorted(datasets.items()):
        out = run_dir / f"iter_{iteration}" / "adapters" / name
        previous = run_dir / f"iter_{iteration - 1}" / "adapters" / name
        result_path = run_dir / f"iter_{iteration}" / "training" / f"{name}.json"
        inputs = [
            p for p in (run_dir / f"iter_{iteration}" / "data" / f"{name}.jsonl", previous) if p.exists()
        ]
        if not stage_done(out):
            if not examples:
                if not previous.exists():
                    log.warning("%s: no data and no earlier weights: the base model plays it", name)
                    continue
                log.warning("%s: no data this iteration: keeps its iteration %d weights", name, iteration - 1)
                _copy_folder(previous, out)
                rundir.seal(done_marker(out), [out], inputs)
            else:
                console.doing(f"finetuning {name} (iteration {iteration})")
                if cfg.finetune.init == "previous" and previous.exists():
                    society.load(name, previous)
                else:
                    torch.manual_seed(seed_for(cfg.seed, iteration, name, "init"))
                    society.add(name, cfg.finetune.lora)
                result = train_adapter(
                    society.model,
                    society.tokenizer,
                    name,
                    examples,
                    cfg.finetune,
                    seed=seed_for(cfg.seed, iteration, name),
                )
                rundir.write_json(result_path, result)
                society.save(name, out)
                rundir.seal(done_marker(out), [out, result_path], inputs)
        society.load(name, out)
        if result_path.exists():
            results[name] = rundir.read_json(result_path)
    return results


def _copy_folder(source: Path, target: Path) -> None:
    """Copy a folder atomically: into a temporary sibling, then renamed into place."""
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    shutil.rmtree(target, ignore_errors=True)  # a copy cut short, or damaged since
    tmp.rename(target)


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


def data_change(old: dict | None, new: dict | None) -> str:
    """How a data file's record (rundir.describe) changed between two starts."""
    if old is None:
        return "not read by this run before"
    if new is None:
        return "no longer read"
    return f"{new['bytes']} bytes with SHA-256 {new['sha256'][:12]}..., {old['sha256'][:12]}... before"


def shape(cfg: DictConfig, split: str) -> tuple[int, int]:
    """(agents, rounds) of the debate on a split; evaluation may override both."""
    if split == "eval":
        return cfg.evaluation.agents or cfg.agents, cfg.evaluation.rounds or cfg.debate.rounds
    return cfg.agents, cfg.debate.rounds


def debate_path(run_dir: Path, iteration: int, split: str) -> Path:
    return run_dir / f"iter_{iteration}" / f"debate_{split}.jsonl"


def adapter_folders(run_dir: Path, iteration: int) -> list[Path]:
    """The adapters the society plays with in this iteration (temporary folders start with a dot)."""
    folder = run_dir / f"iter_{iteration}" / "adapters"
    return sorted(p for p in folder.glob("[!.]*") if p.is_dir())


def debate_stage(
    cfg: DictConfig, task: Task, society: Society, run_dir: Path, iteration: int, split: str
) -> tuple[list[dict], dict, bool]:
    """(records, generation stats, whether it ran now) of one iteration's debate on one split,
    run or reloaded."""
    path = debate_path(run_dir, iteration, split)
    stats_path = path.with_suffix(".stats.json")
    if stage_done(path):
        log.info("resume: %s is done, skipping that debate", path)
        return rundir.read_jsonl(path), rundir.read_json(stats_path), False
    console.doing(f"the {split} debate of iteration {iteration}")
    agents, rounds = shape(cfg, split)
    start = time.time()
    with make_backend(cfg, society, run_dir) as generator:
        records = run_debate(
            task,
            task.split(split),
            generator,
            roles(agents, cfg.method.shared, society.adapters),
            rounds=rounds,
            summarize=cfg.debate.summarize,
            seed=seed_for(cfg.seed, iteration, split),
            style=cfg.debate.style,
            agent_ids=cfg.debate.agent_ids,
            share=cfg.debate.share,
        )
    opened = generator.opens_reasoning
    stats = {
        "cut": generator.stats.cut,
        "cut_tokens": generator.stats.cut_tokens,
        "truncated": generator.stats.truncated,
        "requests": generator.stats.requests,
        **generator.stats.tokens(),
        # responses whose reasoning never ended (max_new_tokens or max_reasoning_tokens): no answer
        "unfinished_reasoning": sum(
            final_answer(text, opened) is None for r in records for texts in r["responses"] for text in texts
        ),
        "seconds": round(time.time() - start, 2),
    }
    if stats["cut"]:
        log.warning(
            "%d prompts were too long for the context: %d tokens from the middles of other agents' "
            "answers (or summaries) and then of their own earlier answers were cut",
            stats["cut"],
            stats["cut_tokens"],
        )
    if stats["truncated"]:
        log.warning("%d prompts were still too long and lost tokens from their middle", stats["truncated"])
    rundir.write_json(stats_path, stats)
    rundir.write_jsonl(path, records)
    rundir.seal(done_marker(path), [path, stats_path], adapter_folders(run_dir, iteration))
    return records, stats, True


def evaluate(
    cfg: DictConfig,
    task: Task,
    society: Society,
    tracker: Tracker,
    run_dir: Path,
    iteration: int,
    extra: dict | None = None,
) -> dict:
    """Debate on the eval split with the current society; its metrics row (logged once, and
    again if the debate had to be redone)."""
    records, stats, ran = debate_stage(cfg, task, society, run_dir, iteration, "eval")
    logged = [r for r in tracker.logged() if r["iteration"] == iteration and r["split"] == "eval"]
    if logged and not ran:
        return logged[-1]
    agents, rounds = shape(cfg, "eval")
    console.doing(f"the metrics of iteration {iteration}")
    metrics = debate_metrics(records, task)
    scores = diversity(cfg, society, records, agents) if cfg.evaluation.diversity else {}
    per_question = {**metrics.pop("per_question"), **scores.pop("per_question", {})}
    row = {
        "iteration": iteration,
        "split": "eval",
        "method": cfg.method.name,
        "variant": cfg.variant,
        "task": task.name,
        "model": cfg.model.name,
        "agents": agents,
        "rounds": rounds,
        "summarize": cfg.debate.summarize,
        **metrics,
        **scores,
        **stats,
        **(extra or {}),
        "per_question": per_question,  # last: the long lists after the scalars
    }
    tracker.log(row, records)
    return row


def diversity(cfg: DictConfig, society: Society, records: list[dict], agents: int) -> dict:
    """The diversity metrics of mfsi.diversity for this evaluation's debate; "per_question"
    holds each question's embedding dissimilarity. The model-based ones are None without
    local weights (generation through an API)."""
    generators = [g for g, _ in roles(agents, cfg.method.shared, society.adapters)]
    # Scoring batches as generation's; with auto, model_diversity's own: its logits over the
    # whole conversation are not what generation's memory budget counts.
    rows = cfg.generation.batch_size
    batch = {} if rows == "auto" else {"batch_size": rows}
    dissimilarity = embedding_dissimilarity(records, load_embedder(cfg.evaluation.embedder))
    model_based = dict.fromkeys(MODEL_BASED)
    if society.model is not None:
        model_based = model_diversity(
            society.model,
            society.tokenizer,
            records[: cfg.evaluation.diversity_questions],
            generators,
            **batch,
            prompt_room=context_length(cfg.model, society.model) - cfg.generation.max_new_tokens,
        )
    return {
        "embedding_dissimilarity": None if dissimilarity is None else mean(dissimilarity),
        "per_question": {"embedding_dissimilarity": dissimilarity and [round(d, 5) for d in dissimilarity]},
        **model_based,
    }


def write_results(cfg: DictConfig, run_dir: Path, rows: list[dict]) -> dict:
    """summary.json, the plots and a table of accuracy per iteration on stdout."""
    console.doing("writing the results")
    summary = {
        "task": cfg.task.name,
        "method": cfg.method.name,
        "variant": cfg.variant,
        "model": cfg.model.name,
        "agents": cfg.agents,
        "rounds": cfg.debate.rounds,
        "final": rows[-1],
        "evaluations": rows,
    }
    rundir.write_json(run_dir / "summary.json", summary)
    plot_rounds(rows, run_dir / "accuracy_by_round.png")
    plot_iterations(rows, run_dir / "accuracy_by_iteration.png")
    print(f"\n{cfg.task.name} / {cfg.variant} / {cfg.model.name}: ", end="")
    print(f"{cfg.agents} agents, {cfg.debate.rounds} rounds")
    header = ("iter", "n", "accuracy", "by round", "consensus", "dissim.", "unparsed")
    print("{:>4} {:>5} {:>13} {:>18} {:>9} {:>8} {:>8}".format(*header))
    for r in rows:
        by_round = " ".join(f"{100 * a:.1f}" for a in r["accuracy_by_round"])
        accuracy = f"{100 * r['accuracy']:.1f} ± {100 * r['stderr']:.1f}"
        dissimilarity = r.get("embedding_dissimilarity")
        print(
            f"{r['iteration']:>4} {r['n']:>5} {accuracy:>13} {by_round:>18} {r['consensus']:>9.2f} "
            f"{'-' if dissimilarity is None else f'{dissimilarity:.3f}':>8} {r['parse_failure_rate']:>8.2f}"
        )
    print(f"results in {run_dir}\n")
    return summary
