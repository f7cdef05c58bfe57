"""Benchmark: one batched debate under several generation settings, side by side.

    python -m experiments.bench_settings --model models/tiny-arith --questions 32 \
        --max-new-tokens 1024 --set cache_growth=1024 --set cache_growth=256

Each --set is a comma-separated list of generation.* values over GenerationConfig with the
tiny model's batch size and max_new_tokens (conf/model/tiny.yaml) unless set. The settings
run in turns, --repeats times each, and each reports its median run (as in
experiments.bench_debate: tokens/s, peak RSS, the KV cache's peak, the largest batch) and
whether its texts equal the first setting's. `compare` does the same from Python for any
model and device.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch
from omegaconf import OmegaConf

from experiments.bench_debate import TINY, ByRound, bench, report
from mfsi.config import GenerationConfig, ModelConfig, TaskConfig
from mfsi.debate import run_debate
from mfsi.generation import BACKENDS
from mfsi.society import load_base, roles
from mfsi.tasks import load_task


def compare(
    model,
    tokenizer,
    settings: list[dict],
    base: GenerationConfig,
    context_length: int,
    questions: int = 32,
    agents: int = 3,
    rounds: int = 2,
    repeats: int = 3,
    summarize: bool = False,
) -> dict[str, dict]:
    """setting name -> its median run of one arithmetic debate (generation values over
    `base`), run in turns, with "same_texts": whether its responses equal the first's."""
    task = load_task(OmegaConf.structured(TaskConfig(n_train=0, n_eval=questions, seed=0)))
    players = roles(agents, shared=False, trained=())
    texts: dict[str, list] = {}

    def debate(name: str, cfg: GenerationConfig):
        def go() -> ByRound:
            backend = BACKENDS[cfg.backend](model, tokenizer, OmegaConf.structured(cfg), context_length)
            timed = ByRound(backend, backend.stats)
            records = run_debate(task, task.split("eval"), timed, players, rounds, summarize, seed=0)
            texts[name] = [r["responses"] for r in records]
            return timed

        return go

    names = [",".join(f"{k}={v}" for k, v in setting.items()) or "defaults" for setting in settings]
    debates = {name: debate(name, replace(base, **s)) for name, s in zip(names, settings)}
    runs = [{name: bench(go) for name, go in debates.items()} for _ in range(repeats)]
    results = {}
    for name in names:
        results[name] = {
            **report(name, [r[name] for r in runs]),
            "same_texts": texts[name] == texts[names[0]],
        }
        print(f"{'':>11}texts equal to {names[0]}'s: {results[name]['same_texts']}")
    return results


def setting(text: str) -> dict:
    """'cache_growth=256,batch_size=auto' -> {"cache_growth": 256, "batch_size": "auto"}."""
    return OmegaConf.to_container(OmegaConf.from_dotlist(text.split(",")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/tiny-arith")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--agents", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--summarize", action="store_true", help="the base model summarises the others")
    parser.add_argument("--max-new-tokens", type=int, default=TINY.generation.max_new_tokens)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--context-length", type=int, default=TINY.model.context_length)
    parser.add_argument("--set", action="append", type=setting, required=True, dest="settings")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="results.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_base(OmegaConf.structured(ModelConfig(path=args.model, dtype=args.dtype)))
    base = GenerationConfig(
        max_new_tokens=args.max_new_tokens,
        batch_size=TINY.generation.batch_size,
        temperature=args.temperature,
    )
    shape = {key: getattr(args, key) for key in ("questions", "agents", "rounds", "repeats", "summarize")}
    results = compare(model, tokenizer, args.settings, base, args.context_length, **shape)
    config = {**vars(args), "torch_threads": torch.get_num_threads()}
    Path(args.out).write_text(json.dumps({"config": config, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
