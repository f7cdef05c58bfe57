"""What every generation backend shares: the request type, the counters, the interface, and
the batching of an in-process (PEFT) model that the `batched` and `hf` backends both drive."""

from __future__ import annotations

import json
import logging
import zlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import torch
from tqdm.auto import tqdm

from mfsi.chat import THINK, THINK_END, Message, cut_prompt, end_ids, opens_reasoning, pad, prompt_ids
from mfsi.errors import ConfigError
from mfsi.fitting import Piece, fit
from mfsi.society import context_length, model_config

log = logging.getLogger(__name__)

Request = tuple[str | None, list[Message]]  # (adapter name, None = the bare base model; conversation)
BASE = "__base__"  # PEFT's name for "no adapter" in mixed batches


@dataclass
class Stats:
    requests: int = 0
    new_tokens: int = 0
    cut: int = 0  # prompts whose pieces were cut to fit the context (`Backend.fit`)
    cut_tokens: int = 0  # tokens those cuts took out
    truncated: int = 0  # prompts still too long, whose middle tokens the backend dropped
    prefilled: int = 0  # prompt tokens run through the model
    reused: int = 0  # prompt tokens whose keys and values came from an earlier call, not recomputed
    drafted: int = 0  # tokens fed as prompt-lookup drafts
    accepted: int = 0  # drafts kept: new tokens that needed no forward of their own
    by_adapter: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    largest_batch: int = 0  # rows
    peak_cache_bytes: int = 0  # the largest KV cache a batch held (batched backend)

    def counts(self) -> dict[str, int]:
        """What a run directory records of a stage's generation: the cuts, then the token counts."""
        return {
            "cut": self.cut,
            "cut_tokens": self.cut_tokens,
            "truncated": self.truncated,
            "requests": self.requests,
            **self.tokens(),
        }

    def warn_cuts(self) -> None:
        """Warn about the prompts that lost tokens to fit the context."""
        if self.cut:
            log.warning(
                "%d prompts were too long for the context: %d tokens from the middles of other agents' "
                "answers (or summaries) and then of their own earlier answers were cut",
                self.cut,
                self.cut_tokens,
            )
        if self.truncated:
            log.warning("%d prompts were still too long and lost tokens from their middle", self.truncated)

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
    """The interface: texts for requests, counters in `stats`, `fit` to cut a conversation
    built from pieces to the context, and `close()` to free what the backend holds (also as
    a context manager: `with make_backend(cfg, society) as g: ...`).

    A backend that can count a prompt's tokens sets `room` (the tokens a prompt may take:
    the context less max_new_tokens) and implements `count`; one that cannot leaves room
    None, and conversations are sent whole. `opens_reasoning`: the chat template's
    generation prompt opens a reasoning block, so responses start inside it (mfsi.chat)."""

    stats: Stats
    room: int | None = None
    opens_reasoning: bool = False

    @classmethod
    def preflight(cls, cfg) -> None:
        """What this backend needs of a run (cfg: the whole run config), checked at start-up in
        seconds, before the run directory is touched: ConfigError when it cannot serve it."""

    @classmethod
    def create(cls, cfg, society, run_dir: Path | None = None) -> Backend:
        """The backend a run asks for (cfg: the whole run config) over the society's current
        model and adapters; run_dir is where the run keeps its files."""
        raise NotImplementedError

    def generate(self, requests: Sequence[Request], seed: int, desc: str = "generate") -> list[str]:
        """One text per request, in order; sampling is seeded per call."""
        raise NotImplementedError

    def count(self, messages: list[Message]) -> int:
        """Tokens of the prompt these messages make (with the generation prompt)."""
        raise NotImplementedError

    def fit(self, pieces: Sequence[Piece]) -> list[Message]:
        """The conversation the pieces make, cut to `room` tokens as mfsi.fitting says; cuts
        are counted in `stats`."""
        if self.room is None:
            return [m for p in pieces for m in p.messages()]
        messages, cut = fit(pieces, self.count, self.room)
        if cut:
            self.stats.cut += 1
            self.stats.cut_tokens += cut
            log.debug("cut %d tokens from a prompt to fit %d", cut, self.room)
        return messages

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


def free_memory(device: torch.device) -> int:
    """Bytes new tensors can take: on a GPU the driver's free memory plus what torch's
    allocator holds unused; elsewhere the available RAM."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return psutil.virtual_memory().available


@dataclass(frozen=True)
class Footprint:
    """Bytes one batch row takes: per position in the KV cache (keys and values of every
    layer), per position prefilled in one forward (one layer's activations, the MLP's the
    largest), and once (its next-token distribution in fp32 with the probabilities, their
    sorted copy and order for top-p: ~24 bytes per vocabulary entry)."""

    cached: int
    prefilled: int
    sampled: int

    @staticmethod
    def of(model) -> Footprint:
        config = model.config.get_text_config()
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        mlp = getattr(config, "intermediate_size", None) or 4 * config.hidden_size
        size = model.get_input_embeddings().weight.element_size()
        return Footprint(
            cached=2 * config.num_hidden_layers * kv_heads * dim * size,
            prefilled=(3 * mlp + 4 * config.hidden_size) * size,
            sampled=24 * config.vocab_size,
        )

    def row(self, positions: int, prefilled: int) -> int:
        return self.cached * positions + self.prefilled * prefilled + self.sampled


def split(lengths: Sequence[int], rows: Callable[[int], int]) -> list[range]:
    """Consecutive batches of prompts sorted longest first: each takes rows(w) of them, at
    least one, w its first (longest) prompt's length, which every row is padded to."""
    batches, start = [], 0
    while start < len(lengths):
        end = min(len(lengths), start + max(1, rows(lengths[start])))
        batches.append(range(start, end))
        start = end
    return batches


