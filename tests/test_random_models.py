"""The random-weight stand-ins of the real families load like real models, with their formats."""

import pytest
import torch
from omegaconf import OmegaConf

from mfsi.config import ModelConfig
from mfsi.random_models import FAMILIES
from mfsi.society import load_base

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
}
PROMPT_END = {
    "llama3": "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "mistral": " [/INST]",
    "phi3": "<|assistant|>\n",
    "qwen2": "<|im_start|>assistant\n",
    "gemma2": "<start_of_turn>model\n",
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_family_loads_with_its_template_tokens_and_end_tokens(family, family_model_dir):
    cfg = OmegaConf.structured(ModelConfig(name="hf", path=str(family_model_dir(family))))
    model, tokenizer = load_base(cfg)
    assert tokenizer.apply_chat_template(CHAT, tokenize=False) == RENDERED[family]
    prompt = tokenizer.apply_chat_template(CHAT[:1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith(PROMPT_END[family])
    spec = FAMILIES[family]
    for token in [*spec.specials.values(), *spec.extra]:  # special tokens stay whole
        assert token in tokenizer.tokenize(f"a{token}b")
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
