"""Start-up checks: what would fail hours into a run, found in seconds before it starts.

    check_config(cfg)                       # before the run directory is touched
    check_tokenizer(cfg, task, tokenizer)   # before the weights load
    check_society(cfg, task, society)       # with the weights, before any debate

check_config reads the config, the installed versions, the model's config.json (not its
weights), the generation backend's needs, the embedder's config and Lightning's trainer
settings. Generation, training and the diversity metrics read conversations through the
chat template: a template that fails to render, a reasoning budget it cannot serve, or a
finetune.max_length no example fits stops the run before the weights load; prompts that
must lose most of their tokens to fit the context are warned about before the first debate.
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from mfsi import generation
from mfsi.chat import end_ids, opens_reasoning, prompt_ids
from mfsi.config import shape, validate
from mfsi.errors import ConfigError
from mfsi.generation import ReasoningBudget
from mfsi.selection import sample_examples
from mfsi.society import Society, check_preset, context_length, hf_config, resolve_device
from mfsi.tasks import Problem, Task
from mfsi.training import check_encodable, check_trainer
from mfsi.versions import check_versions

log = logging.getLogger(__name__)


def finetunes(cfg: DictConfig) -> bool:
    """Whether the run trains adapters (a method that selects data, and iterations)."""
    return cfg.method.selection != "none" and cfg.iterations > 0


def check_config(cfg: DictConfig) -> None:
    """The checks that read the installed versions, the config, the model's config.json (not
    its weights), the generation backend's needs, the embedder's and Lightning's settings:
    seconds, before the run directory is touched."""
    check_versions()
    validate(cfg)
    generation.preflight(cfg)  # the context against the model's config.json, what the backend needs
    if cfg.evaluation.diversity and cfg.evaluation.embedder:
        hf_config(cfg.evaluation.embedder, "evaluation.embedder")
    if finetunes(cfg):
        check_trainer(cfg.finetune.trainer, resolve_device(cfg.model.device))


def check_tokenizer(cfg: DictConfig, task: Task, tokenizer) -> None:
    """The tokenizer against the preset, and the chat template against what generation and
    training will ask of it (examples of every kind rendered and encoded as training will),
    before the weights load."""
    check_preset(cfg.model, tokenizer)
    if finetunes(cfg):
        check_max_length(cfg.finetune.max_length, tokenizer, task)
    check_encodable(tokenizer, None, sample_examples(task, cfg.debate.summarize))
    ReasoningBudget.of(tokenizer, cfg.generation.max_reasoning_tokens, opens_reasoning(tokenizer))


def check_society(cfg: DictConfig, task: Task, society: Society) -> None:
    """With the weights loaded: a learned turn that ends on a token generation stops at
    (warned about otherwise), and room for the round-2 prompts (`check_prompt_room`). Nothing
    to check without local weights (an API generates)."""
    if society.tokenizer is None:
        return
    examples = sample_examples(task, cfg.debate.summarize)
    check_encodable(society.tokenizer, end_ids(society.model, society.tokenizer), examples)
    check_prompt_room(cfg, task, society)


def check_max_length(max_length: int, tokenizer, task: Task) -> None:
    """ConfigError when finetune.max_length is below the shortest example there can be (an
    empty question's prompt and one answer token): training would skip every example."""
    tokens = len(prompt_ids(tokenizer, task.prompt(Problem("", "", "")))) + 1
    if max_length < tokens:
        raise ConfigError(
            f"finetune.max_length={max_length}: every finetuning example would be skipped, since even an "
            f"empty question takes {tokens - 1} tokens before its answer with this chat template; "
            "expected the length of the longest conversations to learn from (default 2048)"
        )


def check_prompt_room(cfg: DictConfig, task: Task, society: Society) -> None:
    """Warn, before any debate, when the round-2 prompts must lose more than half of their
    tokens to fit the context: they hold the other agents' answers, so they grow with the
    agents however short the answers are. Counted with empty answers: real ones lose more."""
    agents = max([a for a, rounds in (shape(cfg, "train"), shape(cfg, "eval")) if rounds > 1], default=1)
    if agents < 2:
        return
    problem, others = Problem("", "", ""), [""] * (agents - 1)
    if cfg.debate.summarize:  # the summariser is sent all the others' answers
        prompt = task.summary_request(problem, others)
    else:
        first = [*task.prompt(problem), {"role": "assistant", "content": ""}]
        prompt = [*first, task.debate_prompt(others, cfg.debate.style)]
    tokens = len(prompt_ids(society.tokenizer, prompt))
    context = context_length(cfg.model, society.model)
    room = context - cfg.generation.max_new_tokens
    if tokens > 2 * room:
        log.warning(
            "agents=%d: each round-2 prompt takes at least %d tokens (the other %d agents' answers, "
            "even if empty) where the context leaves %d (model.context_length %d - "
            "generation.max_new_tokens %d): at least %.0f%% of every such prompt will be cut; use "
            "fewer agents or a longer context",
            agents,
            tokens,
            agents - 1,
            room,
            context,
            cfg.generation.max_new_tokens,
            100 * (1 - room / tokens),
        )
