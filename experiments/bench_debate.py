"""Benchmark: mfsi's batched debate against the official code's one-request-at-a-time loop.

    python -m experiments.bench_debate --model models/tiny-arith --questions 64 --agents 3 \
        --rounds 2 --out results.json
    python -m experiments.bench_debate --compare hf,vllm ...   # other backends side by side

The runs debate the same arithmetic questions with the same model, agents, rounds,
max_new_tokens and sampling settings, in this process: (a) run_debate batched over
questions x agents, with our decoder (or --backend hf); (b) the official pattern: one
question at a time, one agent at a time, batch size 1, Hugging Face's model.generate;
(c) each --compare backend as (a), at the same batch size (vLLM schedules its own batches;
its engine is started before the timed runs). Prints generated tokens/s of each, the
speed-ups, and the peak resident memory of each run (VmHWM of this process and the
processes it started, reset between runs where Linux allows). They run in turns,
--repeats times each, and each is reported by its median run: the first run of a process
pays one-time costs, and a shared machine's speed drifts between runs.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from dataclasses import replace
from pathlib import Path

import torch
from omegaconf import OmegaConf

from mfsi.config import Config, GenerationConfig, ModelConfig, TaskConfig
from mfsi.debate import run_debate
from mfsi.generation import BACKENDS, Backend
from mfsi.society import Society, load_base, roles
from mfsi.tasks import load_task


class OneAtATime:
    """The official pattern: every request alone, batch size 1."""

    def __init__(self, backend: Backend):
        self.backend = backend
        self.fit, self.opens_reasoning = backend.fit, backend.opens_reasoning

    def generate(self, requests, seed: int, desc: str = "") -> list[str]:
        return [self.backend.generate([r], seed=seed + i)[0] for i, r in enumerate(requests)]


class ByRound:
    """Wraps a backend to add up seconds and new tokens per debate round (the call's desc)."""

    def __init__(self, inner, stats):
        self.inner, self.stats = inner, stats
        self.fit, self.opens_reasoning = inner.fit, inner.opens_reasoning
        self.rounds: dict[str, dict] = {}

    def generate(self, requests, seed: int, desc: str = "") -> list[str]:
        tokens, start = self.stats.new_tokens, time.perf_counter()
        texts = self.inner.generate(requests, seed=seed, desc=desc)
        entry = self.rounds.setdefault(desc, {"seconds": 0.0, "new_tokens": 0})
        entry["seconds"] += time.perf_counter() - start
        entry["new_tokens"] += self.stats.new_tokens - tokens
        return texts


def process_tree(pid: str = "self") -> list[Path]:
    """/proc folders of a process and of every process it started (vLLM's engine), on Linux."""
    folder = Path("/proc") / pid
    children = []
    for task in folder.glob("task/*/children"):
        children += task.read_text().split()
    return [folder] + [p for child in children for p in process_tree(child)]


def peak_rss_mb() -> float:
    """Peak resident memory of this process and its children since the last reset (VmHWM),
    else of this process since it started."""
    try:
        peaks = [
            int(line.split()[1])
            for folder in process_tree()
            for line in (folder / "status").read_text().splitlines()
            if line.startswith("VmHWM:")
        ]
        return sum(peaks) / 1024
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak() -> None:
    try:
        for folder in process_tree():
            (folder / "clear_refs").write_text("5")  # Linux: resets VmHWM to the current RSS
    except OSError:
        pass


def bench(debate) -> dict:
    """One timed run of a debate."""
    reset_peak()
    start = time.perf_counter()
    timed = debate()
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "tokens_per_s": timed.stats.new_tokens / seconds,
        "peak_rss_mb": peak_rss_mb(),
        "peak_kv_cache_mb": timed.stats.peak_cache_bytes / 2**20,  # batched decoder
        "largest_batch": timed.stats.largest_batch,
        **timed.stats.tokens(),  # new, prefilled, reused (batched), drafted and kept (--lookup-tokens)
        "by_round": timed.rounds,
    }


