"""generation.backend=batched (the default): our batched decoder on the in-process model.

    generator = BatchedBackend(model, tokenizer, cfg.generation, context_length=1024)
    texts = generator.generate([("gen0", messages), (None, other)], seed=0)

Batching, adapters and prompts as in `LocalBackend`. The KV cache grows in chunks as rows
lengthen (`KVBuffer`); the prompt is prefilled in chunks, a prompt that recurs in the
batch with the same adapter only once, and a prompt that begins like a conversation of a
recent call (the next debate round) only from where it departs (`Prefixes`); finished
rows leave the batch (also a row past generation.max_reasoning_tokens still reasoning);
with lookup_tokens > 0 a step also checks tokens drafted by prompt lookup (`PromptLookup`).
Greedy, it writes what model.generate writes. It needs sdpa attention over the whole
context (see `unsupported`); generation.backend=hf drives any model.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from mfsi.errors import ConfigError
from mfsi.generation.common import LocalBackend, Request, adapter_kwargs


def decode_attention(module, query, key, value, attention_mask, scaling: float | None = None, **kwargs):
    """sdpa, except for one query position per row (a decode step) under a boolean mask in
    fp32: there two plain matmuls over the cache, about 30% faster than sdpa's kernels on the
    CPU. In bf16/fp16 the matmuls would round the scores to the input dtype before the
    softmax (twice sdpa's error at realistic score sizes), while sdpa keeps them in fp32."""
    step = query.shape[2] == 1 and attention_mask is not None and attention_mask.dtype == torch.bool
    if not step or query.dtype != torch.float32:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
    batch, heads, _, dim = query.shape
    # Grouped-query attention: each key/value head serves heads // kv_heads query heads.
    query = query.view(batch, key.shape[1], heads // key.shape[1], dim)
    scores = (query @ key.transpose(-1, -2)) * (scaling or dim**-0.5)
    scores = scores.masked_fill(~attention_mask, float("-inf"))  # mask [batch, 1, 1, positions]
    out = scores.softmax(-1) @ value
    return out.view(batch, heads, 1, dim).transpose(1, 2), None


AttentionInterface.register("batched", decode_attention)


@contextmanager
def attention(model, implementation: str) -> Iterator[None]:
    """Run the model with another registered attention implementation, then restore it."""
    config = model.config
    previous, config._attn_implementation = config._attn_implementation, implementation
    try:
        yield
    finally:
        config._attn_implementation = previous


class BatchedBackend(LocalBackend):
    """Our decode loop over the in-process (PEFT) model; see the module doc."""

    @staticmethod
    def unsupported(config, context_length: int) -> str | None:
        """Our decoder needs sdpa attention and full attention over the context (its masks know
        no sliding window)."""
        if config._attn_implementation != "sdpa":
            return f"attention {config._attn_implementation}, not sdpa"
        window = (
            getattr(config, "sliding_window", None) if getattr(config, "use_sliding_window", True) else None
        )
        if window and window < context_length:
            return f"sliding window {window} < model.context_length {context_length}"
        return None

    def __init__(self, model, tokenizer, cfg, context_length: int):
        super().__init__(model, tokenizer, cfg, context_length)
        problem = self.unsupported(model.config, context_length)
        if problem:
            raise ConfigError(
                f"generation.backend=batched cannot drive this model ({problem}): set generation.backend=hf"
            )
        self.prefixes = Prefixes(cfg.prefix_cache_mb)
        self.prefill_chunk = cfg.prefill_chunk

    def generate(self, requests: Sequence[Request], seed: int, desc: str = "generate") -> list[str]:
        texts = super().generate(requests, seed, desc)
        self.prefixes.roll()  # this call's conversations are what the next calls can extend
        return texts

    def close(self) -> None:
        self.prefixes.clear()

    def _decode(
        self, input_ids, real, names: list[str] | None, rows: list[tuple[str, list[int]]]
    ) -> torch.Tensor:
        """Our decode loop: new token ids [batch, max_new_tokens], pad after the end.

        The KV cache is written in place (no per-token copy) and grows by
        generation.cache_growth positions when a row needs more; the prompts are prefilled
        (`_prefill`), then each step feeds every row its last token (and, with
        generation.lookup_tokens, drafted ones: `_step`) and keeps what sampling agrees with
        (`_accept`). Finished rows are dropped from the batch once a quarter of it is done,
        their conversations given to the prefix store. `rows` are the batch's (adapter,
        prompt ids), the prefix store's keys.
        """
        batch, width = input_ids.shape
        device, limit = input_ids.device, self.cfg.max_new_tokens
        eos = torch.tensor(self.eos_ids, device=device)
        drafter = PromptLookup(self.cfg.lookup_tokens, self.cfg.lookup_ngram, self.cfg.lookup_min_keep)
        visible = torch.zeros(batch, width + limit + drafter.tokens, dtype=torch.bool, device=device)
        visible[:, :width] = real.bool()
        shift = width - real.sum(-1)  # left padding: a row's position is its column - shift
        cache, logits = self._prefill(input_ids, visible, shift, names, rows)
        new = torch.full((batch, limit), self.tokenizer.pad_token_id, device=device)
        token = self._sample(logits)
        new[:, 0] = token
        length = torch.ones(batch, dtype=torch.long, device=device)
        done = torch.isin(token, eos) | (length >= limit) | self._over_budget(new, length)
        state = Decoding(torch.arange(batch, device=device), token, length, shift, visible, names, done)
        while not state.done.all():
            if state.done.sum() * 4 >= len(state.active):  # drop finished rows: copying the cache costs less
                self._store(cache, state.active, state.done, rows, new, width, eos)
                order = compaction(state.done)
                state.keep(order)
                cache.reorder(order)
            drafts, sampled, columns = self._step(state, input_ids, new, cache, drafter)
            self._accept(state, drafts, sampled, columns, new, drafter, eos)
        self._store(cache, state.active, state.done, rows, new, width, eos)
        self.stats.peak_cache_bytes = max(self.stats.peak_cache_bytes, cache.peak)
        return new

    def _prefill(
        self, input_ids, visible, shift, names: list[str] | None, rows: list[tuple[str, list[int]]]
    ) -> tuple[KVBuffer, torch.Tensor]:
        """The KV cache holding the prompts and each row's next-token logits [batch, vocab].

        A prompt asked several times with the same adapter (every agent's round 1 while the
        agents share a model) is prefilled once and its keys and values copied; the positions
        that `self.prefixes` holds are placed, not recomputed; the rest is prefilled in chunks
        of generation.prefill_chunk positions (a big batch's activations then stay in the CPU
        cache).
        """
        batch, width = input_ids.shape
        device = input_ids.device
        position = (torch.arange(width, device=device) - shift[:, None]).clamp(min=0)
        first, copies = unique_rows(input_ids, names)
        cache = KVBuffer(
            len(first), batch, width + self.cfg.cache_growth, visible.shape[1], self.cfg.cache_growth
        )
        once = [names[i] for i in first.tolist()] if names is not None else None
        begin = width  # prefill from here: every row's part that the prefix store lacks
        for row, b in enumerate(first.tolist()):
            adapter, ids = rows[b]
            found = self.prefixes.find(adapter, ids)
            reused = found[1] if found else 0
            if found:
                cache.place(row, width - len(ids), *found)
            begin = min(begin, width - len(ids) + reused)
        # Prefilling starts at the same column for every row: a row's reused positions past it are recomputed.
        real = visible[:, :width]  # the prompt tokens, not padding
        self.stats.reused += int(real[first, :begin].sum())
        self.stats.prefilled += int(real[first, begin:].sum())
        cache.filled = begin
        for start in range(begin, width, self.cfg.prefill_chunk):
            end = min(start + self.cfg.prefill_chunk, width)
            causal = torch.arange(end, device=device) <= torch.arange(start, end, device=device)[:, None]
            mask = visible[first, None, None, :end] & causal
            logits = self._forward(input_ids[first, start:end], mask, position[first, start:end], cache, once)
        if len(first) < batch:
            cache.reorder(copies)
            logits = logits[copies]
        return cache, logits[:, -1]

    def _step(
        self, state: Decoding, input_ids, new, cache: KVBuffer, drafter: PromptLookup
    ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """One forward over every row: its last sampled token, then the tokens `drafter`
        drafts for it (prompt lookup), each at its own column; (drafts [rows, k] or None,
        a sample after each fed token [rows, 1 + k], the columns fed [rows, 1 + k])."""
        width, device = input_ids.shape[1], input_ids.device
        k = drafter.length()
        drafts = None
        if k:
            drafts = drafter.drafts(torch.cat([input_ids, new], 1)[state.active], width + state.length, k)
        steps = state.token[:, None]
        if drafts is not None:
            steps = torch.cat([steps, drafts.clamp(min=0)], 1)
        offsets = torch.arange(steps.shape[1], device=device)
        columns = width + state.length[:, None] - 1 + offsets
        fed = torch.arange(len(state.active), device=device)[:, None].expand_as(columns)
        state.visible[fed, columns] = True
        mask = state.visible[:, None, None, : int(columns.max()) + 1]
        if drafts is not None:  # causal among this step's own tokens
            mask = mask & (torch.arange(mask.shape[-1], device=device) <= columns[..., None])[:, None]
        if drafter.tokens:  # rows advance by different counts: each writes at its own column
            cache.columns = columns
        positions = columns - state.shift[:, None]
        logits = self._forward(steps, mask, positions, cache, state.names, keep=steps.shape[1])
        return drafts, self._sample(logits.flatten(0, 1)).view(steps.shape), columns

    def _accept(
        self,
        state: Decoding,
        drafts: torch.Tensor | None,
        sampled: torch.Tensor,
        columns: torch.Tensor,
        new: torch.Tensor,
        drafter: PromptLookup,
        eos: torch.Tensor,
    ) -> None:
        """Keep each row's drafts up to the first that the sample after its predecessor
        differs from, then that sample (exactly what sampling one token per step would draw),
        stopping at an end token or the length limit; write them into `new`, unmask their
        columns (a draft after the first disagreement is masked again) and advance the rows."""
        limit, device = self.cfg.max_new_tokens, sampled.device
        offsets = torch.arange(sampled.shape[1], device=device)
        agreed = torch.zeros_like(state.length)
        if drafts is not None:
            agreed = (sampled[:, :-1] == drafts).cumprod(-1).sum(-1)
        ended = torch.isin(sampled, eos) & (offsets <= agreed[:, None])
        count = torch.where(ended.any(-1), ended.int().argmax(-1), agreed) + 1
        count = torch.minimum(count, limit - state.length).masked_fill(state.done, 0)
        if drafts is not None:
            running = ~state.done
            drafter.update(drafts[running], agreed[running])
            self.stats.drafted += int((drafts[running] >= 0).sum())
            self.stats.accepted += int((count[running] - 1).sum())
        kept = offsets < count[:, None]
        fed = torch.arange(len(state.active), device=device)[:, None].expand_as(columns)
        state.visible[fed, columns] = kept
        batch_rows, at = state.active[:, None].expand_as(kept)[kept], (state.length[:, None] + offsets)[kept]
        new[batch_rows, at] = sampled[kept]
        state.length = state.length + count
        state.token = sampled.gather(-1, (count - 1).clamp(min=0)[:, None]).squeeze(-1)
        over = self._over_budget(new[state.active], state.length)
        state.done |= ended.any(-1) | (state.length >= limit) | over

    def _over_budget(self, new: torch.Tensor, length: torch.Tensor) -> torch.Tensor | bool:
        """Rows past generation.max_reasoning_tokens with their reasoning still open (`cut`
        then trims what a step's drafts wrote beyond it)."""
        if self.budget is None:
            return False
        return (length >= self.budget.tokens) & self.budget.unfinished(new)

    def _store(self, cache: KVBuffer, active, done, rows, new, width: int, eos: torch.Tensor) -> None:
        """Give the prefix store the conversations of the finished rows in the cache: prompt
        plus the answer tokens that were fed, up to its end token or its last sampled token
        (at the length limit), whose keys were never computed."""
        if not self.prefixes.limit:
            return
        for row in done.nonzero().flatten().tolist():
            b = int(active[row])
            end = torch.isin(new[b], eos).nonzero()
            answer = new[b, : int(end[0]) if len(end) else new.shape[1] - 1].tolist()
            adapter, ids = rows[b]
            self.prefixes.add(adapter, ids + answer, cache.row(row, width - len(ids), width + len(answer)))

    def _forward(self, input_ids, mask, position, cache: KVBuffer, names, keep: int = 1) -> torch.Tensor:
        """Next-token logits [batch, keep, vocab] at the last `keep` positions of input_ids,
        whose keys and values it writes: at cache.columns if set, else from cache.filled on."""
        with attention(self.model, "batched"):
            out = self.model(
                input_ids=input_ids,
                attention_mask=mask,
                position_ids=position,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=keep,
                **adapter_kwargs(names),
            )
        cache.advance(input_ids.shape[1])
        return out.logits.float()

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
class Decoding:
    """The rows of a batch still in the KV cache while it decodes: row p is batch row
    active[p], whose last sampled token (not yet in the cache) is token[p], after length[p]
    sampled tokens; shift[p] is its left padding (its position is its column - shift);
    visible[p, j]: its queries may attend to column j (not padding, written and kept; each
    also needs j <= its own column: causal); names[p] its adapter in a mixed batch."""

    active: torch.Tensor
    token: torch.Tensor
    length: torch.Tensor
    shift: torch.Tensor
    visible: torch.Tensor
    names: list[str] | None
    done: torch.Tensor

    def keep(self, order: torch.Tensor) -> None:
        """Keep the rows `order` (`compaction`: none of them done), in that order."""
        self.active, self.token, self.length, self.shift, self.visible = (
            x[order] for x in (self.active, self.token, self.length, self.shift, self.visible)
        )
        self.names = [self.names[i] for i in order.tolist()] if self.names is not None else None
        self.done = torch.zeros(len(self.active), dtype=torch.bool, device=self.active.device)


@dataclass
class Prefix:
    """Keys and values of one conversation, per layer [heads, positions, dim]."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.keys + self.values)


class Prefixes:
    """Keys and values of recent conversations (prompt + answer), for later prompts that begin
    the same way: the same agent's next debate round (while its generator and critic are one
    model) is prefilled only from where its prompt departs from its stored conversation.
    The match is the longest common prefix of tokens, not the whole conversation: a chat
    template may trim an answer, and an answer's text may tokenise otherwise than the tokens
    generated (the Llama-3 template does both). A call finds the conversations of the two
    calls before it (a debate round, its summaries, the next round), not its own. Within
    limit_mb, conversations already extended make room for new ones; with none left, a new
    one is not kept. limit_mb=0 turns it off."""

    def __init__(self, limit_mb: float):
        self.limit = limit_mb * 2**20
        self.call = 0
        self.entries: list[Stored] = []  # oldest first
        self.size = 0  # their bytes
        # adapter -> (the earlier calls' conversations, padded with -1 [n, longest]; their entries)
        self.index: dict[str, tuple[torch.Tensor, list[Stored]]] = {}

    def find(self, adapter: str, ids: list[int]) -> tuple[Prefix, int] | None:
        """The earlier conversation with the adapter that shares the longest prefix with ids,
        and that prefix's length (at most all of ids but the last token, which is prefilled
        for its logits); None if none shares a token."""
        if adapter not in self.index or len(ids) < 2:
            return None
        table, entries = self.index[adapter]
        n = min(table.shape[1], len(ids) - 1)
        shared = (table[:, :n] == torch.tensor(ids[:n])).cumprod(-1).sum(-1)
        shared[[e.prefix is None for e in entries]] = 0  # made room for newer ones
        best = int(shared.argmax())
        if not shared[best]:
            return None
        entries[best].extended = True
        return entries[best].prefix, int(shared[best])

    def add(self, adapter: str, ids: list[int], prefix: Prefix) -> None:
        while self.size + prefix.nbytes > self.limit:
            extended = next((e for e in self.entries if e.extended), None)
            if extended is None:
                return
            self.entries.remove(extended)
            self.size -= extended.prefix.nbytes
            extended.prefix = None  # frees its tensors; `index` may still list it
        self.entries.append(Stored(adapter, ids, prefix, self.call))
        self.size += prefix.nbytes

    def roll(self) -> None:
        """End of a call: its conversations become findable, those of three calls ago go."""
        self.call += 1
        self.entries = [e for e in self.entries if e.call >= self.call - 2]
        self.size = sum(e.prefix.nbytes for e in self.entries)
        by_adapter: dict[str, list[Stored]] = {}
        for entry in self.entries:
            by_adapter.setdefault(entry.adapter, []).append(entry)
        self.index = {}
        for adapter, entries in by_adapter.items():
            table = torch.full((len(entries), max(len(e.ids) for e in entries)), -1)
            for row, entry in enumerate(entries):
                table[row, : len(entry.ids)] = torch.tensor(entry.ids)
            self.index[adapter] = table, entries

    def clear(self) -> None:
        self.entries, self.index, self.size = [], {}, 0


@dataclass
class Stored:
    """A conversation in the prefix store: its tokens and keys/values (None once dropped)."""

    adapter: str
    ids: list[int]
    prefix: Prefix | None
    call: int
    extended: bool = False  # a later prompt has reused it


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


@dataclass
class PromptLookup:
    """Drafts for a decode step by prompt lookup (Saxena, 2023): a row's next tokens are
    guessed to be those that followed the latest earlier occurrence of its last `ngram`
    tokens in its context. Drafted token k is kept with probability ~alpha**k, alpha the
    share of drafts kept so far (from a prior of one kept, one missed); a step drafts the
    k-th token while alpha**k >= `min_keep`, up to `tokens` (0: never)."""

    tokens: int
    ngram: int
    min_keep: float
    kept: int = 1
    missed: int = 1

    def length(self) -> int:
        """How many tokens to draft this step."""
        if not self.tokens:
            return 0
        alpha = self.kept / (self.kept + self.missed)
        return max(0, min(self.tokens, int(math.log(self.min_keep) / math.log(alpha))))

    def drafts(self, context: torch.Tensor, ends: torch.Tensor, k: int) -> torch.Tensor:
        """Up to k drafts per row [rows, <= k] (-1: none) for rows whose tokens are
        context[b, :ends[b]]."""
        width, n = context.shape[1], self.ngram
        last = context.gather(1, (ends[:, None] - n + torch.arange(n, device=context.device)).clamp(min=0))
        starts = torch.arange(width - n + 1, device=context.device)
        # An earlier occurrence: one followed by at least one known token.
        seen = (context.unfold(1, n, 1) == last[:, None]).all(-1) & (starts + n < ends[:, None])
        at = torch.where(seen, starts, -1).amax(-1, keepdim=True) + n + torch.arange(k, device=context.device)
        drafts = context.gather(1, at.clamp(max=width - 1))
        drafts = drafts.masked_fill((at >= ends[:, None]) | ~seen.any(-1, keepdim=True), -1)
        return drafts[:, : int((drafts >= 0).sum(-1).max())]  # as long as the longest

    def update(self, drafts: torch.Tensor, kept: torch.Tensor) -> None:
        """Count the drafts kept per row and the rows that missed one of theirs."""
        self.kept += int(kept.sum())
        self.missed += int((kept < (drafts >= 0).sum(-1)).sum())


def compaction(done: torch.Tensor) -> torch.Tensor:
    """The rows to keep, as old row numbers for new positions 0..n-1: a row still running
    keeps its place unless it is past n, then it fills a finished row's place below n."""
    n = int((~done).sum())
    order = torch.arange(n, device=done.device)
    holes = done[:n].nonzero().flatten()
    order[holes] = (~done[n:]).nonzero().flatten() + n
    return order


class KVBuffer:
    """Keys and values per layer in tensors [rows, heads, capacity, dim] written in place;
    attention sees the filled part of the first `rows` rows. The model calls `update` per
    layer (transformers' cache protocol): a prefill chunk is written from column `filled`
    on, a decode step at each row's own `columns` [rows, positions]. Capacity starts at
    `columns` and grows by `growth` (at most to `most`) when a write needs more: the new
    tensors hold only the rows still running, and the filled columns are copied. Moving
    rows copies only filled columns: the rest is masked until written."""

    def __init__(self, rows: int, batch: int, columns: int, most: int, growth: int):
        self.rows, self.filled = rows, 0
        self.batch = batch  # rows allocated: `reorder` may grow `rows` up to it
        self.capacity, self.most, self.growth = min(columns, most), most, growth
        self.columns: torch.Tensor | None = None
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.peak = 0  # the most bytes the buffers held

    def _allocate(self, layer: int, like: torch.Tensor, end: int) -> None:
        """The layer's buffers, on first sight of its keys ([..., heads, positions, dim]), and
        room for `end` columns."""
        if layer == len(self.keys):
            shape = (self.batch, like.shape[-3], self.capacity, like.shape[-1])
            self.keys.append(like.new_zeros(shape))
            self.values.append(like.new_zeros(shape))
        elif end > self.keys[layer].shape[2]:
            if layer == 0:
                self.capacity = min(self.most, max(end, self.capacity + self.growth))
                self.batch = self.rows
            for buffers in (self.keys, self.values):
                old = buffers[layer]
                buffers[layer] = old.new_zeros(self.rows, old.shape[1], self.capacity, old.shape[3])
                buffers[layer][:, :, : self.filled] = old[: self.rows, :, : self.filled]
        else:
            return
        self.peak = max(self.peak, sum(t.nbytes for t in self.keys + self.values))

    def _end(self, positions: int) -> int:
        """The columns attention sees once `positions` more are written."""
        return self.filled + positions if self.columns is None else int(self.columns.max()) + 1

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer: int, *args, **kwargs):
        end = self._end(keys.shape[2])
        self._allocate(layer, keys, end)
        cached = self.keys[layer][: self.rows, :, :end], self.values[layer][: self.rows, :, :end]
        if self.columns is None:
            for buffer, new in zip(cached, (keys, values)):
                buffer[:, :, self.filled :] = new
        else:
            at = self.columns[:, None, :, None].expand_as(keys)
            for buffer, new in zip(cached, (keys, values)):
                buffer.scatter_(2, at, new)
        return cached

    def advance(self, positions: int) -> None:
        """After a forward: `positions` more were written (at `columns`, if set)."""
        self.filled = max(self.filled, self._end(positions))
        self.columns = None

    def place(self, row: int, start: int, prefix: Prefix, length: int) -> None:
        """Write a stored prefix's first `length` positions into one row from position `start`
        on (before prefilling)."""
        for layer, (keys, values) in enumerate(zip(prefix.keys, prefix.values)):
            self._allocate(layer, keys, start + length)
            self.keys[layer][row, :, start : start + length] = keys[:, :length]
            self.values[layer][row, :, start : start + length] = values[:, :length]

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
