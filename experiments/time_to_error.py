"""Time from `python run.py <bad value>` to its error, for each bad value checked up front.

    python -m experiments.time_to_error [--out time_to_error.json]

Each case runs the real CLI (default config, the tiny model, logger=none) in a fresh
temporary folder and must exit with status 2, print the expected message and leave no run
directory. Prints wall-clock seconds per case, Python start-up and imports included: Hydra's
own errors (an unknown option or key, a value of the wrong type, a run directory it cannot
create) and the values only the config decides fail before the heavy imports (torch,
transformers, Lightning); those that need the model's config.json or tokenizer, the embedder
or Lightning after them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SLIDING = "{sliding_window_model}"  # stands for the path of a model made by sliding_window_model()

CASES = [  # (overrides, what the message must say)
    ("generation.max_new_tokens=0", "generation.max_new_tokens=0: expected an integer >= 1"),
    ("generation.batch_size=0", "generation.batch_size=0: expected an integer >= 1"),
    ("generation.prefill_chunk=0", "generation.prefill_chunk=0: expected an integer >= 1"),
    ("finetune.epochs=0", "finetune.epochs=0: expected an integer >= 1"),
    ("finetune.batch_size=0", "finetune.batch_size=0: expected an integer >= 1"),
    ("finetune.lr=-1", "finetune.lr=-1.0: expected a number > 0"),
    ("finetune.lora.r=0", "finetune.lora.r=0: expected an integer >= 1"),
    ("finetune.lora.dropout=1", "finetune.lora.dropout=1.0: expected a number in [0, 1)"),
    ("task.levels=[0,6]", "task.levels=[0, 6]: expected a non-empty list of 1..5"),
    ("generation.lookup_tokens=4 generation.backend=hf", "lookup_tokens=4 with generation.backend=hf"),
    (
        "generation.max_new_tokens=1024",
        "max_new_tokens=1024 leaves no room for the prompt in the model's context of 1024 tokens",
    ),
    ("model.context_length=4096", "model.context_length=4096: expected at most 1024"),
    (f"model.path={SLIDING}", "sliding window 64 < model.context_length 1024"),
    ("evaluation.embedder=/nonexistent", "evaluation.embedder='/nonexistent': no such folder"),
    (
        "evaluation.embedder=nobody-xyz/no-embedder",
        "evaluation.embedder='nobody-xyz/no-embedder': no model config",
    ),
    ("finetune.trainer.precision=bogus", "Precision 'bogus' is invalid"),
    ("generation.backend=vllm finetune.lora.r=1024", "finetune.lora.r=1024 with generation.backend=vllm"),
    (
        "generation.backend=vllm model.quantization=int8",
        "model.quantization=int8 with generation.backend=vllm",
    ),
    ("model=gpt35", "finetuning through an API is not supported"),
    ("model=hf", "model.path has no value and the chosen preset needs one"),
    ("finetune.max_length=1", "finetune.max_length=1: every finetuning example would be skipped"),
    (
        "model=gpt35 method=debate generation.api_key_env=MFSI_NO_KEY",
        "'MFSI_NO_KEY': that environment variable",
    ),
]


HYDRA_CASES = [  # (overrides, message): Hydra's own errors, before the job starts
    ("agentz=3", "Key 'agentz' not in 'Config'"),
    ("task=bogus", "Could not find 'task/bogus'\n\nAvailable options in 'task':\n\tarithmetic"),
    ("agents=three", "Value 'three' of type 'str' could not be converted to Integer"),
    ("hydra.run.dir=/dev/null/run", "hydra.run.dir: cannot create or write /dev/null/run (Not a directory)"),
]


def sliding_window_model(path: Path) -> Path:
    """A random one-layer Mistral with the tiny model's tokenizer whose attention window (64)
    is shorter than the tiny context (1024): our decoder cannot drive it."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    from mfsi.testing.charlm import build_tokenizer

    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    config = MistralConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        sliding_window=64,
        pad_token_id=0,
    )
    MistralForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def time_case(overrides: list[str]) -> dict:
    """Run the CLI once in an empty folder: seconds, exit status, output, what it left there."""
    with tempfile.TemporaryDirectory() as cwd:
        start = time.time()
        out = subprocess.run(
            [sys.executable, str(ROOT / "run.py"), *overrides, "logger=none"],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        seconds = time.time() - start
        left = sorted(p.name for p in Path(cwd).iterdir())
    return {"seconds": round(seconds, 2), "status": out.returncode, "output": out.stdout, "left": left}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        model = sliding_window_model(Path(tmp) / "sliding")
        for overrides, message in HYDRA_CASES + CASES:
            result = time_case(overrides.replace(SLIDING, str(model)).split())
            ok = result["status"] == 2 and message in result["output"] and not result["left"]
            results.append({"overrides": overrides, "ok": ok, **result})
            print(f"{result['seconds']:6.1f} s  {'ok ' if ok else 'BAD'}  {overrides}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
