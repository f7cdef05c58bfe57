"""Real architectures end to end: one iteration of multiagent_ft on random-weight models of the
families people use (Llama-3 with grouped-query attention, Qwen2.5 with q/k/v biases, both
also in nf4; Qwen3 in thinking and non-thinking mode, a DeepSeek-R1 distill, Phi-4-mini,
Llama-3.2 with its dated template, Gemma-3 with sliding-window layers) and their published
chat templates, on the CPU: every adapter trains on exactly what its agent wrote, every
diversity metric is reported, and reasoning is parsed, stripped or shared as configured.

Random weights write text in which no answer parses, so no question would have a majority
and no adapter any data (the run would stop with "nothing to learn"). So each model is
first taught, in a few seconds, to answer every debate prompt with \\boxed{7} (a reasoning
model: after a short reasoning); its architecture, tokenizer and template stay the real
family's. With greedy decoding every agent then agrees, the generators get every question,
and critic_weight=0 gives the critics their held (C+) conversations.
"""

import random
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, AutoTokenizer

from mfsi import chat, loop, resume, rundir
from mfsi.chat import end_ids, final_answer, prompt_ids, set_template_kwargs
from mfsi.config import GenerationConfig, TaskConfig, register
from mfsi.errors import ConfigError
from mfsi.generation import BatchedBackend, HFBackend
from mfsi.society import load_model, load_tokenizer
from mfsi.tasks import load_task
from mfsi.training import IGNORE, collate, encode

ROOT = Path(__file__).resolve().parents[1]
ADAPTERS = ["critic0", "critic1", "gen0", "gen1"]
# What each model is taught to write: an answer, or a short reasoning and then the answer
# (Qwen3 in thinking mode writes the block; an R1 distill's generation prompt opens it).
ANSWERS = {
    "plain": "\\boxed{7}",
    "thinking": "<think>\nSeven.\n</think>\n\n\\boxed{7}",
    "opened": "Seven.\n</think>\n\n\\boxed{7}",
}
END = {  # the end-of-turn token each family's answers end with
    "llama3": "<|eot_id|>",
    "qwen2": "<|im_end|>",
    "qwen3": "<|im_end|>",
    "r1qwen": "<｜end▁of▁sentence｜>",
    "phi4mini": "<|end|>",
    "llama3.2": "<|eot_id|>",
    "gemma3": "<end_of_turn>",
}
# family, what it is taught, and the settings it needs (README: "Model families")
CASES = {
    "llama3": ("llama3", "plain", []),
    "llama3-nf4": ("llama3", "plain", ["model.quantization=nf4"]),
    "qwen2": ("qwen2", "plain", []),
    "qwen2-nf4": ("qwen2", "plain", ["model.quantization=nf4"]),
    "qwen3-thinking": ("qwen3", "thinking", []),
    "qwen3-no-thinking": ("qwen3", "plain", ["+model.chat_template_kwargs.enable_thinking=false"]),
    "r1qwen": ("r1qwen", "opened", []),
    "phi4mini": ("phi4mini", "plain", []),
    "llama3.2": ("llama3.2", "plain", []),
    "gemma3": ("gemma3", "plain", ["generation.backend=hf"]),
}

pytestmark = pytest.mark.usefixtures("one_thread")


def make(*overrides):
    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def settings(case: str, folder: Path, *more: str):
    """The run config of a case: 2 agents, 2 rounds, one iteration, greedy, on few questions."""
    family, _, needs = CASES[case]
    return make(
        "model=hf",
        f"model.path={folder}",
        "model.dtype=float32",
        "model.quantization=none",
        *needs,
        "task.n_train=4",
        "task.n_eval=2",
        "agents=2",
        "iterations=1",
        "generation.temperature=0",
        "generation.max_new_tokens=24",
        "finetune.critic_weight=0",
        "finetune.epochs=1",
        "finetune.batch_size=4",
        "evaluation.diversity_questions=2",
        "logger=none",
        *more,
    )


