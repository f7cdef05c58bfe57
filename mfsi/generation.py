"""Batched generation behind one interface: (adapter or None, conversation) -> text.

    backend = HFBackend(model, tokenizer, cfg.generation, context_length=1024)
    texts = backend.generate([("gen0", messages), (None, other)], seed=0)

Requests are grouped by adapter (None = the bare base model), sorted by prompt length to
limit padding, left-padded and generated with the KV cache. With mixed_adapters=True a
batch spans adapters through PEFT's `adapter_names` instead; cache="static" preallocates
the KV cache (same output; on CPU it avoids re-copying a big batch's cache at every
token). A prompt that does not fit the context with max_new_tokens is cut from the left
and counted in `stats`.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from mfsi.chat import Message, render
from mfsi.errors import ConfigError

log = logging.getLogger(__name__)

Request = tuple[str | None, list[Message]]
BASE = "__base__"  # PEFT's name for "no adapter" in mixed batches


@dataclass
class Stats:
    requests: int = 0
    new_tokens: int = 0
    truncated: int = 0
    by_adapter: dict[str, int] = field(default_factory=lambda: defaultdict(int))


class HFBackend:
    """Generation with a (PEFT-wrapped) Hugging Face causal LM."""

    def __init__(self, model, tokenizer, cfg, context_length: int):
        self.model, self.tokenizer, self.cfg = model, tokenizer, cfg
        self.context_length = context_length
        if cfg.max_new_tokens >= context_length:
            raise ConfigError(
                f"generation.max_new_tokens={cfg.max_new_tokens} leaves no room for the prompt in "
                f"model.context_length={context_length}: expected max_new_tokens < context_length"
            )
        self.stats = Stats()
        eos = model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        self.eos_ids = sorted(set(eos) | {tokenizer.eos_token_id} - {None})

    def generate(self, requests: Sequence[Request], seed: int, desc: str = "generate") -> list[str]:
        """Texts in the order of requests; sampling is seeded per call."""
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
            for i, text in zip(indices, self._batch(adapter, [prompts[i] for i in indices], names)):
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
    def _batch(self, adapter: str | None, prompts: list[list[int]], names: list[str] | None) -> list[str]:
        width = max(map(len, prompts))
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        kwargs = dict(
            input_ids=input_ids.to(self.model.device),
            attention_mask=attention.to(self.model.device),
            max_new_tokens=self.cfg.max_new_tokens,
            do_sample=self.cfg.temperature > 0,
            eos_token_id=self.eos_ids,
            pad_token_id=pad,
        )
        if self.cfg.cache != "dynamic":
            kwargs["cache_implementation"] = self.cfg.cache
        if self.cfg.temperature > 0:
            kwargs.update(temperature=self.cfg.temperature, top_p=self.cfg.top_p, top_k=0)
        if names is not None:
            out = self.model.generate(**kwargs, adapter_names=names)
        elif adapter is None and hasattr(self.model, "disable_adapter"):
            with self.model.disable_adapter():
                out = self.model.generate(**kwargs)
        else:
            if adapter is not None:
                self.model.set_adapter(adapter)
            out = self.model.generate(**kwargs)
        new = out[:, width:]
        lengths = (new != pad).sum(dim=1)
        self.stats.new_tokens += int(lengths.sum())
        self.stats.by_adapter[adapter or BASE] += len(prompts)
        return self.tokenizer.batch_decode(new, skip_special_tokens=True)
