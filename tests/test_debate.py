"""Debate round structure (a scripted backend), the real HF backend, and run.py end to end."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from mfsi.config import GenerationConfig, ModelConfig, register
from mfsi.debate import REFLECT, run_debate
from mfsi.errors import ConfigError
from mfsi.fitting import CUT
from mfsi.generation import Backend, BatchedBackend, Stats
from mfsi.loop import run
from mfsi.society import load_base, roles
from mfsi.tasks import BOXED, Arithmetic, Problem

ROOT = Path(__file__).resolve().parents[1]
PROBLEMS = [Problem("q0", "1+1", "2"), Problem("q1", "2+3", "5")]
TASK = Arithmetic({"train": [], "eval": PROBLEMS})
QN = [(q, n) for q in range(2) for n in range(3)]  # request order: question-major, then agent
KEYS = [
    "id",
    "question",
    "gold",
    "responses",
    "answers",
    "majorities",
    "majority",
    "correct",
    "conversations",
    "summaries",
]


class Scripted(Backend):
    """Answers name who spoke (adapter), in which round, to which question; records calls.
    With a room, prompts of more characters than that are cut (a token per character)."""

    def __init__(self, room: int | None = None):
        self.calls: list[list] = []
        self.room, self.stats = room, Stats()

    def count(self, messages):
        return sum(len(m["content"]) for m in messages)

    def generate(self, requests, seed, desc=""):
        self.calls.append(list(requests))
        texts = []
        for adapter, messages in requests:
            if adapter is None and "Summarise" in messages[-1]["content"]:
                texts.append(f"SUMMARY<{messages[-1]['content']}>")
                continue
            round_ = sum(m["role"] == "assistant" for m in messages) + 1
            q = messages[0]["content"].split("result of ")[1].split("?")[0]
            texts.append(f"<{adapter}|round {round_}|{q}> \\boxed{{{round_}}}")
        return texts


def debate(agents=3, rounds=3, summarize=False, room=None, **options):
    backend = Scripted(room)
    pairs = [(f"gen{n}", f"critic{n}") for n in range(agents)]
    return run_debate(TASK, PROBLEMS, backend, pairs, rounds, summarize, seed=0, **options), backend


def test_rounds_are_batched_and_played_by_generator_then_critic():
    records, backend = debate(agents=3, rounds=3)
    assert len(backend.calls) == 3  # one batched call per round, all questions x agents
    for m, call in enumerate(backend.calls):
        assert len(call) == len(PROBLEMS) * 3
        assert [a for a, _ in call] == [
            f"{'gen' if m == 0 else 'critic'}{n}" for _ in PROBLEMS for n in range(3)
        ]
    r = records[0]
    assert list(r) == KEYS
    assert len(r["responses"]) == 3 and all(len(x) == 3 for x in r["responses"])
    assert r["answers"] == [["1"] * 3, ["2"] * 3, ["3"] * 3] and r["majorities"] == ["1", "2", "3"]
    assert r["majority"] == "3" and r["correct"] is False and records[1]["correct"] is False
    conv = r["conversations"][1]
    assert [m["role"] for m in conv] == ["user", "assistant"] * 3
    assert [m["content"] for m in conv[1::2]] == [r["responses"][m][1] for m in range(3)]


def test_round_m_sees_exactly_the_others_previous_round():
    records, backend = debate(agents=3, rounds=3)
    for m in (1, 2):
        for (_, messages), (q, n) in zip(backend.calls[m], QN):
            shown = messages[-1]["content"]
            prev = records[q]["responses"][m - 1]
            assert all((prev[k] in shown) == (k != n) for k in range(3))  # others yes, own no
            assert f"round {m + 1}" not in shown  # nothing from the round being played
            assert all(x not in shown for x in records[1 - q]["responses"][m - 1])  # other question


def test_summaries_come_from_the_base_model_and_are_per_agent():
    records, backend = debate(agents=3, rounds=2, summarize=True)
    assert len(backend.calls) == 3  # round 1, summaries, round 2
    summary_call = backend.calls[1]
    assert len(summary_call) == 6 and all(adapter is None for adapter, _ in summary_call)
    for (_, messages), (q, n) in zip(backend.calls[2], QN):
        shown = messages[-1]["content"]
        assert "SUMMARY<" in shown and shown.count("One agent solution") == 2
        prev = records[q]["responses"][0]
        assert all((prev[k] in shown) == (k != n) for k in range(3))
        # The record keeps what the summariser was asked and what it wrote, per agent.
        kept = records[q]["summaries"][0][n]
        assert kept["request"] == summary_call[q * 3 + n][1] and kept["summary"] in shown
    assert debate(agents=3, rounds=2)[0][0]["summaries"] == []


def test_a_prompt_too_long_for_the_context_loses_the_middles_of_the_others_answers():
    records, whole = debate(agents=3, rounds=2)
    room = max(whole.count(messages) for _, messages in whole.calls[1]) - 20
    cut_records, backend = debate(agents=3, rounds=2, room=room)
    assert cut_records == records  # the records keep the whole debate
    assert backend.stats.cut == 6 and backend.stats.cut_tokens >= 20
    for (_, messages), (_, uncut) in zip(backend.calls[1], whole.calls[1]):
        assert backend.count(messages) <= room
        assert messages[:2] == uncut[:2]  # the question and the agent's own answer stay whole
        shown = messages[2]["content"]  # the instructions stay, both answers lose their middles
        assert shown.startswith("These are solutions from other agents:") and shown.endswith(BOXED)
        assert shown.count(CUT) == 2 and shown.count("One agent solution: <gen") == 2


def test_a_lone_agent_reflects_instead_of_debating():
    records, backend = debate(agents=1, rounds=2, summarize=True)
    assert len(backend.calls) == 2  # no summary call
    assert records[0]["conversations"][0][2] == REFLECT


@pytest.mark.parametrize("summarize", [False, True])
def test_agent_ids_and_the_cooperative_style_reach_every_agents_conversation(summarize):
    records, backend = debate(agents=3, rounds=2, summarize=summarize, style="cooperative", agent_ids=True)
    plain, _ = debate(agents=3, rounds=2, summarize=summarize)
    for r, default in zip(records, plain):
        for n, (conversation, usual) in enumerate(zip(r["conversations"], default["conversations"])):
            assert conversation[0]["content"] == f"{usual[0]['content']} You are agent {n + 1}."
            assert "build on their reasoning" in conversation[2]["content"]
            assert "additional advice" in usual[2]["content"]
    asked = [messages for _, messages in backend.calls[-1]]  # what the critics were given
    assert asked == [c[:3] for r in records for c in r["conversations"]]


def test_real_backend_debates_end_to_end(tiny_model_dir):
    model, tokenizer = load_base(OmegaConf.structured(ModelConfig(path=str(tiny_model_dir))))
    gen = OmegaConf.structured(GenerationConfig(max_new_tokens=6, batch_size=4, temperature=1.0))
    backend = BatchedBackend(model, tokenizer, gen, context_length=256)
    records = run_debate(TASK, PROBLEMS, backend, roles(2, False, ()), rounds=2, summarize=True, seed=1)
    assert [list(r) for r in records] == [KEYS] * 2
    assert all(len(r["responses"]) == 2 and len(r["conversations"]) == 2 for r in records)
    assert backend.stats.requests == 2 * 2 * 2 + 2 * 2  # agents x questions x rounds + summaries
    again = run_debate(
        TASK, PROBLEMS, BatchedBackend(model, tokenizer, gen, 256), roles(2, False, ()), 2, True, seed=1
    )
    assert again == records  # seeded sampling: the same debate twice


# --- run.py -----------------------------------------------------------------------------
def overrides(model_dir, run_dir, *extra):
    return [
        f"model.path={model_dir}",
        "task.n_eval=3",
        "task.n_train=2",
        "logger=none",
        "generation.max_new_tokens=8",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]


def test_run_py_debate_writes_the_run_directory(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "method=debate", *overrides(tiny_model_dir, run_dir)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "accuracy" in out.stdout
    records = [json.loads(line) for line in (run_dir / "iter_0/debate_eval.jsonl").read_text().splitlines()]
    assert len(records) == 3 and len(records[0]["responses"]) == 2 and len(records[0]["responses"][0]) == 3
    (row,) = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for key in (
        "iteration",
        "split",
        "method",
        "task",
        "model",
        "agents",
        "rounds",
        "n",
        "accuracy",
        "stderr",
        "accuracy_by_round",
        "agent_accuracy",
        "consensus",
        "parse_failure_rate",
        "cut",
        "cut_tokens",
        "truncated",
    ):
        assert key in row
    assert (row["method"], row["agents"], row["rounds"], row["n"]) == ("debate", 3, 2, 3)
    assert json.loads((run_dir / "summary.json").read_text())["final"] == row
    assert (run_dir / "accuracy_by_round.png").read_bytes()[:4] == b"\x89PNG"


def compose_cfg(*args):
    register()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=list(args))


def test_rerun_resumes_and_a_changed_society_is_refused(tiny_model_dir, tmp_path):
    args = [
        f"model.path={tiny_model_dir}",
        "task.n_eval=2",
        "task.n_train=1",
        "logger=none",
        "generation.max_new_tokens=4",
        "method=majority",
        "agents=2",
    ]
    first = run(compose_cfg(*args), tmp_path)
    stamp = (tmp_path / "iter_0/debate_eval.jsonl").stat().st_mtime_ns
    second = run(compose_cfg(*args), tmp_path)
    assert second == first and (tmp_path / "iter_0/debate_eval.jsonl").stat().st_mtime_ns == stamp
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1  # logged once
    with pytest.raises(ConfigError, match="agents: 2 -> 3"):
        run(compose_cfg(*args[:-1], "agents=3"), tmp_path)


def test_base_method_is_one_agent_one_round(tiny_model_dir, tmp_path):
    summary = run(compose_cfg(*overrides(tiny_model_dir, tmp_path)[:-1], "method=base"), tmp_path)
    assert (summary["agents"], summary["rounds"], len(summary["final"]["agent_accuracy"])) == (1, 1, 1)


@pytest.mark.parametrize("bad", ["agents=0", "debate.rounds=0"])
def test_bad_society_shape_is_refused_before_any_work(tiny_model_dir, tmp_path, bad):
    with pytest.raises(ConfigError):
        run(compose_cfg(f"model.path={tiny_model_dir}", "logger=none", bad), tmp_path)
    assert not (tmp_path / "splits.json").exists()