def teach(source: Path, target: Path, answer: str, template_kwargs: dict, steps: int = 40) -> Path:
    """Save a copy of the model at source that answers the debate prompts with `answer`."""
    model = AutoModelForCausalLM.from_pretrained(source)
    tokenizer = AutoTokenizer.from_pretrained(source)
    set_template_kwargs(tokenizer, template_kwargs)
    task = load_task(OmegaConf.structured(TaskConfig(n_train=24, n_eval=1, seed=1000)))
    reply, seen = (
        {"role": "assistant", "content": answer},
        final_answer(answer, chat.opens_reasoning(tokenizer)),
    )
    conversations = []
    for problem in task.split("train"):
        first = [*task.prompt(problem), reply]
        conversations += [first, [*first, task.debate_prompt([seen]), reply]]
        conversations += [[*first, task.summary_prompt(seen), reply]]
    stop = end_ids(model, tokenizer)
    examples = [
        row
        for c in conversations
        for row in encode(tokenizer, {"id": "", "messages": c, "loss_from_turn": 0}, stop)
    ]
    pad = tokenizer.pad_token_id if tokenizer.pad_token else tokenizer.eos_token_id  # Llama-3 has no pad
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        loss = model(**collate(random.Random(step).sample(examples, 16), pad)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


@pytest.fixture(scope="module")
def answering(family_model_dir, tmp_path_factory):
    """case -> folder of its family's model taught to answer as the case says."""
    taught = {}

    def get(case: str) -> Path:
        family, answer, needs = CASES[case]
        kwargs = {"enable_thinking": False} if any("enable_thinking=false" in n for n in needs) else {}
        key = (family, answer, str(kwargs))
        if key not in taught:
            folder = tmp_path_factory.mktemp(f"{family}-taught")
            taught[key] = teach(family_model_dir(family), folder, ANSWERS[answer], kwargs)
        return taught[key]

    return get


def learnt(tokenizer, row: dict) -> list[str]:
    """The labelled runs of an encoded sequence, decoded (special tokens kept)."""
    runs, current = [], []
    for token, label in zip(row["input_ids"], row["labels"]):
        if label != IGNORE:
            current.append(token)
        elif current:
            runs, current = [*runs, current], []
    return [tokenizer.decode(run) for run in [*runs, current] if run]


@pytest.mark.parametrize("case", sorted(CASES))
def test_one_iteration_trains_what_the_agents_wrote_and_reports_diversity(case, answering, tmp_path):
    family, taught, _ = CASES[case]
    cfg = settings(case, answering(case))
    loop.run(cfg, tmp_path)
    records = rundir.read_jsonl(tmp_path / "iter_0/debate_train.jsonl")
    texts = [text for r in records for texts in r["responses"] for text in texts]
    assert all(("Seven." in text) == (taught != "plain") for text in texts)  # reasoning kept in the record
    assert all(answer == "7" for r in records for answers in r["answers"] for answer in answers)
    # Round 2 sees the summary of the other agent's answer, no reasoning (debate.share=answer).
    assert not any("Seven" in c[2]["content"] for r in records for c in r["conversations"])
    sizes = rundir.read_json(tmp_path / "iter_1/data/sizes.json")
    assert sorted(sizes) == ADAPTERS and all(sizes[name]["n"] == 4 for name in ADAPTERS)
    for name in ADAPTERS:
        trained = rundir.read_json(tmp_path / f"iter_1/training/{name}.json")
        assert trained["steps"] == 1 and trained["losses"], name
        assert (tmp_path / f"iter_1/adapters/{name}/adapter_config.json").is_file()

    # What training learns of a generator and a critic example: exactly the agent's own text
    # and its end of turn, after the prompt its debate generated from.
    tokenizer = load_tokenizer(cfg.model, resume.start_time(tmp_path))
    stop = end_ids(AutoModelForCausalLM.from_pretrained(cfg.model.path), tokenizer)
    for name in ("gen0", "critic0"):
        example = rundir.read_jsonl(tmp_path / f"iter_1/data/{name}.jsonl")[0]
        [row] = encode(tokenizer, example, stop)
        assert learnt(tokenizer, row) == [example["messages"][-1]["content"] + END[family]], name
        prompt = prompt_ids(tokenizer, example["messages"][:-1])
        assert row["input_ids"][: len(prompt)] == prompt and set(row["labels"][: len(prompt)]) == {IGNORE}

    rows = rundir.read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["iteration"] for r in rows] == [0, 1]
    for key in ("embedding_dissimilarity", "likelihood_diversity", "kl_divergence", "kl_from_base"):
        assert all(r[key] is not None for r in rows), key
    assert rows[1]["kl_from_base"] > 0  # the trained generators differ from the base model
    assert all(r["unfinished_reasoning"] == 0 for r in rows)


@pytest.mark.parametrize("share", ["answer", "full"])
def test_a_reasoning_model_shows_the_others_its_answers_or_its_whole_responses(share, answering, tmp_path):
    case = "qwen3-thinking"
    loop.run(
        settings(case, answering(case), "method=debate", f"debate.share={share}", "debate.summarize=false"),
        tmp_path,
    )
    for r in rundir.read_jsonl(tmp_path / "iter_0/debate_eval.jsonl"):
        assert r["answers"] == [["7", "7"], ["7", "7"]]
        for n, conversation in enumerate(r["conversations"]):
            other = r["responses"][0][1 - n]  # the other agent's round-1 response
            shown = other if share == "full" else final_answer(other)
            assert f"One agent solution: {shown}\n\n" in conversation[2]["content"]
            assert ("Seven" in conversation[2]["content"]) == (share == "full")


