"""Generation behind one interface: (adapter name or None, conversation) -> text.

    with make_backend(cfg, society) as generator:        # cfg.generation.backend picks it
        texts = generator.generate([("gen0", messages), (None, other)], seed=0, desc="round 1")
    generator.stats                                      # requests, new/prefilled tokens, cuts

None is the bare base model (iteration 0, the summariser). Backends, one module each:
    mfsi  our batched decoder on the in-process model (default; mfsi/generation/mfsi.py)
    hf    Hugging Face's model.generate on the same model, for any causal LM (hf.py)
Nothing outside this package depends on which backend runs.
"""

from __future__ import annotations

from mfsi.generation.common import Backend, Request, Stats
from mfsi.generation.hf import HFBackend
from mfsi.generation.mfsi import MfsiBackend
from mfsi.society import context_length

BACKENDS = {"mfsi": MfsiBackend, "hf": HFBackend}

__all__ = ["BACKENDS", "Backend", "HFBackend", "MfsiBackend", "Request", "Stats", "make_backend"]


def make_backend(cfg, society) -> Backend:
    """The configured backend (cfg: the whole run config) over the society's current model."""
    backend = BACKENDS[cfg.generation.backend]
    context = context_length(cfg.model, society.model)
    return backend(society.model, society.tokenizer, cfg.generation, context)
