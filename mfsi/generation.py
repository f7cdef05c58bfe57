"""Batched generation behind one interface: (adapter or None, conversation) -> text.

    backend = HFBackend(model, tokenizer, cfg.generation, context_length=1024)
    texts = backend.generate([("gen0", messages), (None, other)], seed=0)

Requests are grouped by adapter (None = the bare base model), sorted by prompt length to
limit padding, left-padded and generated with a KV cache. With mixed_adapters=True a
batch spans adapters through PEFT's `adapter_names` instead. decoder="mfsi" (default) is
our own loop: the KV cache is allocated once; the prompt is prefilled in chunks, a prompt
that recurs in the batch with the same adapter only once, and a prompt that continues a
conversation of the previous call (the next debate round) only from where it departs
(`Prefixes`); finished rows leave the batch. decoder="hf" calls model.generate, for models
our loop cannot drive (see `unsupported`). A prompt that does not fit the context with
max_new_tokens is cut from the left and counted in `stats`.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial

import torch
from tqdm.auto import tqdm
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

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
    prefilled: int = 0  # prompt tokens run through the model
    reused: int = 0  # prompt tokens whose keys and values came from the previous call
    by_adapter: dict[str, int] = field(default_factory=lambda: defaultdict(int))


def unsupported(config, context_length: int) -> str | None:
    """Why our decoder cannot run a model, or None: it needs sdpa attention and full
    attention over the context (its masks know no sliding window)."""
    if config._attn_implementation != "sdpa":
        return f"attention {config._attn_implementation}, not sdpa"
    window = getattr(config, "sliding_window", None) if getattr(config, "use_sliding_window", True) else None
    if window and window < context_length:
        return f"sliding window {window} < model.context_length {context_length}"
    return None


def decode_attention(module, query, key, value, attention_mask, scaling: float | None = None, **kwargs):
    """sdpa, except for one query position per row (a decode step) under a boolean mask:
    there two plain matmuls over the cache, about 30% faster than sdpa's kernels on the CPU."""
    if query.shape[2] > 1 or attention_mask is None or attention_mask.dtype != torch.bool:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
    batch, heads, _, dim = query.shape
    # Grouped-query attention: each key/value head serves heads // kv_heads query heads.
    query = query.view(batch, key.shape[1], heads // key.shape[1], dim)
    scores = (query @ key.transpose(-1, -2)) * (scaling or dim**-0.5)
    scores = scores.masked_fill(~attention_mask, float("-inf"))  # mask [batch, 1, 1, positions]
    out = scores.softmax(-1) @ value
    return out.view(batch, heads, 1, dim).transpose(1, 2), None


AttentionInterface.register("mfsi", decode_attention)


@contextmanager
def attention(model, implementation: str) -> Iterator[None]:
    """Run the model with another registered attention implementation, then restore it."""
    config = model.config
    previous, config._attn_implementation = config._attn_implementation, implementation
    try:
        yield
    finally:
        config._attn_implementation = previous


def adapter_kwargs(names: list[str] | None) -> dict:
    """PEFT's per-row adapter argument for a mixed batch; nothing for a single adapter."""
    return {"adapter_names": names} if names is not None else {}


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
        problem = cfg.decoder == "mfsi" and unsupported(model.config, context_length)
        if problem:
            raise ConfigError(
                f"generation.decoder=mfsi cannot drive this model ({problem}): set generation.decoder=hf"
            )
        self.stats = Stats()
        eos = model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        self.eos_ids = sorted(set(eos) | {tokenizer.eos_token_id} - {None})
        self.prefixes = Prefixes(cfg.prefix_cache_mb if cfg.decoder == "mfsi" else 0, self.eos_ids)

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
            batch = [(requests[i][0] or BASE, prompts[i]) for i in indices]
            for i, text in zip(indices, self._batch(adapter, batch, names)):
                texts[i] = text
        self.prefixes.roll()
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
        if self.cfg.decoder == "hf":
            decode = self._hf_generate
        else:
            decode = partial(self._decode, rows=batch)
        if names is None and adapter is None and hasattr(self.model, "disable_adapter"):
            with self.model.disable_adapter():
                new = decode(input_ids, real, names)
        else:
            if names is None and adapter is not None:
                self.model.set_adapter(adapter)
            new = decode(input_ids, real, names)
        self.stats.new_tokens += int((new != pad).sum())
        self.stats.by_adapter[adapter or BASE] += len(prompts)
        return self.tokenizer.batch_decode(new, skip_special_tokens=True)

    def _hf_generate(self, input_ids, real, names: list[str] | None) -> torch.Tensor:
        """Hugging Face's model.generate (dynamic KV cache): works with any causal LM."""
        kwargs = adapter_kwargs(names)
        if self.cfg.temperature > 0:
            kwargs.update(temperature=self.cfg.temperature, top_p=self.cfg.top_p, top_k=0)
        out = self.model.generate(
            input_ids=input_ids,
            attention_mask=real,
            max_new_tokens=self.cfg.max_new_tokens,
            do_sample=self.cfg.temperature > 0,
            eos_token_id=self.eos_ids,
            pad_token_id=self.tokenizer.pad_token_id,
            **kwargs,
        )
        return out[:, input_ids.shape[1] :]

    def _decode(
        self, input_ids, real, names: list[str] | None, rows: list[tuple[str, list[int]]]
    ) -> torch.Tensor:
        """Our decode loop: new token ids [batch, max_new_tokens], pad after the end.

        The KV cache is preallocated (no per-token copy), the prompt is prefilled in chunks
        of generation.prefill_chunk positions (a big batch's activations then stay in the CPU
        cache), from the first position that `self.prefixes` does not already hold, and
        finished rows are dropped from the batch once a quarter of it is done. `rows` are the
        batch's (adapter, prompt ids), the prefix store's keys.
        """
        batch, width = input_ids.shape
        pad, device = self.tokenizer.pad_token_id, input_ids.device
        eos = torch.tensor(self.eos_ids, device=device)
        # visible[b, 0, 0, j]: row b's queries may attend to position j (not left padding,
        # already written); each query also needs j <= its own position (causal).
        visible = torch.zeros(batch, 1, 1, width + self.cfg.max_new_tokens, dtype=torch.bool, device=device)
        visible[:, 0, 0, :width] = real.bool()
        position = (real.cumsum(-1) - 1).clamp(min=0)
        # A prompt asked several times with the same adapter (every agent's round 1 while
        # the agents share a model) is prefilled once; its keys and values are then copied.
        first, copies = unique_rows(input_ids, names)
        cache = KVBuffer(len(first), width + self.cfg.max_new_tokens, batch)
        once = [names[i] for i in first.tolist()] if names is not None else None
        begin = width  # prefill from here: every row's part that the prefix store lacks
        for row, b in enumerate(first.tolist()):
            adapter, ids = rows[b]
            found = self.prefixes.find(adapter, ids)
            reused = found.length if found else 0
            if found:
                cache.place(row, width - len(ids), found)
            begin = min(begin, width - len(ids) + reused)
            self.stats.reused += reused
        self.stats.prefilled += int(real[first, begin:].sum())
        cache.filled = begin
        for start in range(begin, width, self.cfg.prefill_chunk):
            end = min(start + self.cfg.prefill_chunk, width)
            causal = torch.arange(end, device=device) <= torch.arange(start, end, device=device)[:, None]
            mask = visible[first, ..., :end] & causal
            logits = self._forward(input_ids[first, start:end], mask, position[first, start:end], cache, once)
        if len(first) < batch:
            cache.reorder(copies)
            logits = logits[copies]
        active = torch.arange(batch, device=device)  # the batch rows still generating
        position = position[:, -1:]
        done = torch.zeros(batch, dtype=torch.bool, device=device)
        new = torch.full((batch, self.cfg.max_new_tokens), pad, device=device)
        for t in range(self.cfg.max_new_tokens):
            token = self._sample(logits).masked_fill(done, pad)
            new[active, t] = token
            done |= torch.isin(token, eos)
            if done.all() or t == self.cfg.max_new_tokens - 1:
                break
            if done.sum() * 4 >= len(active):  # drop finished rows: copying the cache costs less
                self._store(cache, active, done, rows, new, width, eos)
                order = compaction(done)
                active, token, position, visible = (x[order] for x in (active, token, position, visible))
                names = [names[i] for i in order.tolist()] if names is not None else None
                cache.reorder(order)
                done = torch.zeros(len(active), dtype=torch.bool, device=device)
            visible[:, 0, 0, width + t] = True
            position = position + 1
            logits = self._forward(token[:, None], visible[..., : width + t + 1], position, cache, names)
        self._store(cache, active, done, rows, new, width, eos)
        return new

    def _store(self, cache: KVBuffer, active, done, rows, new, width: int, eos: torch.Tensor) -> None:
        """Give the prefix store the conversations of the finished rows in the cache: prompt
        plus answer up to (not including) its end token, whose keys were never computed."""
        if not self.prefixes.limit:
            return
        for row in done.nonzero().flatten().tolist():
            b = int(active[row])
            end = torch.isin(new[b], eos).nonzero()
            adapter, ids = rows[b]
            if len(end):
                answer = new[b, : int(end[0])]
                self.prefixes.add(
                    adapter, ids + answer.tolist(), cache.row(row, width - len(ids), width + len(answer))
                )

    def _forward(self, input_ids, mask, position, cache: KVBuffer, names) -> torch.Tensor:
        """Next-token logits [batch, vocab] after input_ids; writes their keys and values."""
        with attention(self.model, "mfsi"):
            out = self.model(
                input_ids=input_ids,
                attention_mask=mask,
                position_ids=position,
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
                **adapter_kwargs(names),
            )
        cache.filled += input_ids.shape[1]
        return out.logits[:, -1].float()

    def _sample(self, logits: torch.Tensor) -> torch.Tensor:
        """Greedy at temperature 0, else nucleus sampling (top_p) at the temperature."""
        if self.cfg.temperature == 0:
            return logits.argmax(-1)
        probs, order = torch.softmax(logits / self.cfg.temperature, -1).sort(-1, descending=True)
        # As transformers' top-p: drop a token once the likelier ones hold top_p; keep the first.
        drop = probs.cumsum(-1) - probs >= self.cfg.top_p
        drop[:, 0] = False
        probs[drop] = 0
        return order.gather(-1, torch.multinomial(probs, 1)).squeeze(-1)


@dataclass
class Prefix:
    """Keys and values of one conversation, per layer [heads, positions, dim]."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    @property
    def length(self) -> int:
        return self.keys[0].shape[1]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.keys + self.values)


class Prefixes:
    """The conversations one generate() call ended with (prompt + answer), with their keys and
    values, for the next call: a prompt that extends one of them with the same adapter (the
    same agent's next debate round while its generator and critic are one model) is then
    prefilled only from the end token on. Holds at most limit_mb per call; the call after
    next finds them gone. limit_mb=0 turns it off."""

    def __init__(self, limit_mb: float, eos_ids: list[int]):
        self.limit, self.eos = limit_mb * 2**20, set(eos_ids)
        self.previous: dict[tuple, Prefix] = {}
        self.current: dict[tuple, Prefix] = {}
        self.size = 0

    def find(self, adapter: str, ids: list[int]) -> Prefix | None:
        """The longest stored conversation that ids continue (ids[i] is its end token)."""
        for i in range(len(ids) - 1, 0, -1):
            if ids[i] in self.eos and (adapter, tuple(ids[:i])) in self.previous:
                return self.previous[adapter, tuple(ids[:i])]
        return None

    def add(self, adapter: str, ids: list[int], prefix: Prefix) -> None:
        if self.size + prefix.nbytes <= self.limit:
            self.current[adapter, tuple(ids)] = prefix
            self.size += prefix.nbytes

    def roll(self) -> None:
        """End of a call: its conversations become the ones the next call can extend."""
        self.previous, self.current, self.size = self.current, {}, 0


def unique_rows(input_ids: torch.Tensor, names: list[str] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(first, copies): the first row of each distinct (prompt, adapter) pair, in batch order,
    and for every row the position in `first` of its pair: input_ids[first][copies] == input_ids."""
    key = input_ids
    if names is not None:
        adapter = {name: i for i, name in enumerate(dict.fromkeys(names))}
        column = torch.tensor([adapter[n] for n in names], device=input_ids.device)
        key = torch.cat([column[:, None], input_ids], dim=1)
    distinct, copies = torch.unique(key, dim=0, return_inverse=True)
    rows = torch.arange(len(key), device=key.device)
    first = torch.full((len(distinct),), len(key), device=key.device).scatter_reduce(0, copies, rows, "amin")
    order = first.argsort()  # in batch order: without repeats, first is every row in place
    return first[order], order.argsort()[copies]


def compaction(done: torch.Tensor) -> torch.Tensor:
    """The rows to keep, as old row numbers for new positions 0..n-1: a row still running
    keeps its place unless it is past n, then it fills a finished row's place below n."""
    n = int((~done).sum())
    order = torch.arange(n, device=done.device)
    holes = done[:n].nonzero().flatten()
    order[holes] = (~done[n:]).nonzero().flatten() + n
    return order


class KVBuffer:
    """Keys and values per layer in tensors [batch, heads, capacity, dim] allocated once and
    written in place; attention sees the filled part of the first `rows` rows. The model
    calls `update` per layer (transformers' cache protocol); the decode loop advances
    `filled` after each forward. Moving rows copies only filled positions: the rest is
    masked until written."""

    def __init__(self, rows: int, capacity: int, batch: int):
        self.rows, self.capacity, self.filled = rows, capacity, 0
        self.batch = batch  # rows allocated: `reorder` may grow `rows` up to it
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    def _allocate(self, layer: int, like: torch.Tensor) -> None:
        """The layer's buffers, on first sight of its keys ([..., heads, positions, dim])."""
        if layer == len(self.keys):
            shape = (self.batch, like.shape[-3], self.capacity, like.shape[-1])
            self.keys.append(like.new_zeros(shape))
            self.values.append(like.new_zeros(shape))

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer: int, *args, **kwargs):
        self._allocate(layer, keys)
        end = self.filled + keys.shape[2]
        self.keys[layer][: self.rows, :, self.filled : end] = keys
        self.values[layer][: self.rows, :, self.filled : end] = values
        return self.keys[layer][: self.rows, :, :end], self.values[layer][: self.rows, :, :end]

    def place(self, row: int, start: int, prefix: Prefix) -> None:
        """Write a stored prefix into one row from position `start` on (before prefilling)."""
        for layer, (keys, values) in enumerate(zip(prefix.keys, prefix.values)):
            self._allocate(layer, keys)
            self.keys[layer][row, :, start : start + prefix.length] = keys
            self.values[layer][row, :, start : start + prefix.length] = values

    def row(self, row: int, start: int, end: int) -> Prefix:
        """A copy of one row's keys and values at positions [start, end)."""
        return Prefix(
            [k[row, :, start:end].clone() for k in self.keys],
            [v[row, :, start:end].clone() for v in self.values],
        )

    def reorder(self, order: torch.Tensor) -> None:
        """Row p becomes old row order[p] for p < len(order), len(order) <= batch: a repeated
        index copies a row (`unique_rows`' copies), a dropped one leaves (`compaction`).
        Only the rows that move are copied."""
        moved = (order != torch.arange(len(order), device=order.device)).nonzero().flatten()
        for buffer in self.keys + self.values:
            filled = buffer[:, :, : self.filled]
            filled.index_copy_(0, moved, filled.index_select(0, order[moved]))
        self.rows = len(order)