def report(name: str, runs: list[dict]) -> dict:
    """The median run (by seconds) with every run's seconds, printed."""
    result = sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]
    result = {**result, "seconds_of_runs": [r["seconds"] for r in runs]}
    tokens, seconds = result["new_tokens"], result["seconds"]
    rate, peak = result["tokens_per_s"], result["peak_rss_mb"]
    each = ", ".join(f"{s:.1f}" for s in result["seconds_of_runs"])
    print(f"{name:>9}: {tokens} tokens in {seconds:.1f} s = {rate:.0f} tok/s, peak RSS {peak:.0f} MB")
    print(f"{'':>11}median of runs of {each} s")
    cache = f", KV cache peak {result['peak_kv_cache_mb']:.1f} MB" if result["peak_kv_cache_mb"] else ""
    print(f"{'':>11}largest batch {result['largest_batch']}{cache}")
    if result["prefilled_tokens"]:
        prefilled, reused = result["prefilled_tokens"], result["reused_tokens"]
        print(f"{'':>11}prompt tokens prefilled {prefilled}, reused {reused}")
    if result["drafted_tokens"]:
        print(f"{'':>11}drafted tokens {result['drafted_tokens']}, kept {result['accepted_tokens']}")
    for desc, r in result["by_round"].items():
        print(f"{'':>11}{desc}: {r['new_tokens']} tokens in {r['seconds']:.1f} s")
    return result


TINY = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "model" / "tiny.yaml")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/tiny-arith")
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--agents", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=TINY.generation.max_new_tokens)
    parser.add_argument("--batch-size", type=int, default=TINY.generation.batch_size)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--backend", default="batched", choices=["batched", "hf"], help="of the batched run")
    parser.add_argument("--compare", default="", help="more backends to run as the batched run: hf,vllm")
    parser.add_argument("--vllm-kv-cache-mb", type=int, default=TINY.generation.vllm_kv_cache_mb)
    parser.add_argument("--context-length", type=int, default=TINY.model.context_length)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="model weights")
    parser.add_argument(
        "--lookup-tokens", type=int, default=0, help="of the batched run: generation.lookup_tokens"
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs of each, in turns; median reported")
    parser.add_argument("--out", default="results.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, tokenizer = load_base(OmegaConf.structured(ModelConfig(path=args.model, dtype=args.dtype)))
    task = load_task(OmegaConf.structured(TaskConfig(n_train=0, n_eval=args.questions, seed=0)))
    problems = task.split("eval")
    gen = GenerationConfig(
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        temperature=args.temperature,
        backend=args.backend,
        lookup_tokens=args.lookup_tokens,
        vllm_kv_cache_mb=args.vllm_kv_cache_mb,
        vllm_release="keep",  # the engine stays up between the timed runs
    )
    agents = roles(args.agents, shared=False, trained=())
    society = Society(model, tokenizer)

    def make(generation: GenerationConfig) -> Backend:
        """The backend as a run makes it, for this model and these generation settings."""
        model_cfg = ModelConfig(path=args.model, dtype=args.dtype, context_length=args.context_length)
        cfg = OmegaConf.structured(Config(model=model_cfg, generation=generation, agents=args.agents))
        return BACKENDS[generation.backend].create(cfg, society)

    def debate(cfg: GenerationConfig, one_at_a_time: bool):
        def go() -> ByRound:
            backend = make(cfg)
            timed = ByRound(OneAtATime(backend) if one_at_a_time else backend, backend.stats)
            if one_at_a_time:  # the official loop: question by question, agent by agent
                for problem in problems:
                    run_debate(task, [problem], timed, agents, args.rounds, False, seed=0)
            else:
                run_debate(task, problems, timed, agents, args.rounds, False, seed=0)
            return timed

        return go

    # The official code calls Hugging Face's model.generate with its default (dynamic) cache.
    compared = [b for b in args.compare.split(",") if b]
    patterns = {
        "batched": debate(gen, one_at_a_time=False),
        **{name: debate(replace(gen, backend=name), one_at_a_time=False) for name in compared},
        "official": debate(replace(gen, batch_size=1, backend="hf", lookup_tokens=0), one_at_a_time=True),
    }
    for name in compared:  # engines start before the timing (vLLM: about a minute on a CPU)
        make(replace(gen, backend=name)).close()
    runs = [{name: bench(go) for name, go in patterns.items()} for _ in range(args.repeats)]
    results = {name: report(name, [r[name] for r in runs]) for name in patterns}
    speedups = {
        name: results[name]["tokens_per_s"] / results["official"]["tokens_per_s"] for name in patterns
    }
    for name in ["batched", *compared]:
        print(f"speed-up (tokens/s, {name} / official): {speedups[name]:.1f}x")
    results = {
        "config": vars(args),
        "torch_threads": torch.get_num_threads(),
        **results,
        "speedup": speedups["batched"],
        **({"speedup_of": speedups} if compared else {}),
    }
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
