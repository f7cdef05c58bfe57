"""GPU check: a random-weight model of a real 7-8B shape through the whole machinery.

    python -m experiments.gpu_check --out gpu_check.json            # one GPU, a few minutes
    python -m experiments.gpu_check --shape tiny --device cpu --dtype float32   # small, on a CPU

Builds offline a random-weight model of Llama-3-8B's shape (mfsi.testing.random_models: grouped-
query attention, the published chat template, the real 128256-token vocabulary) and, for
each precision in --quantizations (default: nf4, then none = --dtype), loads it as a run
does (model.path), adds 2N adapters (random, so that they differ), trains one with
Lightning, checks that the model is still on its device and that the base and every other
adapter are bit-identical, runs a short debate with adapters grouped by batch, then mixed
in one batch at --batch-size and at batch_size=auto, compares our decoder's greedy output
with Hugging Face's generate, and records memory and tokens/s. Prints one JSON object
(also written to --out) and exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from experiments.bench_debate import peak_rss_mb, reset_peak
from mfsi.config import FinetuneConfig, GenerationConfig, LoraConfig, ModelConfig, TaskConfig
from mfsi.debate import run_debate
from mfsi.generation import BACKENDS
from mfsi.society import DTYPES, Society, load_base, resolve_device, roles
from mfsi.tasks import load_task
from mfsi.testing.random_models import SHAPES, build
from mfsi.training import train_adapter

GB = 2**30


def memory(device: torch.device) -> dict[str, float]:
    """GiB in use now and at peak since the last reset (the GPU's, or the process's RSS)."""
    if device.type == "cuda":
        return {
            "allocated_gb": round(torch.cuda.memory_allocated(device) / GB, 2),
            "reserved_gb": round(torch.cuda.memory_reserved(device) / GB, 2),
            "peak_allocated_gb": round(torch.cuda.max_memory_allocated(device) / GB, 2),
        }
    return {"peak_rss_gb": round(peak_rss_mb() / 1024, 2)}


def reset(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    else:
        reset_peak()


def timed(device: torch.device, work, *args, **kwargs):
    """(result, seconds) of work(*args, **kwargs), the device synchronised on both sides."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = work(*args, **kwargs)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return result, round(time.perf_counter() - start, 2)


def check(args, folder: Path, quantization: str, device: torch.device) -> dict:
    """Load, train one adapter, debate and compare greedy outputs at one precision."""
    reset(device)
    cfg = ModelConfig(
        name="hf", path=str(folder), dtype=args.dtype, quantization=quantization, device=str(device)
    )
    society, seconds = timed(device, lambda: Society(*load_base(OmegaConf.structured(cfg))))
    model, tokenizer = society.model, society.tokenizer
    out = {"load_s": seconds}
    torch.manual_seed(0)
    names = [f"{role}{n}" for role in ("gen", "critic") for n in range(args.agents)]
    for name in names:
        society.add(name, OmegaConf.structured(LoraConfig()), init=False)  # random B: adapters differ
    out["loaded"] = {"adapters": len(names), **memory(device)}
    model = society.model

    task = load_task(OmegaConf.structured(TaskConfig(n_train=8, n_eval=args.questions, seed=0)))
    examples = [
        {
            "id": p.id,
            "messages": [*task.prompt(p), {"role": "assistant", "content": f"It is \\boxed{{{p.answer}}}."}],
            "loss_from_turn": 0,
        }
        for p in task.split("train")
    ]
    before = {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if ".gen0." not in n}
    reset(device)
    finetune = OmegaConf.structured(FinetuneConfig(epochs=1, batch_size=4))
    result, seconds = timed(
        device, lambda: train_adapter(model, tokenizer, "gen0", examples, finetune, seed=0)
    )
    params = dict(model.named_parameters())
    out["train"] = {
        "seconds": seconds,
        "steps": result["steps"],
        "on_device": all(p.device == device for p in params.values()),
        "others_bit_identical": all(torch.equal(params[n].detach().cpu(), p) for n, p in before.items()),
        "trained": result["steps"] > 0,
        **memory(device),
    }
    del before

    problems = task.split("eval")
    players = roles(args.agents, shared=False, trained=society.adapters)
    out["debate"] = {}
    # Grouped by adapter, a batch holds one adapter's questions; mixed, all requests: there
    # batch_size=auto (as many rows as fit the memory budget) is measured against --batch-size.
    ways = {
        "grouped": (False, args.batch_size),
        "mixed": (True, args.batch_size),
        "mixed_auto": (True, "auto"),
    }
    for way, (mixed, rows) in ways.items():
        gen = GenerationConfig(max_new_tokens=args.max_new_tokens, batch_size=rows, mixed_adapters=mixed)
        backend = BACKENDS[gen.backend](
            model, tokenizer, OmegaConf.structured(gen), context_length=args.context_length
        )
        reset(device)
        _, seconds = timed(device, run_debate, task, problems, backend, players, args.rounds, False, seed=0)
        out["debate"][way] = {
            "seconds": seconds,
            "new_tokens": backend.stats.new_tokens,
            "tokens_per_s": round(backend.stats.new_tokens / seconds, 1),
            "largest_batch": backend.stats.largest_batch,
            "peak_kv_cache_gb": round(backend.stats.peak_cache_bytes / GB, 3),
            **memory(device),
        }

    requests = [(names[i % len(names)], task.prompt(p)) for i, p in enumerate(problems[: args.greedy_rows])]
    texts = {}
    for name in ("batched", "hf"):
        gen = GenerationConfig(
            temperature=0.0,
            max_new_tokens=args.max_new_tokens,
            batch_size=len(requests),
            mixed_adapters=True,
            backend=name,
        )
        backend = BACKENDS[name](
            model, tokenizer, OmegaConf.structured(gen), context_length=args.context_length
        )
        texts[name], seconds = timed(device, backend.generate, requests, seed=0)
        out[f"greedy_{name}_s"] = seconds
    out["greedy"] = {
        "rows": len(requests),
        "identical": sum(a == b for a, b in zip(texts["batched"], texts["hf"])),
    }
    out["ok"] = all(out["train"][k] for k in ("on_device", "others_bit_identical", "trained"))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", default="llama3", help="mfsi.testing.random_models.FAMILIES")
    parser.add_argument("--shape", default="8b", choices=sorted(SHAPES))
    parser.add_argument("--device", default="auto", help="model.device")
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    parser.add_argument("--quantizations", default="nf4,none", help="comma-separated: nf4, int8, none")
    parser.add_argument("--agents", type=int, default=3, help="N: the society has 2N adapters")
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--context-length", type=int, default=4096)
    parser.add_argument("--greedy-rows", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--workdir", default=None, help="where the model is saved (default: a temp dir)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        folder = Path(tmp) / f"{args.family}-{args.shape}"
        _, seconds = timed(
            device,
            lambda: build(
                args.family,
                folder,
                shape=SHAPES[args.shape],
                dtype=DTYPES[args.dtype],
                context=args.context_length,
                device=str(device),
            ),
        )
        report = {
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "config": vars(args),
            "build_s": seconds,
            "runs": {q: check(args, folder, q, device) for q in args.quantizations.split(",")},
        }
    report["ok"] = all(run["ok"] for run in report["runs"].values())
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
