"""A fingerprint of the default debate and of the training tokens selected from it.

    python -m experiments.debate_fingerprint [--questions 32] [overrides ...]
    python -m experiments.debate_fingerprint generation.batch_size=8    # any Hydra override

Runs the default config's debate (the embedded model, 3 agents, 2 rounds) on the first
--questions eval questions, on one thread, twice: greedy (generation.temperature=0) and
sampled (the config's temperature and top_p), seeded as a run's iteration-0 eval debate.
For each it prints the SHA-1 of the JSON of the debate records, and of the encoded
training sequences (mfsi.training.encode: input ids and labels) of the examples that
mfsi.selection.select picks from them. A change meant to leave generation, selection and
the training layout alone must leave all four the same: run this before and after it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time

import torch
from hydra import compose, initialize_config_dir

from mfsi.chat import end_ids
from mfsi.config import register
from mfsi.debate import run_debate, seed_for
from mfsi.generation import make_backend
from mfsi.paths import ROOT
from mfsi.selection import select
from mfsi.society import Society, load_base, roles
from mfsi.tasks import load_task
from mfsi.training import encode


def sha1(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def fingerprint(cfg, society: Society) -> dict[str, str]:
    """SHA-1s of the debate records and of the training sequences selected from them."""
    task = load_task(cfg.task)
    with make_backend(cfg, society) as generator:
        records = run_debate(
            task,
            task.split("eval"),
            generator,
            roles(cfg.agents, cfg.method.shared, society.adapters),
            rounds=cfg.debate.rounds,
            summarize=cfg.debate.summarize,
            seed=seed_for(cfg.seed, 0, "eval"),
            style=cfg.debate.style,
            agent_ids=cfg.debate.agent_ids,
            share=cfg.debate.share,
        )
    datasets = select(
        records,
        cfg.method,
        agents=cfg.agents,
        task=task,
        seed=seed_for(cfg.seed, 1, "select"),
        critic_weight=cfg.finetune.critic_weight,
    )
    stop = end_ids(society.model, society.tokenizer)
    encoded = {
        name: [encode(society.tokenizer, example, stop) for example in examples]
        for name, examples in sorted(datasets.items())
    }
    return {
        "records": sha1(records),
        "training": sha1(encoded),
        "examples": str(sum(map(len, datasets.values()))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--questions", type=int, default=32, help="eval questions debated")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the default config")
    args = parser.parse_args()
    torch.set_num_threads(1)
    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        base = [f"task.n_eval={args.questions}", "logger=none", *args.overrides]
        configs = {
            "greedy": compose("config", overrides=[*base, "generation.temperature=0"]),
            "sampled": compose("config", overrides=base),
        }
    society = Society(*load_base(configs["greedy"].model))
    for name, cfg in configs.items():
        start = time.perf_counter()
        found = fingerprint(cfg, society)
        seconds = time.perf_counter() - start
        print(
            f"{name:>7}: records {found['records']}  training {found['training']}  "
            f"({found['examples']} examples, {seconds:.0f} s)"
        )


if __name__ == "__main__":
    main()
