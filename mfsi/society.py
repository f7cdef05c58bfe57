"""The agent society: one base model, loaded once, plus 2N LoRA adapters.

    model, tokenizer = load_base(cfg.model)
    society = Society(model, tokenizer)
    society.add("gen0", cfg.finetune.lora)            # fresh adapter
    society.load("critic0", run_dir / "iter_1/adapters/critic0")
    society.save("gen0", run_dir / "iter_1/adapters/gen0")
    roles(3, shared=False, trained=society.adapters)  # [(gen or None, critic or None)] * 3

Agent n's generator is `gen{n}` and its critic `critic{n}`. An adapter that does not exist
yet (iteration 0, or critics in the "without critics" ablation) is played by the bare base
model, which also writes the debate summaries.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Collection, Sequence
from datetime import datetime
from pathlib import Path

import torch
from omegaconf import OmegaConf
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, PretrainedConfig

from mfsi import rundir
from mfsi.chat import set_template_kwargs
from mfsi.errors import ConfigError
from mfsi.paths import ROOT, find

# Before peft imports bitsandbytes, which warns about an optional CPU kernel package.
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402

log = logging.getLogger(__name__)

# model=tiny's settings are for character-level models (the embedded one has 102 tokens).
CHARACTER_VOCAB = 256
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve(path: str, key: str = "model.path") -> Path | None:
    """A local folder for the config value `key`=path, or None when it can only be a hub id
    (org/name)."""
    local = find(path)
    if local:
        return local
    given = Path(os.path.expanduser(path))
    looks_local = given.is_absolute() or path.startswith((".", "~")) or len(given.parts) != 2
    if looks_local or (ROOT / given.parts[0]).is_dir() or Path(given.parts[0]).is_dir():
        raise ConfigError(
            f"{key}={path!r}: no such folder (looked in {Path.cwd()} and {ROOT}); "
            "expected a local Hugging Face model folder or a hub id like org/name"
        )
    return None


def hf_config(path: str, key: str, trust_remote_code: bool = False) -> PretrainedConfig:
    """The config.json of the model at `key`=path (a local folder or hub id), without weights."""
    local = resolve(path, key)
    try:
        return AutoConfig.from_pretrained(str(local or path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:  # no config.json, not cached offline, unknown id
        raise ConfigError(
            f"{key}={path!r}: no model config could be read ({str(e).splitlines()[0]}); expected a "
            "local Hugging Face model folder, or a hub id that is reachable or already downloaded"
        ) from None


def model_config(cfg) -> PretrainedConfig:
    """The base model's config with its attention implementation resolved as loading resolves
    it (the model is built on the meta device: no weights are read or allocated)."""
    config = hf_config(cfg.path, "model.path", cfg.trust_remote_code)
    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config, trust_remote_code=cfg.trust_remote_code).config
    except Exception:  # a model that cannot be built without weights: the generation backend checks it
        return config


def load_base(cfg) -> tuple[torch.nn.Module, object]:
    """The base model (eval mode, on cfg.device) and its tokenizer."""
    tokenizer = load_tokenizer(cfg)
    return load_model(cfg, tokenizer), tokenizer


def load_tokenizer(cfg, started: datetime | None = None):
    """The tokenizer of cfg.path with left padding, a pad token and a chat template, rendered
    with cfg.chat_template_kwargs and, given the run's start time, that time as the date
    (mfsi.chat.set_template_kwargs)."""
    local = resolve(cfg.path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            str(local) if local else cfg.path, padding_side="left", trust_remote_code=cfg.trust_remote_code
        )
    except OSError as e:  # not cached with HF_HUB_OFFLINE=1, no network, unknown id
        raise ConfigError(
            f"model.path={cfg.path!r}: not a local folder and could not be loaded from the "
            f"Hugging Face hub ({str(e).splitlines()[0]}); download it first or pass a local folder"
        ) from None
    tokenizer.padding_side = "left"  # some tokenizers ignore the argument
    if tokenizer.pad_token is None:  # Llama-3, Mistral: pad with eos (masked out anyway)
        tokenizer.pad_token = tokenizer.eos_token
    if cfg.chat_template:
        template = find(cfg.chat_template)
        if template is None or not template.is_file():
            raise ConfigError(f"model.chat_template={cfg.chat_template!r}: no such file")
        tokenizer.chat_template = rundir.read_text(template)
    if not tokenizer.chat_template:
        raise ConfigError(
            f"model.path={cfg.path!r}: the tokenizer has no chat template; set "
            "model.chat_template=<a jinja file>"
        )
    set_template_kwargs(tokenizer, OmegaConf.to_container(cfg.chat_template_kwargs), started)
    return tokenizer


def check_preset(cfg, tokenizer) -> None:
    """Refuse a model the preset's settings were not made for: model=tiny (the default) sets
    the context, token limit and batch size (and turns summaries off) for character-level
    models, so `model.path=<a real model>` alone would keep them silently."""
    if cfg.name == "tiny" and len(tokenizer) > CHARACTER_VOCAB:
        raise ConfigError(
            f"model.path={cfg.path!r} is not a character-level model ({len(tokenizer)} tokens), but "
            "model=tiny sets its context, token limit and batch size (and turns summaries off) for "
            "one: choose the preset of your model (model=llama3|mistral|phi3|qwen model.path=...), "
            "or model=hf model.path=... for any other"
        )


def load_model(cfg, tokenizer) -> torch.nn.Module:
    """The base model of cfg.path in cfg.dtype, quantized as cfg.quantization, on cfg.device,
    in eval mode."""
    local = resolve(cfg.path)
    source = str(local) if local else cfg.path
    dtype = DTYPES[cfg.dtype]
    quantization = {
        "none": None,
        "nf4": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_use_double_quant=True,
        ),
        "int8": BitsAndBytesConfig(load_in_8bit=True),
    }[cfg.quantization]
    device = resolve_device(cfg.device)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source,
            dtype=dtype,
            quantization_config=quantization,
            device_map={"": device} if quantization else None,
            trust_remote_code=cfg.trust_remote_code,
        )
    except SafetensorError as e:
        raise ConfigError(
            f"model.path={cfg.path!r}: the weights in {source} are damaged ({e}); download or copy them again"
        ) from None
    if quantization is None:
        model = model.to(device)
    for module in model.modules():
        # bitsandbytes repacks a 4-bit weight for a faster CPU kernel at its first inference
        # pass, and that kernel keeps no autograd graph: training after a debate would then
        # get no gradient through the base weights and, with a bias, fail in place
        # ("a view of a leaf Variable ... in-place operation"). Keep the trainable layout.
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    log.info("loaded %s (%s, quantization %s) on %s", source, cfg.dtype, cfg.quantization, model.device)
    return model.eval()


def resolve_device(name: str) -> torch.device:
    """model.device: auto = the first GPU if there is one, else the CPU; or a torch device name."""
    if name == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"model.device={name!r}: expected auto, cpu, cuda or cuda:<index>") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"model.device={name!r}: no CUDA device is available here")
    return torch.device("cuda", device.index or 0) if device.type == "cuda" else device


def context_length(cfg, model) -> int:
    """cfg.context_length, or the model's own maximum (max_position_embeddings) when None."""
    length = cfg.context_length or getattr(model.config, "max_position_embeddings", None)
    if not length:
        raise ConfigError("model.context_length=null and the model's config has no maximum: set it")
    return length


