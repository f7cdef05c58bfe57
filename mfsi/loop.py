"""The main job: what `python run.py ...` does in a Hydra run directory.

    run(cfg, run_dir)

Iteration 0 evaluates the base society (no adapters) on the eval split. Each iteration
l >= 1 then:
    debate the train split with the iteration l-1 society    iter_{l-1}/debate_train.jsonl
    (STaR only) rationalise wrong answers with a hint          iter_{l-1}/rationalisations.jsonl
    select each adapter's finetuning data                      iter_{l}/data/{adapter}.jsonl
    finetune every adapter on its own data                     iter_{l}/adapters/{adapter}/
    debate the eval split with the new society (metrics)       iter_{l}/debate_eval.jsonl
Methods that select no data (base, majority, debate) stop after iteration 0.

Start-up checks come first (mfsi.preflight), then the run directory's bookkeeping
(mfsi.resume): a rerun with the same run directory (`hydra.run.dir=<dir>`) skips the stages
that finished and redoes the rest with the same seeds; a config or data change that would
invalidate finished stages is refused. A lock keeps a second process out.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from pathlib import Path

import torch
from omegaconf import DictConfig

from mfsi import console, preflight, resume, rundir
from mfsi.chat import opens_reasoning
from mfsi.config import shape
from mfsi.debate import run_debate, seed_for
from mfsi.diversity import debate_diversity, load_embedder
from mfsi.errors import DataError
from mfsi.generation import generates_locally, make_backend
from mfsi.metrics import debate_metrics, table, unfinished_reasoning
from mfsi.plots import plot_iterations, plot_rounds
from mfsi.rundir import done_marker
from mfsi.selection import rationalisation_requests, select, sizes
from mfsi.society import Society, context_length, load_model, load_tokenizer, roles
from mfsi.tasks import Task, load_task
from mfsi.tracking import Tracker
from mfsi.training import train_adapter

log = logging.getLogger(__name__)


def run(cfg: DictConfig, run_dir: Path, launch: dict[str, str] | None = None) -> dict:
    """Run the configured experiment in run_dir (resuming it) and return its summary.
    launch: more files to record how this start was launched ({relative path: text}; run.py
    passes Hydra's .hydra/*.yaml), written with config.yaml once the run directory is accepted."""
    console.doing("start-up (checks, data, model)")
    preflight.check_config(cfg)
    run_dir = Path(run_dir)
    with rundir.lock(run_dir):
        changed = resume.check_resume(cfg, run_dir)
        task = load_task(cfg.task)
        eval_task = load_task(cfg.eval_task) if cfg.eval_task else task
        splits = resume.check_splits(task, eval_task, run_dir)
        started = resume.start_time(run_dir)
        society = load_society(cfg, task, started)
        # Only now, with every input checked, does the run directory get its first files.
        resume.record_splits(run_dir, splits)
        resume.record_config(cfg, run_dir, changed, launch)
        resume.record_start(run_dir, started)
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
    model.chat_template_kwargs and the run's start time as the date), checked before and
    after the weights load (mfsi.preflight); a society without local weights when an API
    generates (generation.backend=openai)."""
    if not generates_locally(cfg):
        agents = max(cfg.agents, cfg.evaluation.agents or 0)
        served = [f"{role}{n}" for n in range(agents) for role in ("gen", "critic")]
        return Society(None, None, served if cfg.generation.served_adapters else ())
    tokenizer = load_tokenizer(cfg.model, started)
    preflight.check_tokenizer(cfg, task, tokenizer)  # before the weights load
    society = Society(load_model(cfg.model, tokenizer), tokenizer)
    preflight.check_society(cfg, task, society)
    return society


def selection_stage(
    cfg: DictConfig, task: Task, society: Society, records: list[dict], run_dir: Path, iteration: int
) -> dict[str, list[dict]]:
    """Each adapter's finetuning set for this iteration, selected or reloaded."""
    folder = run_dir / f"iter_{iteration}" / "data"
    if resume.stage_done(folder):
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
    if not resume.stage_done(path):
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
        if not resume.stage_done(out):
            if not examples:
                if not previous.exists():
                    log.warning("%s: no data and no earlier weights: the base model plays it", name)
                    continue
                log.warning("%s: no data this iteration: keeps its iteration %d weights", name, iteration - 1)
                rundir.copy_folder(previous, out)
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
    if resume.stage_done(path):
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
    generator.stats.warn_cuts()
    stats = {
        **generator.stats.counts(),
        "unfinished_reasoning": unfinished_reasoning(records, generator.opens_reasoning),
        "seconds": round(time.time() - start, 2),
    }
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
    """The diversity metrics of this evaluation's debate (mfsi.diversity); the model-based
    ones are None without local weights (generation through an API)."""
    local = society.model is not None
    room = context_length(cfg.model, society.model) - cfg.generation.max_new_tokens if local else None
    batch = cfg.generation.batch_size
    return debate_diversity(
        records,
        load_embedder(cfg.evaluation.embedder),
        society.model,
        society.tokenizer,
        [g for g, _ in roles(agents, cfg.method.shared, society.adapters)],
        cfg.evaluation.diversity_questions,
        # Scoring batches as generation's; with auto, model_diversity's own: its logits over the
        # whole conversation are not what generation's memory budget counts.
        batch_size=None if batch == "auto" else batch,
        prompt_room=room,
    )


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
    print(table(rows))
    print(f"results in {run_dir}\n")
    return summary
