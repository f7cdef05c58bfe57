"""Generation behind one interface: (adapter name or None, conversation) -> text.

    preflight(cfg)                                       # the backend's start-up checks
    with make_backend(cfg, society, run_dir) as generator:   # cfg.generation.backend picks it
        texts = generator.generate([("gen0", messages), (None, other)], seed=0, desc="round 1")
    generator.stats                                      # requests, new/prefilled tokens, cuts

None is the bare base model (iteration 0, the summariser). Backends, one module each:
    batched our batched decoder on the in-process model (default; batched.py)
    hf      Hugging Face's model.generate on the same model, for any causal LM (hf.py)
    vllm    vLLM's engine, one per process, serving the base and every adapter (vllm.py)
    openai  any OpenAI-compatible chat-completions endpoint; generation only (openai.py)
Nothing outside this package depends on which backend runs: each answers its own start-up
checks (`Backend.preflight`) and is made by `make_backend`.
"""

from __future__ import annotations

from pathlib import Path

from mfsi.generation.batched import BatchedBackend
from mfsi.generation.common import Backend, LocalBackend, ReasoningBudget, Request, Stats
from mfsi.generation.hf import HFBackend
from mfsi.generation.openai import OpenAIBackend
from mfsi.generation.vllm import VllmBackend

BACKENDS = {"batched": BatchedBackend, "hf": HFBackend, "vllm": VllmBackend, "openai": OpenAIBackend}

__all__ = [
    "BACKENDS",
    "Backend",
    "BatchedBackend",
    "HFBackend",
    "LocalBackend",
    "OpenAIBackend",
    "ReasoningBudget",
    "Request",
    "Stats",
    "VllmBackend",
    "generates_locally",
    "make_backend",
    "preflight",
]


def preflight(cfg) -> None:
    """The configured backend's start-up checks (cfg: the whole run config): ConfigError when it
    cannot serve this run, in seconds, before the run directory is touched."""
    BACKENDS[cfg.generation.backend].preflight(cfg)


def generates_locally(cfg) -> bool:
    """Whether the configured backend generates with the model's weights loaded by this process
    (every backend but openai, whose endpoint holds the model)."""
    return issubclass(BACKENDS[cfg.generation.backend], LocalBackend)


def make_backend(cfg, society, run_dir: Path | None = None) -> Backend:
    """The configured backend (cfg: the whole run config) over the society's current model
    and adapters; run_dir is where the run keeps its files (the openai backend's cache)."""
    return BACKENDS[cfg.generation.backend].create(cfg, society, run_dir)