def lora_config(cfg, init: bool | str = True) -> LoraConfig:
    """PEFT LoraConfig from cfg.finetune.lora; init=False gives random (non-zero) B for tests."""
    targets = cfg.target_modules
    if targets != "all-linear":
        targets = [name.strip() for name in targets.split(",") if name.strip()]
    return LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
        init_lora_weights=init,
    )


class Society:
    """One base model shared by every agent; adapters are named gen{n} / critic{n}."""

    def __init__(self, model: torch.nn.Module | None, tokenizer, served: Sequence[str] = ()):
        """model None: no local weights; an endpoint generates (generation.backend=openai) and
        serves the adapters named in `served`."""
        self.model, self.tokenizer = model, tokenizer  # model becomes a PeftModel on first add
        self.served = list(served)
        # The folder holding each adapter's current weights (set by load and save): an engine
        # outside this process (generation.backend=vllm) loads the adapters from there.
        self.folders: dict[str, Path] = {}

    @property
    def adapters(self) -> list[str]:
        return list(self.model.peft_config) if isinstance(self.model, PeftModel) else self.served

    def add(self, name: str, lora_cfg, init: bool | str = True) -> None:
        """A fresh adapter (LoRA B = 0 by default: it starts as the base model), replacing
        any adapter of that name. Seed torch first for reproducible LoRA A matrices."""
        config = lora_config(lora_cfg, init)
        self.folders.pop(name, None)  # its weights are on no disk yet
        if name in self.adapters:
            self.model.delete_adapter(name)
        if isinstance(self.model, PeftModel):
            self.model.add_adapter(name, config)
        else:
            self.model = get_peft_model(self.model, config, adapter_name=name)
        self.model.eval()

    def load(self, name: str, folder: Path) -> None:
        """Adapter weights from a PEFT folder (trainable, so training can continue from them)."""
        if not (Path(folder) / "adapter_config.json").is_file():
            raise ConfigError(f"{folder}: not a PEFT adapter folder (no adapter_config.json)")
        if name in self.adapters:
            self.model.delete_adapter(name)
        if isinstance(self.model, PeftModel):
            self.model.load_adapter(str(folder), adapter_name=name, is_trainable=True)
        else:
            self.model = PeftModel.from_pretrained(
                self.model, str(folder), adapter_name=name, is_trainable=True
            )
        self.folders[name] = Path(folder)
        self.model.eval()

    def save(self, name: str, folder: Path) -> None:
        """Write one adapter to folder, atomically (a temp folder renamed into place)."""
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name}.") as tmp:
            self.model.save_pretrained(tmp, selected_adapters=[name])  # lands in tmp/name/
            _sort_target_modules(Path(tmp) / name / "adapter_config.json")
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(Path(tmp) / name, folder)
        self.folders[name] = folder


def _sort_target_modules(path: Path) -> None:
    """PEFT writes target_modules from a set, in an order that changes from process to process
    (string hashing): sorted, an adapter redone identically is the same file, and the stages
    that read it are not redone. Written as PEFT writes it otherwise."""
    config = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
        path.write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")


def roles(agents: int, shared: bool, trained: Collection[str]) -> list[tuple[str | None, str | None]]:
    """(generator, critic) adapter per agent; None (the base model) where none is trained.

    shared=True: every agent plays gen0/critic0 (single-agent finetuning).
    """
    if agents < 1:
        raise ConfigError(f"agents={agents}: expected an integer >= 1")
    pairs = []
    for n in range(agents):
        k = 0 if shared else n
        pairs.append(tuple(a if a in trained else None for a in (f"gen{k}", f"critic{k}")))
    return pairs