@pytest.mark.parametrize("case", ["qwen3-thinking", "r1qwen"])
def test_reasoning_cut_off_gives_no_answer_and_is_counted_alike_on_both_backends(case, answering, tmp_path):
    """generation.max_reasoning_tokens=2 ends every response inside its reasoning: no answer,
    no vote, counted; our decoder and model.generate write the same."""
    folder = answering(case)
    cfg = settings(case, folder, "method=debate", "generation.max_reasoning_tokens=2")
    loop.run(cfg, tmp_path)
    [row] = rundir.read_jsonl(tmp_path / "metrics.jsonl")
    records = rundir.read_jsonl(tmp_path / "iter_0/debate_eval.jsonl")
    assert all(answer is None for r in records for answers in r["answers"] for answer in answers)
    assert row["unfinished_reasoning"] == 2 * 2 * 2 and row["parse_failure_rate"] == 1.0
    assert row["new_tokens"] == 2 * row["requests"]  # the summaries reason too
    tokenizer = load_tokenizer(cfg.model)
    model = load_model(cfg.model, tokenizer)
    task = load_task(cfg.task)
    requests = [(None, task.prompt(p)) for p in task.split("eval")]
    generation = OmegaConf.structured(
        GenerationConfig(temperature=0, max_new_tokens=24, max_reasoning_tokens=2)
    )
    ours, theirs = (
        b(model, tokenizer, generation, 1024).generate(requests, seed=0) for b in (BatchedBackend, HFBackend)
    )
    assert ours == theirs == [r["responses"][0][0] for r in records]


@pytest.mark.parametrize("case", ["llama3.2", "phi4mini", "qwen3-thinking", "r1qwen"])
def test_greedy_decoding_writes_what_model_generate_writes(case, answering):
    cfg = settings(case, answering(case))
    tokenizer = load_tokenizer(cfg.model)
    model = load_model(cfg.model, tokenizer)
    task = load_task(cfg.task)
    first = [task.prompt(p) for p in task.split("train")]
    second = [
        [*m, {"role": "assistant", "content": ANSWERS[CASES[case][1]]}, task.debate_prompt(["7"])]
        for m in first
    ]
    requests = [(None, m) for m in first + second]
    generation = OmegaConf.structured(GenerationConfig(temperature=0, max_new_tokens=16))
    ours = BatchedBackend(model, tokenizer, generation, 1024).generate(requests, seed=0)
    theirs = HFBackend(model, tokenizer, generation, 1024).generate(requests, seed=0)
    assert ours == theirs and ours[0] == ANSWERS[CASES[case][1]]


def test_gemma3_is_refused_by_our_decoder_with_the_setting_it_needs(family_model_dir):
    cfg = settings("gemma3", family_model_dir("gemma3"), "generation.backend=batched")
    tokenizer = load_tokenizer(cfg.model)
    with pytest.raises(ConfigError, match="sliding window.*generation.backend=hf"):
        BatchedBackend(load_model(cfg.model, tokenizer), tokenizer, cfg.generation, 1024)


class Clock(datetime):
    """datetime with now() set by the test."""

    at = datetime(2026, 3, 14, 23, 59)

    @classmethod
    def now(cls, tz=None):
        return cls.at


def test_a_run_resumed_after_midnight_renders_the_date_it_started_with(answering, tmp_path, monkeypatch):
    """Llama-3.2's template prints today's date: a run started on the 14th and resumed on the
    15th renders every prompt, for generation and for training, with the 14th."""
    folder = answering("llama3.2")
    monkeypatch.setattr(resume, "datetime", Clock)
    rendered: list[str] = []
    render_text = chat.render_text

    def recorded(tokenizer, messages, prompt):
        rendered.append(render_text(tokenizer, messages, prompt))
        return rendered[-1]

    monkeypatch.setattr(chat, "render_text", recorded)
    loop.run(settings("llama3.2", folder, "iterations=0"), tmp_path)  # the 14th: iteration 0
    Clock.at += timedelta(minutes=2)
    loop.run(settings("llama3.2", folder), tmp_path)  # the 15th: debate, select, train, evaluate
    dates = {text.split("Today Date: ")[1].split("\n")[0] for text in rendered if "Today Date: " in text}
    assert len(rendered) > 50 and dates == {"14 Mar 2026"}
    assert (tmp_path / "iter_1/adapters/gen0/adapter_config.json").is_file()
    rendered.clear()  # a run started on the 15th renders the 15th: the date comes from the start
    loop.run(settings("llama3.2", folder, "method=debate"), tmp_path / "later")
    assert {text.split("Today Date: ")[1].split("\n")[0] for text in rendered} == {"15 Mar 2026"}
