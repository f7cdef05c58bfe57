"""The random-weight stand-ins of the real families load like real models, with their formats."""

from datetime import datetime

import pytest
import torch
from omegaconf import OmegaConf

from mfsi.chat import render_text, set_template_kwargs
from mfsi.config import ModelConfig
from mfsi.society import load_base
from mfsi.testing.random_models import FAMILIES

CHAT = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
# Each family's published template, rendered (the formats of the model cards).
RENDERED = {
    "llama3": "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nHello<|eot_id|>",
    "mistral": "<s> [INST] Hi [/INST] Hello</s>",
    "phi3": "<|user|>\nHi<|end|>\n<|assistant|>\nHello<|end|>\n<|endoftext|>",
    "qwen2": "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    "<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n",
    "gemma2": "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello<end_of_turn>\n",
    "gemma3": "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello<end_of_turn>\n",
    # Qwen3 writes an empty think block into the last assistant turn by itself.
    "qwen3": "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    "Hello<|im_end|>\n",
    "r1qwen": "<｜begin▁of▁sentence｜><｜User｜>Hi<｜Assistant｜>Hello<｜end▁of▁sentence｜>",
    "phi4mini": "<|user|>Hi<|end|><|assistant|>Hello<|end|><|endoftext|>",
    # The date is the run's start (here 31 Jan 2025), not the clock's.
    "llama3.2": "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: "
    "December 2023\nToday Date: 31 Jan 2025\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi"
    "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello<|eot_id|>",
    "mistral3.1": "<s>[SYSTEM_PROMPT]You are Mistral Small 3, a Large Language Model (LLM) "
    "created by Mistral AI, "
    "a French startup headquartered in Paris.Your knowledge base was last updated on 2023-10-01. "
    "The current date is 2025-01-31.When you're not sure about some information, you say that you "
    "don't have the information and don't make up anything.If the user's question is not clear, "
    "ambiguous, or does not provide enough context for you to accurately answer the question, you "
    "do not try to answer it right away and you rather ask the user to clarify their request (e.g. "
    '"What are some good restaurants around me?" => "Where are you?" or "When is the next flight to '
    'Tokyo" => "Where do you travel from?")[/SYSTEM_PROMPT][INST]Hi[/INST]Hello</s>',
}
PROMPT_END = {
    "llama3": "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "mistral": " [/INST]",
    "phi3": "<|assistant|>\n",
    "qwen2": "<|im_start|>assistant\n",
    "gemma2": "<start_of_turn>model\n",
    "gemma3": "<start_of_turn>model\n",
    "qwen3": "<|im_start|>assistant\n",
    "r1qwen": "<｜Assistant｜><think>\n",  # reasoning starts in the prompt
    "phi4mini": "<|end|><|assistant|>",
    "llama3.2": "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "mistral3.1": "[INST]Hi[/INST]",
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_family_loads_with_its_template_tokens_and_end_tokens(family, family_model_dir):
    cfg = OmegaConf.structured(ModelConfig(name="hf", path=str(family_model_dir(family))))
    model, tokenizer = load_base(cfg)
    set_template_kwargs(tokenizer, {}, started=datetime(2025, 1, 31, 12))
    assert render_text(tokenizer, CHAT, prompt=False) == RENDERED[family]
    prompt = render_text(tokenizer, CHAT[:1], prompt=True)
    assert prompt.endswith(PROMPT_END[family])
    spec = FAMILIES[family]
    for token in [*spec.specials.values(), *spec.extra, *spec.added]:  # special tokens stay whole
        assert token in tokenizer.tokenize(f"a{token}b")
    ids = tokenizer(f"a{''.join(spec.added)}b", add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == f"a{''.join(spec.added)}b"  # <think> is text
    stop = set(model.generation_config.eos_token_id)
    assert stop == {tokenizer.convert_tokens_to_ids(t) for t in spec.stop}
    assert tokenizer.pad_token is not None and tokenizer.padding_side == "left"
    with torch.no_grad():  # a forward pass works on the rendered ids
        ids = tokenizer.apply_chat_template(CHAT, return_tensors="pt", return_dict=True)["input_ids"]
        assert model(ids).logits.shape == (1, ids.shape[1], model.config.vocab_size)


def test_architectures_keep_what_matters(family_model_dir):
    def load(name):
        cfg = ModelConfig(name="hf", path=str(family_model_dir(name)))
        return load_base(OmegaConf.structured(cfg))[0]

    llama = load("llama3")
    assert llama.config.num_key_value_heads < llama.config.num_attention_heads  # grouped-query attention
    attention = load("qwen2").model.layers[0].self_attn
    assert all(getattr(attention, p).bias is not None for p in ("q_proj", "k_proj", "v_proj"))
    assert attention.o_proj.bias is None
    assert type(load("phi3").model.layers[0].self_attn.qkv_proj).__name__ == "Linear"  # fused q/k/v
    assert load("mistral").config.sliding_window is None  # v0.2 attends to the whole context
    phi4 = load("phi4mini")
    assert phi4.config.tie_word_embeddings and phi4.config.rope_parameters["partial_rotary_factor"] == 0.75
    llama32 = load("llama3.2")
    assert llama32.lm_head.weight is llama32.model.embed_tokens.weight  # tied embeddings
    assert llama32.config.rope_parameters["rope_type"] == "llama3"
    assert load("gemma3").config.layer_types == ["sliding_attention", "full_attention"]
    assert hasattr(load("qwen3").model.layers[0].self_attn, "q_norm")