def adapter_kwargs(names: list[str] | None) -> dict:
    """PEFT's per-row adapter argument for a mixed batch; nothing for a single adapter."""
    return {"adapter_names": names} if names is not None else {}


@dataclass(frozen=True)
class ReasoningBudget:
    """generation.max_reasoning_tokens, the same on every local backend: a response whose
    first `tokens` new tokens leave its reasoning open (it wrote <think>, or its prompt
    opened the block: `opened`, and no </think> followed) ends there, without an answer.
    Generation stops such a row early (batched: in its decode loop; hf: a stopping criterion;
    vllm: its rows run on) and `cut` makes every backend's output the same."""

    tokens: int
    think: int  # the token ids of <think> and </think>
    think_end: int
    opened: bool

    @staticmethod
    def of(tokenizer, tokens: int | None, opened: bool) -> ReasoningBudget | None:
        """The budget of generation.max_reasoning_tokens=tokens (None: no budget)."""
        if tokens is None:
            return None
        ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in (THINK, THINK_END)]
        if any(len(i) != 1 for i in ids):
            raise ConfigError(
                f"generation.max_reasoning_tokens={tokens}: the tokenizer of {tokenizer.name_or_path!r} has "
                f"no single {THINK} and {THINK_END} tokens, so reasoning cannot be told from the answer: "
                "expected a reasoning model (Qwen3, DeepSeek-R1 distills), or max_reasoning_tokens=null"
            )
        return ReasoningBudget(tokens, ids[0][0], ids[1][0], opened)

    def unfinished(self, new: torch.Tensor) -> torch.Tensor:
        """Per row of new token ids [rows, positions]: whether its first `tokens` leave the
        reasoning open."""
        first = new[:, : self.tokens]
        thinking = (first == self.think).any(-1) | self.opened
        return thinking & ~(first == self.think_end).any(-1)

    def cut(self, new: torch.Tensor, pad: int) -> torch.Tensor:
        """new with every row whose reasoning is still open after `tokens` cut there (padded)."""
        new = new.clone()
        new[self.unfinished(new), self.tokens :] = pad
        return new


