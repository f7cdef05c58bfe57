"""Shared fixtures. Nothing here touches the network: models are built from scratch."""

import logging
import os

import pytest
import torch
from omegaconf import OmegaConf
from transformers import LlamaForCausalLM

from mfsi.charlm import build_tokenizer, llama_config
from mfsi.config import LoraConfig, ModelConfig
from mfsi.society import Society, load_base

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matrices: one thread is fastest, and much faster when the cores are busy
    (use with pytestmark = pytest.mark.usefixtures("one_thread"))."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A randomly initialised char-level Llama (hidden 32, 2 layers) saved in HF format."""
    path = tmp_path_factory.mktemp("tiny-random")
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(llama_config(len(tokenizer), hidden=32, layers=2, heads=2, ffn=64))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def family_model_dir(tmp_path_factory):
    """family name -> folder of a tiny random-weight model of that real family (Llama-3,
    Mistral, Phi-3, Qwen2, Gemma-2) with its published chat template; built once per session."""
    from mfsi.random_models import build

    built = {}

    def get(name: str):
        if name not in built:
            built[name] = build(name, tmp_path_factory.mktemp(name))
        return built[name]

    return get


@pytest.fixture(scope="session")
def served_society(tmp_path_factory):
    """The shipped tiny model with two random LoRA adapters (gen0, gen1 at finetune.lora's
    rank), saved as the loop saves them: what the engine tests serve."""
    society = Society(*load_base(OmegaConf.structured(ModelConfig())))
    folder = tmp_path_factory.mktemp("adapters")
    for n, name in enumerate(("gen0", "gen1")):
        torch.manual_seed(n)
        society.add(name, OmegaConf.structured(LoraConfig(dropout=0.0)), init=False)
        society.save(name, folder / name)
    return society
