"""Shared fixtures. Nothing here touches the network: models are built from scratch."""

import logging
import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from transformers import LlamaForCausalLM

from mfsi import loop, rundir
from mfsi.config import LoraConfig, ModelConfig, register
from mfsi.society import Society, load_base
from mfsi.testing.charlm import build_tokenizer, llama_config

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
    from mfsi.testing.random_models import build

    built = {}

    def get(name: str):
        if name not in built:
            built[name] = build(name, tmp_path_factory.mktemp(name))
        return built[name]

    return get


ROOT = Path(__file__).resolve().parents[1]
SMALL = [  # a small run on the shipped tiny model: 3 agents, 2 rounds, one finetuning iteration
    "task.n_train=8",
    "task.n_eval=4",
    "iterations=1",
    "logger=none",
    "finetune.epochs=1",
    "finetune.batch_size=4",
    "evaluation.diversity_questions=2",
]


@pytest.fixture(scope="session")
def make():
    """make(*overrides): the config `python run.py <SMALL> <overrides>` runs with."""

    def compose_small(*overrides):
        register()
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            return compose("config", overrides=[*SMALL, *overrides])

    return compose_small


@pytest.fixture(scope="session")
def finished_run(make, tmp_path_factory):
    """(run directory, summary) of one uninterrupted run of make(). Copy it before changing it."""
    run_dir = tmp_path_factory.mktemp("finished")
    return run_dir, loop.run(make(), run_dir)


TIMING = {"seconds"}  # the only values allowed to differ between identical runs
# Bookkeeping that differs between identical runs: when each start happened, the lock, and
# the done markers (they hold the checksums of the debates' stats files, timing included).
BOOKKEEPING = ("config_history.jsonl", "started.txt", ".lock", ".done.json")


@pytest.fixture(scope="session")
def snapshot():
    """snapshot(run_dir): every file of a run directory (plots, summary and bookkeeping aside),
    timing fields dropped: equal for runs that must have come out the same."""

    def untimed(obj):
        return {k: v for k, v in obj.items() if k not in TIMING} if isinstance(obj, dict) else obj

    def files(run_dir: Path) -> dict[str, object]:
        found = {}
        for path in sorted(p for p in run_dir.rglob("*") if p.is_file() and not p.name.endswith(BOOKKEEPING)):
            key = str(path.relative_to(run_dir))
            if path.suffix == ".jsonl":
                found[key] = [untimed(r) for r in rundir.read_jsonl(path)]
            elif path.suffix == ".json" and key != "summary.json":
                found[key] = untimed(rundir.read_json(path))
            elif path.suffix != ".png" and key != "summary.json":
                found[key] = path.read_bytes()
        return found

    return files


ADAPTERS = ("gen0", "gen1", "critic0", "critic1")


@pytest.fixture(scope="session")
def served_society(tmp_path_factory):
    """The shipped tiny model with the random LoRA adapters of two agents (gen0, gen1, critic0,
    critic1 at finetune.lora's rank), saved as the loop saves them: what the engine tests serve."""
    society = Society(*load_base(OmegaConf.structured(ModelConfig(path="models/tiny-arith"))))
    folder = tmp_path_factory.mktemp("adapters")
    for n, name in enumerate(ADAPTERS):
        torch.manual_seed(n)
        society.add(name, OmegaConf.structured(LoraConfig(dropout=0.0)), init=False)
        society.save(name, folder / name)
    return society