class LocalBackend(Backend):
    """Generation with an in-process (PEFT-wrapped) Hugging Face causal LM.

    Requests are grouped by adapter (None = the bare base model), sorted by prompt length to
    limit padding, left-padded and decoded by `_decode` in batches of cfg.batch_size rows,
    or with batch_size=auto as many as `Footprint` says fit cfg.memory_fraction of the free
    memory. With cfg.mixed_adapters a batch spans adapters through PEFT's `adapter_names`
    instead. A prompt still too long for the context with max_new_tokens (`fit` cuts the
    debate's) loses its middle tokens, which keeps the system prompt and question at the
    start and the latest instruction at the end, and is counted in `stats`.
    """

    prefill_chunk: int | None = None  # prompt positions per forward; None: the whole prompt

    @classmethod
    def preflight(cls, cfg) -> None:
        """The context and the token budget against the model's config.json (not its weights),
        and whether this backend can drive the model (`unsupported`)."""
        config = model_config(cfg.model)
        limit = getattr(config.get_text_config(), "max_position_embeddings", None)
        context = cfg.model.context_length or limit
        if limit and context > limit:
            raise ConfigError(
                f"model.context_length={context}: expected at most {limit}, the max_position_embeddings "
                f"of {cfg.model.path}"
            )
        if context and cfg.generation.max_new_tokens >= context:
            raise ConfigError(
                f"generation.max_new_tokens={cfg.generation.max_new_tokens} leaves no room for the prompt "
                f"in the model's context of {context} tokens: expected max_new_tokens < context"
            )
        problem = context and config._attn_implementation and cls.unsupported(config, context)
        if problem:
            raise ConfigError(
                f"generation.backend={cfg.generation.backend} cannot drive this model ({problem}): set "
                "generation.backend=hf"
            )

    @staticmethod
    def unsupported(config, context_length: int) -> str | None:
        """Why this backend cannot drive a model of this config (transformers' config, with its
        attention implementation resolved) over context_length tokens, or None."""
        return None

    @classmethod
    def create(cls, cfg, society, run_dir: Path | None = None) -> LocalBackend:
        context = context_length(cfg.model, society.model)
        return cls(society.model, society.tokenizer, cfg.generation, context)

    def __init__(self, model, tokenizer, cfg, context_length: int):
        self.model, self.tokenizer, self.cfg = model, tokenizer, cfg
        self.context_length = context_length
        self.room = context_length - cfg.max_new_tokens
        self.rendered: dict[str, list[int]] = {}  # this call's prompts by their messages (JSON)
        if cfg.max_new_tokens >= context_length:
            raise ConfigError(
                f"generation.max_new_tokens={cfg.max_new_tokens} leaves no room for the prompt in "
                f"model.context_length={context_length}: expected max_new_tokens < context_length"
            )
        self.stats = Stats()
        self.eos_ids = end_ids(model, tokenizer)
        self.opens_reasoning = opens_reasoning(tokenizer)
        self.budget = ReasoningBudget.of(tokenizer, cfg.max_reasoning_tokens, self.opens_reasoning)

    def generate(self, requests: Sequence[Request], seed: int, desc: str = "generate") -> list[str]:
        torch.manual_seed(seed)
        prompts = [self._prompt(messages) for _, messages in requests]
        self.rendered.clear()
        groups: dict[str | None, list[int]] = defaultdict(list)
        for i, (adapter, _) in enumerate(requests):
            groups[None if self.cfg.mixed_adapters else adapter].append(i)
        rows = self._rows()
        batches = []
        for adapter, indices in groups.items():
            indices.sort(key=lambda i: -len(prompts[i]))
            for batch in split([len(prompts[i]) for i in indices], rows):
                batches.append((adapter, indices[batch.start : batch.stop]))
                self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
        texts: list[str] = [""] * len(requests)
        for adapter, indices in tqdm(batches, desc=desc, leave=False, disable=len(batches) < 2):
            names = [requests[i][0] or BASE for i in indices] if self.cfg.mixed_adapters else None
            batch = [(requests[i][0] or BASE, prompts[i]) for i in indices]
            for i, text in zip(indices, self._batch(adapter, batch, names)):
                texts[i] = text
        self.stats.requests += len(requests)
        return texts

    def _rows(self) -> Callable[[int], int]:
        """How many rows a batch whose longest prompt has w tokens takes: cfg.batch_size, or
        with auto as many as fit cfg.memory_fraction of the memory free now."""
        if self.cfg.batch_size != "auto":
            return lambda w: self.cfg.batch_size
        budget = self.cfg.memory_fraction * free_memory(self.model.device)
        footprint, chunk, new = Footprint.of(self.model), self.prefill_chunk, self.cfg.max_new_tokens
        return lambda w: int(budget // footprint.row(w + new, min(w, chunk or w)))

    def count(self, messages: list[Message]) -> int:
        return len(self._render(messages))

    def _render(self, messages: list[Message]) -> list[int]:
        """The prompt's token ids, rendered once per call (`fit` counts them first)."""
        key = json.dumps(messages)
        if key not in self.rendered:
            self.rendered[key] = prompt_ids(self.tokenizer, messages)
        return self.rendered[key]

    def _prompt(self, messages: list[Message]) -> list[int]:
        ids = self._render(messages)
        if len(ids) > self.room:
            self.stats.truncated += 1
            log.warning(
                "prompt of %d tokens: %d from its middle dropped to fit", len(ids), len(ids) - self.room
            )
            ids = cut_prompt({"input_ids": ids}, self.room)["input_ids"]
        return ids

    @torch.inference_mode()
    def _batch(
        self, adapter: str | None, batch: list[tuple[str, list[int]]], names: list[str] | None
    ) -> list[str]:
        """New texts for (adapter name or BASE, prompt ids) rows: one adapter, or `names` per row."""
        prompts = [ids for _, ids in batch]
        pad_id = self.tokenizer.pad_token_id
        input_ids = pad(prompts, pad_id, left=True).to(self.model.device)
        real = pad([[1] * len(p) for p in prompts], 0, left=True).to(self.model.device)
        if names is None and adapter is None and hasattr(self.model, "disable_adapter"):
            with self.model.disable_adapter():
                new = self._decode(input_ids, real, names, batch)
        else:
            if names is None and adapter is not None:
                self.model.set_adapter(adapter)
            new = self._decode(input_ids, real, names, batch)
        if self.budget:
            new = self.budget.cut(new, pad_id)
        self.stats.new_tokens += int((new != pad_id).sum())
        self.stats.by_adapter[adapter or BASE] += len(prompts)
        return self.tokenizer.batch_decode(new, skip_special_tokens=True)

    def _decode(
        self, input_ids, real, names: list[str] | None, rows: list[tuple[str, list[int]]]
    ) -> torch.Tensor:
        """New token ids [batch, <= max_new_tokens], pad after each row's end, for the left-padded
        prompts input_ids (real: 1 on prompt tokens); `rows` are the batch's (adapter, prompt ids)."""
        raise NotImplementedError
