"""What every generation backend shares: the request type, the counters, the interface, and
the batching of an in-process (PEFT) model that the `mfsi` and `hf` backends both drive."""

from __future__ import annotations

import logging
import zlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mfsi.chat import Message, end_ids, render
from mfsi.errors import ConfigError
from mfsi.society import context_length

log = logging.getLogger(__name__)

Request = tuple[str | None, list[Message]]  # (adapter name, None = the bare base model; conversation)
BASE = "__base__"  # PEFT's name for "no adapter" in mixed batches


@dataclass
class Stats:
    requests: int = 0
    new_tokens: int = 0
    truncated: int = 0
    prefilled: int = 0  # prompt tokens run through the model
    reused: int = 0  # prompt tokens whose keys and values came from the previous call
    drafted: int = 0  # tokens fed as prompt-lookup drafts
    accepted: int = 0  # drafts kept: new tokens that needed no forward of their own
    by_adapter: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def tokens(self) -> dict[str, int]:
        """The token counts, named as run directories and the benchmark record them."""
        return {
            "new_tokens": self.new_tokens,
            "prefilled_tokens": self.prefilled,
            "reused_tokens": self.reused,
            "drafted_tokens": self.drafted,
            "accepted_tokens": self.accepted,
        }


class Backend:
    """The interface: texts for requests, counters in `stats`, and `close()` to free what the
    backend holds (also as a context manager: `with make_backend(cfg, society) as g: ...`)."""

    stats: Stats

    @classmethod
    def create(cls, cfg, society, run_dir: Path | None = None) -> Backend:
        """The backend a run asks for (cfg: the whole run config) over the society's current
        model and adapters; run_dir is where the run keeps its files."""
        raise NotImplementedError

    def generate(self, requests: Sequence[Request], seed: int, desc: str = "generate") -> list[str]:
        """One text per request, in order; sampling is seeded per call."""
        raise NotImplementedError

    def close(self) -> None:
        """Free what generation holds (caches, an engine's memory) before others need it."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def request_seeds(seed: int, count: int) -> list[int]:
    """A seed per request of a call seeded `seed`: a request's sample then does not depend on
    what else is in the batch (engines and APIs that take per-request seeds)."""
    return [zlib.crc32(f"{seed}/{i}".encode()) for i in range(count)]


def adapter_kwargs(names: list[str] | None) -> dict:
    """PEFT's per-row adapter argument for a mixed batch; nothing for a single adapter."""
    return {"adapter_names": names} if names is not None else {}


class LocalBackend(Backend):
    """Generation with an in-process (PEFT-wrapped) Hugging Face causal LM.

    Requests are grouped by adapter (None = the bare base model), sorted by prompt length to
    limit padding, left-padded and decoded by `_decode` in batches of cfg.batch_size. With
    cfg.mixed_adapters a batch spans adapters through PEFT's `adapter_names` instead. A
    prompt that does not fit the context with max_new_tokens is cut from the left and
    counted in `stats`.
    """

    @classmethod
    def create(cls, cfg, society, run_dir: Path | None = None) -> LocalBackend:
        context = context_length(cfg.model, society.model)
        return cls(society.model, society.tokenizer, cfg.generation, context)

    def __init__(self, model, tokenizer, cfg, context_length: int):
        self.model, self.tokenizer, self.cfg = model, tokenizer, cfg
        self.context_length = context_length
        if cfg.max_new_tokens >= context_length:
            raise ConfigError(
                f"generation.max_new_tokens={cfg.max_new_tokens} leaves no room for the prompt in "
                f"model.context_length={context_length}: expected max_new_tokens < context_length"
            )
        self.stats = Stats()
        self.eos_ids = end_ids(model, tokenizer)

    def generate(self, requests: Sequence[Request], seed: int, desc: str = "generate") -> list[str]:
        torch.manual_seed(seed)
        prompts = [self._prompt(messages) for _, messages in requests]
        groups: dict[str | None, list[int]] = defaultdict(list)
        for i, (adapter, _) in enumerate(requests):
            groups[None if self.cfg.mixed_adapters else adapter].append(i)
        batches = []
        for adapter, indices in groups.items():
            indices.sort(key=lambda i: -len(prompts[i]))
            size = self.cfg.batch_size
            batches += [(adapter, indices[k : k + size]) for k in range(0, len(indices), size)]
        texts: list[str] = [""] * len(requests)
        for adapter, indices in tqdm(batches, desc=desc, leave=False, disable=len(batches) < 2):
            names = [requests[i][0] or BASE for i in indices] if self.cfg.mixed_adapters else None
            batch = [(requests[i][0] or BASE, prompts[i]) for i in indices]
            for i, text in zip(indices, self._batch(adapter, batch, names)):
                texts[i] = text
        self.stats.requests += len(requests)
        return texts

    def _prompt(self, messages: list[Message]) -> list[int]:
        ids = render(self.tokenizer, messages, train=False)["input_ids"]
        room = self.context_length - self.cfg.max_new_tokens
        if len(ids) > room:
            self.stats.truncated += 1
            log.warning("prompt of %d tokens cut to the last %d to fit the context", len(ids), room)
            ids = ids[-room:]
        return ids

    @torch.inference_mode()
    def _batch(
        self, adapter: str | None, batch: list[tuple[str, list[int]]], names: list[str] | None
    ) -> list[str]:
        """New texts for (adapter name or BASE, prompt ids) rows: one adapter, or `names` per row."""
        prompts = [ids for _, ids in batch]
        width = max(map(len, prompts))
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self.model.device)
        real = torch.tensor(
            [[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.model.device
        )
        if names is None and adapter is None and hasattr(self.model, "disable_adapter"):
            with self.model.disable_adapter():
                new = self._decode(input_ids, real, names, batch)
        else:
            if names is None and adapter is not None:
                self.model.set_adapter(adapter)
            new = self._decode(input_ids, real, names, batch)
        self.stats.new_tokens += int((new != pad).sum())
        self.stats.by_adapter[adapter or BASE] += len(prompts)
        return self.tokenizer.batch_decode(new, skip_special_tokens=True)

    def _decode(
        self, input_ids, real, names: list[str] | None, rows: list[tuple[str, list[int]]]
    ) -> torch.Tensor:
        """New token ids [batch, <= max_new_tokens], pad after each row's end, for the left-padded
        prompts input_ids (real: 1 on prompt tokens); `rows` are the batch's (adapter, prompt ids)."""
        raise NotImplementedError
