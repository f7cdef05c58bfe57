"""Real architectures end to end (issue #15's "done when"): one iteration of multiagent_ft on
random-weight Llama-3 (grouped-query attention) and Qwen2.5 (q/k/v biases) with their stock
chat templates, in fp32 and nf4 on the CPU, trains every adapter and reports every
diversity metric.

Random weights write text in which no answer parses, so no question would have a majority
and no adapter any data (the run would stop with "nothing to learn"). So each model is
first taught, in a few seconds, to answer every debate prompt with \\boxed{7}; its
architecture, tokenizer and template stay the real family's. With greedy decoding every
agent then agrees, the generators get every question, and critic_weight=0 gives the
critics their held (C+) conversations.
"""

import random
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, AutoTokenizer

from mfsi import loop, rundir
from mfsi.chat import end_ids
from mfsi.config import TaskConfig, register
from mfsi.tasks import load_task
from mfsi.training import collate, encode

ROOT = Path(__file__).resolve().parents[1]
ANSWER = {"role": "assistant", "content": "\\boxed{7}"}
ADAPTERS = ["critic0", "critic1", "gen0", "gen1"]


def teach(source: Path, target: Path, steps: int = 30) -> Path:
    """Save a copy of the model at source that answers the debate prompts with \\boxed{7}."""
    model = AutoModelForCausalLM.from_pretrained(source)
    tokenizer = AutoTokenizer.from_pretrained(source)
    task = load_task(OmegaConf.structured(TaskConfig(n_train=24, n_eval=1, seed=1000)))
    conversations = []
    for problem in task.split("train"):
        first = [*task.prompt(problem), ANSWER]
        conversations += [first, [*first, task.debate_prompt([ANSWER["content"]]), ANSWER]]
        conversations += [[*first, task.summary_prompt(ANSWER["content"]), ANSWER]]
    stop = end_ids(model, tokenizer)
    examples = [
        encode(tokenizer, {"id": "", "messages": c, "loss_from_turn": 0}, stop) for c in conversations
    ]
    pad = tokenizer.pad_token_id if tokenizer.pad_token else tokenizer.eos_token_id  # Llama-3 has no pad
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        loss = model(**collate(random.Random(_).sample(examples, 16), pad)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def answering(family_model_dir, tmp_path_factory):
    taught = {}

    def get(family: str) -> Path:
        if family not in taught:
            taught[family] = teach(family_model_dir(family), tmp_path_factory.mktemp(f"{family}-taught"))
        return taught[family]

    return get


def make(*overrides):
    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.mark.parametrize("quantization", ["none", "nf4"])
@pytest.mark.parametrize("family", ["llama3", "qwen2"])
def test_one_iteration_trains_every_adapter_and_reports_diversity(family, quantization, answering, tmp_path):
    cfg = make(
        "model=hf",
        f"model.path={answering(family)}",
        "model.dtype=float32",
        f"model.quantization={quantization}",
        "task.n_train=4",
        "task.n_eval=2",
        "agents=2",
        "iterations=1",
        "generation.temperature=0",
        "generation.max_new_tokens=8",
        "finetune.critic_weight=0",
        "finetune.epochs=1",
        "finetune.batch_size=4",
        "evaluation.diversity_questions=2",
        "logger=none",
    )
    loop.run(cfg, tmp_path)
    records = rundir.read_jsonl(tmp_path / "iter_0/debate_train.jsonl")
    assert all(answer == "7" for r in records for answers in r["answers"] for answer in answers)
    sizes = rundir.read_json(tmp_path / "iter_1/data/sizes.json")
    assert sorted(sizes) == ADAPTERS and all(sizes[name]["n"] == 4 for name in ADAPTERS)
    for name in ADAPTERS:
        trained = rundir.read_json(tmp_path / f"iter_1/training/{name}.json")
        assert trained["steps"] == 1 and trained["losses"], name
        assert (tmp_path / f"iter_1/adapters/{name}/adapter_config.json").is_file()
    rows = rundir.read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["iteration"] for r in rows] == [0, 1]
    for key in ("embedding_dissimilarity", "likelihood_diversity", "kl_divergence", "kl_from_base"):
        assert all(r[key] is not None for r in rows), key
    assert rows[1]["kl_from_base"] > 0  # the trained generators differ from the base model
