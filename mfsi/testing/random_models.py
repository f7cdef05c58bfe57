"""Random-weight stand-ins for the real model families, built offline.

    from mfsi.testing.random_models import FAMILIES, build
    folder = build("llama3", tmp_path / "llama3")                  # tiny shape, seconds
    folder = build("llama3", out, shape=SHAPES["8b"], dtype=torch.bfloat16)  # a real shape

`build` saves a Hugging Face model folder that `model.path=<folder>` loads: a model of the
family's architecture (Llama-3 with grouped-query attention, Llama-3.2 with tied
embeddings, Mistral, Phi-3, Phi-4-mini with partial rotary embeddings, Qwen2 with its
q/k/v biases, Qwen3, a DeepSeek-R1 distill of Qwen2, Gemma-2, Gemma-3 with sliding-window
layers) with random weights, its generation config (the end tokens generation stops at),
and a small tokenizer that carries the family's real special tokens,
bos/eos and published chat template (chat_templates/ beside this module, sources in its
README). The real tokenizers cannot be downloaded here, so each is a BPE trained in
milliseconds on the task prompts, in the family's style: byte-level (Llama-3, Qwen, Phi-4,
Mistral-Small-3.1's Tekken) or SentencePiece-like with a "▁" word marker (Mistral, Phi-3,
Gemma), reasoning models with <think> and </think> as tokens of their own. For tests and
experiments/gpu_check.py; a run never uses it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    GenerationConfig,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
)

from mfsi.tasks import Problem, Task

TEMPLATES = Path(__file__).resolve().parent / "chat_templates"


@dataclass(frozen=True)
class Family:
    """What makes a model family: architecture, tokens, template, where generation stops."""

    config: type[PretrainedConfig]
    template: str  # file in TEMPLATES
    byte_level: bool  # byte-level BPE (GPT-2 style) or SentencePiece-like "▁" words
    specials: dict[str, str]  # role -> token text: bos, eos, pad, unk (those the family has)
    extra: list[str]  # other special tokens of the chat format
    stop: list[str]  # tokens that end generation (the model's generation_config eos ids)
    arch: dict = field(default_factory=dict)  # config values that make the architecture
    added: list[str] = field(default_factory=list)  # tokens of their own that decoding keeps (<think>)


FAMILIES = {
    # meta-llama/Meta-Llama-3-8B-Instruct: GQA; the template adds <|begin_of_text|> itself.
    "llama3": Family(
        LlamaConfig,
        "llama3-8b-instruct.jinja",
        byte_level=True,
        specials={"bos": "<|begin_of_text|>", "eos": "<|eot_id|>"},
        extra=["<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>"],
        stop=["<|end_of_text|>", "<|eot_id|>"],
        arch={"rope_theta": 500000.0, "tie_word_embeddings": False},
    ),
    # mistralai/Mistral-7B-Instruct-v0.2: [INST] is plain text; no sliding window.
    "mistral": Family(
        MistralConfig,
        "mistral-7b-instruct-v0.2.jinja",
        byte_level=False,
        specials={"bos": "<s>", "eos": "</s>", "unk": "<unk>"},
        extra=[],
        stop=["</s>"],
        arch={"rope_theta": 1000000.0, "sliding_window": None, "tie_word_embeddings": False},
    ),
    # microsoft/Phi-3-mini-4k-instruct: turns end with <|end|>, which generation stops at;
    # the template appends eos (<|endoftext|>) after a conversation that ends on an answer.
    "phi3": Family(
        Phi3Config,
        "phi3-mini-4k-instruct.jinja",
        byte_level=False,
        specials={"bos": "<s>", "eos": "<|endoftext|>", "pad": "<|endoftext|>", "unk": "<unk>"},
        extra=["<|assistant|>", "<|system|>", "<|end|>", "<|user|>"],
        stop=["<|endoftext|>", "<|assistant|>", "<|end|>"],
        arch={"tie_word_embeddings": False},
    ),
    # Qwen/Qwen2.5-*-Instruct: q/k/v projections with biases; no bos.
    "qwen2": Family(
        Qwen2Config,
        "qwen2.5-instruct.jinja",
        byte_level=True,
        specials={"eos": "<|im_end|>", "pad": "<|endoftext|>"},
        extra=["<|endoftext|>", "<|im_start|>"],
        stop=["<|im_end|>", "<|endoftext|>"],
        arch={"rope_theta": 1000000.0, "tie_word_embeddings": True, "use_sliding_window": False},
    ),
    # Qwen/Qwen3-*: q/k norms, no biases; <think> and </think> are ordinary added tokens
    # (decoding keeps them). Thinking by default; enable_thinking=false puts an empty think
    # block in the generation prompt.
    "qwen3": Family(
        Qwen3Config,
        "qwen3-0.6b.jinja",
        byte_level=True,
        specials={"eos": "<|im_end|>", "pad": "<|endoftext|>"},
        extra=["<|endoftext|>", "<|im_start|>"],
        stop=["<|im_end|>", "<|endoftext|>"],
        arch={"rope_theta": 1000000.0, "tie_word_embeddings": True, "use_sliding_window": False},
        added=["<think>", "</think>"],
    ),
    # deepseek-ai/DeepSeek-R1-Distill-Qwen-*: Qwen2 weights; the generation prompt opens
    # <think>, and the template drops the reasoning of earlier turns.
    "r1qwen": Family(
        Qwen2Config,
        "deepseek-r1-distill-qwen-32b.jinja",
        byte_level=True,
        specials={
            "bos": "<｜begin▁of▁sentence｜>",
            "eos": "<｜end▁of▁sentence｜>",
            "pad": "<｜end▁of▁sentence｜>",
        },
        extra=["<｜User｜>", "<｜Assistant｜>"],
        stop=["<｜end▁of▁sentence｜>"],
        arch={"rope_theta": 10000.0, "tie_word_embeddings": False, "use_sliding_window": False},
        added=["<think>", "</think>"],
    ),
    # microsoft/Phi-4-mini-instruct: Phi-3 blocks with rotary embeddings on 3/4 of each head
    # (partial_rotary_factor), tied embeddings, a byte-level tokenizer.
    "phi4mini": Family(
        Phi3Config,
        "phi4-mini-instruct.jinja",
        byte_level=True,
        specials={"bos": "<|endoftext|>", "eos": "<|endoftext|>", "pad": "<|endoftext|>"},
        extra=["<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|tool|>", "<|/tool|>"],
        stop=["<|endoftext|>", "<|end|>"],
        arch={"partial_rotary_factor": 0.75, "tie_word_embeddings": True},
    ),
    # meta-llama/Llama-3.2-3B-Instruct: tied embeddings, llama3 rope scaling; the template
    # prints today's date (strftime_now) in the system turn of every conversation.
    "llama3.2": Family(
        LlamaConfig,
        "llama3.2-3b-instruct.jinja",
        byte_level=True,
        specials={"bos": "<|begin_of_text|>", "eos": "<|eot_id|>"},
        extra=["<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>"],
        stop=["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"],
        arch={
            "tie_word_embeddings": True,
            "rope_scaling": {
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 32.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 1024,
            },
        },
    ),
    # mistralai/Mistral-Small-3.1-24B-Instruct-2503's text model with its template (the
    # system prompt holds today's date) and a byte-level tokenizer like its Tekken.
    "mistral3.1": Family(
        MistralConfig,
        "mistral-small-3.1-24b-instruct-2503.jinja",
        byte_level=True,
        specials={"bos": "<s>", "eos": "</s>", "unk": "<unk>"},
        extra=["[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]"],
        stop=["</s>"],
        arch={"rope_theta": 1000000000.0, "sliding_window": None, "tie_word_embeddings": False},
    ),
    # google/gemma-3-*-it (text): sliding-window layers beside full ones (our decoder refuses
    # them: generation.backend=hf); the assistant is "model".
    "gemma3": Family(
        Gemma3TextConfig,
        "gemma3-it.jinja",
        byte_level=False,
        specials={"bos": "<bos>", "eos": "<eos>", "pad": "<pad>", "unk": "<unk>"},
        extra=["<start_of_turn>", "<end_of_turn>"],
        stop=["<eos>", "<end_of_turn>"],
        arch={
            "tie_word_embeddings": True,
            "sliding_window": 64,
            "layer_types": ["sliding_attention", "full_attention"],
            "query_pre_attn_scalar": 16,
        },
    ),
    # google/gemma-2-2b-it: the assistant is "model"; eager attention (logit soft-capping).
    "gemma2": Family(
        Gemma2Config,
        "gemma2-2b-it.jinja",
        byte_level=False,
        specials={"bos": "<bos>", "eos": "<eos>", "pad": "<pad>", "unk": "<unk>"},
        extra=["<start_of_turn>", "<end_of_turn>"],
        stop=["<eos>", "<end_of_turn>"],
        arch={"tie_word_embeddings": True, "sliding_window": 4096, "query_pre_attn_scalar": 16},
    ),
}

# Model shapes: "tiny" for tests on a CPU; "8b" is Llama-3-8B's (Mistral-7B's but for the
# vocabulary: 32000), for experiments/gpu_check.py.
SHAPES = {
    "tiny": {"hidden": 64, "layers": 2, "heads": 4, "kv_heads": 2, "ffn": 128, "vocab": None},
    "8b": {"hidden": 4096, "layers": 32, "heads": 32, "kv_heads": 8, "ffn": 14336, "vocab": 128256},
}


def corpus() -> list[str]:
    """Texts to train the tokenizers on: the debate prompts of the arithmetic task."""
    task = Task({})
    texts = []
    for i in range(40):
        question = f"What is the result of {i}+{(7 * i) % 30}*{(3 * i) % 29}+{i % 13}-{(5 * i) % 30}*{i % 7}?"
        answer = f"{i}*{i % 7}={i * (i % 7)}, so the answer is \\boxed{{{i * 3 - 7}}}."
        texts.append(task.prompt(Problem(str(i), question, ""))[0]["content"])
        texts.append(task.debate_prompt([answer, answer[::-1]])["content"])
        texts.append(task.summary_request(Problem(str(i), question, ""), [answer])[0]["content"])
        texts.append(answer)
    return texts


def build_tokenizer(
    family: Family, vocab_size: int = 512, size: int | None = None
) -> PreTrainedTokenizerFast:
    """A BPE in the family's style with its special tokens, bos/eos and chat template,
    trained to vocab_size tokens; `size` > vocab_size pads the vocabulary to that many with
    tokens no text encodes to, each decoding to its own text (`<extra_{id}>`), so that a
    model with the real vocabulary size writes distinguishable texts."""
    specials = list(dict.fromkeys([*family.specials.values(), *family.extra]))
    if family.byte_level:
        core = Tokenizer(models.BPE())
        core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        core.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:  # SentencePiece-like: spaces become "▁", a word starts with one
        core = Tokenizer(models.BPE(unk_token=family.specials["unk"]))
        core.normalizer = normalizers.Replace(" ", "▁")
        prepend = "never" if family.config in (Gemma2Config, Gemma3TextConfig) else "first"
        core.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme=prepend)  # no merge across words
        core.decoder = decoders.Metaspace(prepend_scheme=prepend)
        alphabet = [c for c in map(chr, range(32, 127)) if c != " "] + ["\n", "▁"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=alphabet, show_progress=False
    )
    core.train_from_iterator(corpus(), trainer)
    core.add_tokens([AddedToken(token, special=False, normalized=False) for token in family.added])
    if size and size > core.get_vocab_size():
        spec = json.loads(core.to_str())
        spec["model"]["vocab"].update({f"<extra_{i}>": i for i in range(core.get_vocab_size(), size)})
        core = Tokenizer.from_str(json.dumps(spec))
    roles = {f"{role}_token": token for role, token in family.specials.items()}
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        **roles,
        additional_special_tokens=family.extra,
        chat_template=(TEMPLATES / family.template).read_text(encoding="utf-8"),
    )


def build(
    name: str,
    folder: Path,
    shape: dict | None = None,
    dtype: torch.dtype = torch.float32,
    context: int = 4096,
    seed: int = 0,
    device: str = "cpu",
) -> Path:
    """Save a random-weight model of family `name` with its tokenizer to folder; returns it.

    shape: SHAPES entry (default "tiny"); vocab None = the tokenizer's own 512 tokens (the
    real size keeps the real embedding and output layers; see build_tokenizer).
    device: where the weights are drawn (a GPU draws 8B random weights in seconds).
    """
    family, shape = FAMILIES[name], shape or SHAPES["tiny"]
    tokenizer = build_tokenizer(family, size=shape["vocab"])
    ids = {role: tokenizer.convert_tokens_to_ids(token) for role, token in family.specials.items()}
    stop = [tokenizer.convert_tokens_to_ids(token) for token in family.stop]
    config = family.config(
        vocab_size=len(tokenizer),
        hidden_size=shape["hidden"],
        intermediate_size=shape["ffn"],
        num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"],
        num_key_value_heads=shape["kv_heads"],
        head_dim=shape["hidden"] // shape["heads"],
        max_position_embeddings=context,
        bos_token_id=ids.get("bos"),
        eos_token_id=ids["eos"],
        pad_token_id=ids.get("pad"),
        **family.arch,
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.generation_config = GenerationConfig(
        bos_token_id=ids.get("bos"), eos_token_id=stop, pad_token_id=ids.get("pad")
    )
    folder = Path(folder)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
