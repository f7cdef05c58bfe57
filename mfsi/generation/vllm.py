"""generation.backend=vllm: vLLM's engine with multi-LoRA, started once per process.

    with make_backend(cfg, society) as generator:   # starts the engine, or wakes it up
        texts = generator.generate([("gen0", messages), (None, other)], seed=0)
                                                    # leaving the block puts it to sleep

The engine holds the base model once and serves every adapter from the folder the society
loaded it from (`Society.folders`), as a LoRA request per prompt; None is the bare base
model. Prompts are rendered and cut by `LocalBackend` (the chat template and the cutting
stay ours) and handed over as token ids; texts are decoded with our tokenizer, so greedy
output is what the other backends write. Sampling: the temperature and top_p of the
config, a seed per request (`request_seeds`).

The loop opens a backend per stage; the engine outlives them (`Engine`), and between stages
(while Lightning trains) it does what generation.vllm_release says. It starts processes of
its own, so a script that uses it needs an `if __name__ == "__main__":` guard (run.py has one).
"""

from __future__ import annotations

import atexit
import gc
import importlib.util
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from mfsi.errors import ConfigError
from mfsi.generation.common import LocalBackend, Request, request_seeds
from mfsi.society import context_length, resolve

log = logging.getLogger(__name__)

LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the max_lora_rank values vLLM accepts


def check_setup(cfg) -> None:
    """What a run with this backend needs (cfg: the whole run config), checked before it starts:
    the values first, which are wrong on any machine."""
    if cfg.finetune.lora.r > LORA_RANKS[-1]:
        raise ConfigError(
            f"finetune.lora.r={cfg.finetune.lora.r} with generation.backend=vllm: expected at most "
            f"{LORA_RANKS[-1]}, the largest LoRA rank vLLM serves"
        )
    if importlib.util.find_spec("vllm") is None:
        raise ConfigError(
            "generation.backend=vllm: vLLM is not installed (`make setup` installs the build the "
            "machine runs, except with VLLM=none or on macOS: README, Set-up)"
        )


@dataclass(frozen=True)
class Engine:
    """What vLLM's engine is started with; the one engine of this process lives in `_running`."""

    model: str
    dtype: str
    quantization: str | None
    max_model_len: int
    max_loras: int
    max_lora_rank: int
    seed: int
    kv_cache_mb: int | None
    memory_utilization: float
    sleep_mode: bool  # able to sleep between stages (where vLLM can: CUDA)
    trust_remote_code: bool

    @staticmethod
    def of(cfg, context: int) -> Engine:
        """The engine a run needs (cfg: the whole run config): room for every agent's two
        adapters in one batch, at the rank the adapters are trained with."""
        from vllm.platforms import current_platform  # imported here: it takes seconds

        local = resolve(cfg.model.path)
        return Engine(
            model=str(local) if local else cfg.model.path,
            dtype=cfg.model.dtype,
            quantization={"none": None, "nf4": "bitsandbytes"}[cfg.model.quantization],
            max_model_len=context,
            max_loras=2 * max(cfg.agents, cfg.evaluation.agents or 0),
            max_lora_rank=min(r for r in LORA_RANKS if r >= cfg.finetune.lora.r),
            seed=cfg.seed,
            kv_cache_mb=cfg.generation.vllm_kv_cache_mb,
            memory_utilization=cfg.generation.vllm_memory_utilization,
            sleep_mode=cfg.generation.vllm_release == "sleep" and current_platform.is_sleep_mode_available(),
            trust_remote_code=cfg.model.trust_remote_code,
        )

    def start(self):
        """The running engine with these settings (vllm.LLM): started (an engine with other
        settings is shut down first), or woken up."""
        global _running, _asleep
        if _running and _running[0] != self:
            shutdown()
        if _running is None:
            from vllm import LLM
            from vllm.platforms import current_platform

            start = time.perf_counter()
            memory = (
                {"kv_cache_memory_bytes": self.kv_cache_mb * 2**20}
                if self.kv_cache_mb
                else {"gpu_memory_utilization": self.memory_utilization}
            )
            llm = LLM(
                model=self.model,
                dtype=self.dtype,
                quantization=self.quantization,
                max_model_len=self.max_model_len,
                seed=self.seed,
                enable_lora=True,
                max_loras=self.max_loras,
                max_lora_rank=self.max_lora_rank,
                trust_remote_code=self.trust_remote_code,
                enable_sleep_mode=self.sleep_mode,
                # The CPU sampler cannot rewind a request's seeded generator when the sample of a
                # partly prefilled prompt is discarded ("CPU Generator does not use offset"):
                # there prompts are prefilled whole.
                enable_chunked_prefill=not current_platform.is_cpu(),
                **memory,
            )
            _running, _asleep = (self, llm), False
            log.info("vLLM engine started in %.1f s: %s", time.perf_counter() - start, asdict(self))
        elif _asleep:
            start = time.perf_counter()
            _running[1].wake_up()
            _asleep = False
            log.info("vLLM engine woken up in %.1f s", time.perf_counter() - start)
        return _running[1]


_running: tuple[Engine, object] | None = None  # (settings, vllm.LLM)
_asleep = False


