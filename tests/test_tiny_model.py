"""The shipped default model (models/tiny-arith) and the script that regenerates it."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from experiments import make_tiny_model
from experiments.make_tiny_model import (
    Recipe,
    difference,
    evaluate,
    evaluate_folder,
    held_out_questions,
    last_turn,
    question,
    solution,
    train,
)
from mfsi.config import GenerationConfig
from mfsi.generation import BatchedBackend
from mfsi.tasks import Arithmetic, Problem
from mfsi.testing.charlm import build_tokenizer

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "tiny-arith"
CONF = yaml.safe_load((ROOT / "conf" / "model" / "tiny.yaml").read_text())
GUARD_N = 150  # questions in the accuracy guard, one T=1 sample each


@pytest.fixture(scope="module")
def shipped():
    tokenizer = AutoTokenizer.from_pretrained(MODEL, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(MODEL, local_files_only=True).eval()
    return model, tokenizer


def backend(model, tokenizer, **overrides) -> BatchedBackend:
    cfg = GenerationConfig(**{**CONF["generation"], **overrides})
    return BatchedBackend(model, tokenizer, cfg, context_length=CONF["model"]["context_length"])


def test_subtraction_is_written_in_easy_steps():
    assert difference(343, 13) == []  # a 2-digit subtrahend goes in one step
    assert difference(343, 288) == ["143-88"]
    assert difference(45, 575) == ["-(575-45)"]
    assert difference(245, 575) == ["-(575-245)", "-(375-45)"]


def test_products_are_written_smaller_factor_first():
    assert solution("1+27*8+3-4*25").startswith("27*8=8*27=216, 4*25=100, ")


def test_solutions_are_consistent_chains_that_fit_the_generation_budget():
    rng = random.Random(0)
    for _ in range(2000):
        p = question(rng, set())
        text = solution(p.question)
        steps, boxed = text.split(". \\boxed{")
        assert boxed == p.answer + "}"
        for step in steps.split(", "):  # every form of a step has the step's value
            assert len({eval(form) for form in step.split("=")}) == 1, step  # digits, +-*() only
        assert len(text) + 1 <= CONF["generation"]["max_new_tokens"]  # one token per character, <|end|>


def test_a_position_gap_moves_only_the_answer_turn_away_from_the_question():
    problem = Problem("arith/3+4*5+6-7*8", "3+4*5+6-7*8", "-27")
    conversation = [
        *Arithmetic({"train": [], "eval": []}).prompt(problem),
        {"role": "assistant", "content": solution(problem.question)},
    ]
    ids, labels, positions = last_turn(build_tokenizer(), conversation, gap=300)
    answer = next(i for i, label in enumerate(labels) if label != -100)
    assert positions[: answer - 1] == list(range(answer - 1))  # the question, as it was
    assert positions[answer - 1 :] == list(range(answer - 1 + 300, len(ids) + 300))  # <|assistant|> on
    assert last_turn(build_tokenizer(), conversation)[2] == list(range(len(ids)))


def test_loads_offline_and_answers_a_task_prompt(shipped):
    model, tokenizer = shipped
    assert tokenizer.padding_side == "left" and tokenizer.chat_template
    assert model.config.max_position_embeddings >= CONF["model"]["context_length"]
    task = Arithmetic({"train": [], "eval": []})
    problem = Problem("arith/3+4*5+6-7*8", "3+4*5+6-7*8", "-27")
    [text] = backend(model, tokenizer, temperature=0.0).generate([(None, task.prompt(problem))], seed=0)
    assert task.extract_answer(text) is not None, text


def test_accuracy_matches_the_shipped_numbers(shipped):
    """Fails if the prompts change and the model no longer understands them.

    The tolerance is 4 binomial standard errors of a GUARD_N-question estimate around
    the single-agent accuracy measured on 1000 questions (eval.json): a correct model
    leaves that band with probability < 1e-4, a confused one (accuracy near 0) cannot
    enter it.
    """
    model, tokenizer = shipped
    stated = json.loads((MODEL / "eval.json").read_text())
    p = stated["single_accuracy"]
    tolerance = 4 * math.sqrt(p * (1 - p) / GUARD_N)
    torch.set_num_threads(2)
    problems = held_out_questions(GUARD_N, Recipe.eval_seed)
    got = evaluate(backend(model, tokenizer), problems, seed=0, rounds=1, agents=1)
    assert got["parse_rate"] >= 0.95
    assert abs(got["single_accuracy"] - p) <= tolerance, (got["single_accuracy"], p, tolerance)


def test_regeneration_script_runs_end_to_end(tmp_path, monkeypatch):
    # A smaller model and short generations keep this a smoke test of the code path.
    conf = {**CONF, "generation": {**CONF["generation"], "max_new_tokens": 8}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(conf))
    monkeypatch.setattr(make_tiny_model, "CONF", tmp_path / "tiny.yaml")
    out = tmp_path / "model"
    recipe = Recipe(
        hidden=32,
        layers=1,
        heads=2,
        ffn=64,
        stage1_steps=3,
        stage2_steps=2,
        refreshes=1,
        batch=4,
        debate_batch=2,
        log_every=5,
        log_n=2,
        eval_n=2,
    )
    assert train(out, recipe) > 0
    result = evaluate_folder(out, recipe)
    assert {"single_accuracy", "parse_rate", "round1_majority", "round2_majority"} <= result.keys()
    log = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]
    assert log and log[-1]["step"] == 5
    assert json.loads((out / "eval.json").read_text())["n"] == 2
    AutoTokenizer.from_pretrained(out, local_files_only=True)
    AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
