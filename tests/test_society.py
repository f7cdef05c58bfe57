"""Model loading, adapters and roles of the agent society (random tiny model, no hub)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from omegaconf import OmegaConf

from mfsi.config import LoraConfig, ModelConfig
from mfsi.errors import ConfigError
from mfsi.society import (
    Society,
    check_preset,
    context_length,
    load_base,
    load_tokenizer,
    resolve_device,
    roles,
)
from mfsi.testing.charlm import CHAT_TEMPLATE

ROOT = Path(__file__).resolve().parents[1]
LORA = OmegaConf.structured(LoraConfig(r=4, alpha=8, dropout=0.0))


def model_cfg(path, **kw):
    return OmegaConf.structured(ModelConfig(path=str(path), **kw))


def test_base_model_loads_with_left_padding_pad_token_and_template(tiny_model_dir):
    model, tokenizer = load_base(model_cfg(tiny_model_dir))
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None
    assert tokenizer.chat_template and not model.training


def test_nf4_quantization_loads_on_cpu(tiny_model_dir):
    model, _ = load_base(model_cfg(tiny_model_dir, quantization="nf4"))
    assert any("4bit" in type(m).__name__ for m in model.modules())


def test_missing_template_unknown_folder_and_unreachable_hub_are_clear(tiny_model_dir, tmp_path, monkeypatch):
    bare = tmp_path / "bare"
    shutil.copytree(tiny_model_dir, bare)
    (bare / "chat_template.jinja").unlink()
    with pytest.raises(ConfigError, match="no chat template"):
        load_base(model_cfg(bare))
    (tmp_path / "t.jinja").write_text(CHAT_TEMPLATE)
    _, tokenizer = load_base(model_cfg(bare, chat_template=str(tmp_path / "t.jinja")))
    assert tokenizer.chat_template == CHAT_TEMPLATE
    with pytest.raises(ConfigError, match="model.chat_template"):
        load_base(model_cfg(bare, chat_template="templates/none.jinja"))
    with pytest.raises(ConfigError, match="no such folder"):
        load_base(model_cfg(tmp_path / "no-such-model"))
    with pytest.raises(ConfigError, match="no such folder"):
        load_base(model_cfg("models/no-such-model"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match="hub"):
        load_base(model_cfg("nobody-xyz/no-such-model"))


def test_adapters_save_and_load_round_trip(tiny_model_dir, tmp_path):
    society = Society(*load_base(model_cfg(tiny_model_dir)))
    for name in ("gen0", "critic0"):
        society.add(name, LORA, init=False)  # random B: the adapter changes the model
    society.save("critic0", tmp_path / "critic0")
    assert (tmp_path / "critic0" / "adapter_config.json").is_file()
    saved = {k: v.clone() for k, v in society.model.state_dict().items() if ".critic0." in k}

    fresh = Society(*load_base(model_cfg(tiny_model_dir)))
    fresh.load("critic0", tmp_path / "critic0")
    assert fresh.adapters == ["critic0"]
    loaded = fresh.model.state_dict()
    assert saved and all(torch.equal(v, loaded[k]) for k, v in saved.items())
    with pytest.raises(ConfigError, match="adapter_config.json"):
        fresh.load("gen0", tmp_path)


SAVE = """import sys, torch
from omegaconf import OmegaConf
from mfsi.config import LoraConfig, ModelConfig
from mfsi.society import Society, load_base
society = Society(*load_base(OmegaConf.structured(ModelConfig(path=sys.argv[1]))))
torch.manual_seed(0)
society.add("gen0", OmegaConf.structured(LoraConfig(r=4, alpha=8, dropout=0.0)))
society.save("gen0", sys.argv[2])
"""


def test_an_adapter_redone_in_another_process_is_the_same_file(tiny_model_dir, tmp_path):
    """PEFT lists all-linear's target modules from a set, in an order that follows the
    process's string hashing: the stages reading a redone adapter compare its files."""
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        command = [sys.executable, "-c", SAVE, str(tiny_model_dir), str(tmp_path / seed)]
        subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (tmp_path / "1" / name).read_bytes() == (tmp_path / "2" / name).read_bytes(), name
    modules = json.loads((tmp_path / "1" / "adapter_config.json").read_text())["target_modules"]
    assert modules == sorted(modules) and len(modules) > 1


def test_roles_fall_back_to_the_base_model_and_share_for_single_agent():
    assert roles(2, shared=False, trained=()) == [(None, None), (None, None)]
    trained = ["gen0", "gen1", "critic0", "critic1"]
    assert roles(2, shared=False, trained=trained) == [("gen0", "critic0"), ("gen1", "critic1")]
    assert roles(3, shared=True, trained=trained) == [("gen0", "critic0")] * 3
    assert roles(2, shared=False, trained=["gen0", "gen1"]) == [("gen0", None), ("gen1", None)]  # no critics
    with pytest.raises(ConfigError, match="agents=0"):
        roles(0, shared=False, trained=())


def test_the_device_setting_defaults_to_the_first_gpu_else_the_cpu(tiny_model_dir):
    expected = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    assert resolve_device("auto") == expected
    assert resolve_device("cpu") == torch.device("cpu")
    model, _ = load_base(model_cfg(tiny_model_dir, device="cpu"))
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    with pytest.raises(ConfigError, match="model.device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            resolve_device("cuda:1")


def test_a_real_model_under_the_tiny_preset_is_refused_and_its_context_is_its_own(
    family_model_dir, tiny_model_dir
):
    """model.path=... without model=... would keep the tiny model's 1024-token context, 112
    new tokens and batch 64, silently: refused; model=hf reads the context from the model."""
    folder = family_model_dir("llama3")
    with pytest.raises(ConfigError, match="model=hf"):
        check_preset(model_cfg(folder, name="tiny"), load_tokenizer(model_cfg(folder)))
    check_preset(model_cfg(tiny_model_dir, name="tiny"), load_tokenizer(model_cfg(tiny_model_dir)))
    cfg = model_cfg(folder, name="hf")
    model, _ = load_base(cfg)
    assert cfg.context_length is None and context_length(cfg, model) == model.config.max_position_embeddings
    cfg.context_length = 512
    assert context_length(cfg, model) == 512