def release(how: str) -> None:
    """Free the running engine's memory for training, as generation.vllm_release says: sleep
    (level 1: weights to CPU memory, KV cache dropped; where the platform cannot, it keeps
    everything), shutdown (the next stage starts it again) or keep."""
    global _asleep
    if _running is None or _asleep or how == "keep":
        return
    if how == "shutdown":
        shutdown()
    elif _running[0].sleep_mode:
        start = time.perf_counter()
        _running[1].sleep(level=1)
        _asleep = True
        log.info("vLLM engine asleep after %.1f s", time.perf_counter() - start)


@atexit.register
def shutdown() -> None:
    """Stop the engine's processes and free its memory (the next stage starts a new one)."""
    global _running
    if _running is None:
        return
    start = time.perf_counter()
    llm = _running[1]
    _running = None
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()
    log.info("vLLM engine shut down in %.1f s", time.perf_counter() - start)


_lora_ids: dict[tuple[str, str, int, int], int] = {}  # adapter weights -> vLLM's id for them


def lora_request(name: str, folder: Path):
    """vLLM's request for the adapter in folder. vLLM keeps an adapter's weights by its id,
    so new weights under an old name (the next iteration's gen0) get a new id."""
    from vllm.lora.request import LoRARequest

    weights = next(Path(folder).glob("adapter_model.*"), None)
    if weights is None:
        raise ConfigError(f"{folder}: no adapter weights (adapter_model.safetensors) for {name}")
    stat = weights.stat()
    key = (name, str(Path(folder).resolve()), stat.st_mtime_ns, stat.st_size)
    lora_id = _lora_ids.setdefault(key, len(_lora_ids) + 1)
    return LoRARequest(name, lora_id, str(folder))


class VllmBackend(LocalBackend):
    """vLLM's engine for the requests; prompts as `LocalBackend` makes them (module doc)."""

    @classmethod
    def preflight(cls, cfg) -> None:
        super().preflight(cfg)
        check_setup(cfg)

    @classmethod
    def create(cls, cfg, society, run_dir: Path | None = None) -> VllmBackend:
        context = context_length(cfg.model, society.model)
        engine = Engine.of(cfg, context)
        return cls(society.model, society.tokenizer, cfg.generation, context, engine, dict(society.folders))

    def __init__(self, model, tokenizer, cfg, context_length: int, engine: Engine, folders: dict[str, Path]):
        from vllm.platforms import current_platform

        super().__init__(model, tokenizer, cfg, context_length)
        self.folders = folders
        self.llm = engine.start()
        self.base_apart = current_platform.is_cpu()  # see _calls

    def generate(self, requests: Sequence[Request], seed: int, desc: str = "generate") -> list[str]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=self._prompt(messages)) for _, messages in requests]
        self.rendered.clear()
        sampling = [
            SamplingParams(
                temperature=self.cfg.temperature,
                top_p=self.cfg.top_p if self.cfg.temperature > 0 else 1.0,
                max_tokens=self.cfg.max_new_tokens,
                stop_token_ids=self.eos_ids,
                seed=s,
                detokenize=False,  # decoded below, as the other backends decode
            )
            for s in request_seeds(seed, len(requests))
        ]
        loras = [self._lora(adapter) for adapter, _ in requests]
        outputs = [None] * len(requests)
        for indices in self._calls(loras):
            done = self.llm.generate(
                [prompts[i] for i in indices],
                [sampling[i] for i in indices],
                lora_request=[loras[i] for i in indices],
                use_tqdm=len(indices) > 1,
            )
            for i, out in zip(indices, done):
                outputs[i] = out
        texts = []
        for (adapter, _), prompt, out in zip(requests, prompts, outputs):
            tokens = list(out.outputs[0].token_ids)
            if (
                self.budget
                and len(tokens) > self.budget.tokens
                and self.budget.unfinished(torch.tensor([tokens]))[0]
            ):
                tokens = tokens[: self.budget.tokens]  # the engine ran on; as the other backends stop
            texts.append(self.tokenizer.decode(tokens, skip_special_tokens=True))
            cached = out.num_cached_tokens or 0  # prompt tokens vLLM's prefix cache held
            self.stats.new_tokens += len(tokens)
            self.stats.prefilled += len(prompt["prompt_token_ids"]) - cached
            self.stats.reused += cached
            self.stats.by_adapter[adapter or "__base__"] += 1
        self.stats.requests += len(requests)
        return texts

    def _calls(self, loras: list) -> list[list[int]]:
        """The requests of each engine call: all in one, or on a CPU those without an adapter
        apart from the others. vLLM's CPU LoRA ops give a row without an adapter the adapter
        in the last slot when both share a batch (seen in vLLM 0.32: the greedy test of
        tests/test_vllm.py fails without the split)."""
        everything = list(range(len(loras)))
        if not self.base_apart:
            return [everything]
        base = [i for i in everything if loras[i] is None]
        return [part for part in (base, [i for i in everything if loras[i] is not None]) if part]

    def _lora(self, adapter: str | None):
        if adapter is None:
            return None
        if adapter not in self.folders:
            raise ConfigError(
                f"adapter {adapter!r} has no saved folder: generation.backend=vllm serves adapters "
                "from the folders the society loaded or saved them to"
            )
        return lora_request(adapter, self.folders[adapter])

    def close(self) -> None:
        release(self.cfg.vllm_release)
