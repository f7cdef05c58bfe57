"""Metrics arithmetic on hand-made debate records; the tracker (metrics.jsonl, W&B mode, plot)."""

import math

import pytest
from omegaconf import OmegaConf

from mfsi.metrics import debate_metrics
from mfsi.plots import plot_rounds
from mfsi.tasks import Arithmetic
from mfsi.tracking import Tracker, wandb_mode

TASK = Arithmetic({"train": [], "eval": []})


def rec(gold: str, answers: list[list[str | None]], majorities: list[str | None]) -> dict:
    return {
        "id": gold,
        "gold": gold,
        "answers": answers,
        "majorities": majorities,
        "majority": majorities[-1],
    }


RECORDS = [
    rec("5", [["5", "4", "5"], ["5", "5", "5"]], ["5", "5"]),  # right, full consensus
    rec("3", [["3", "1", "1"], ["1", None, "1"]], ["1", "1"]),  # wrong, 2/3 agree, 1 unparsed
    rec("2", [[None, None, None], [None, None, None]], [None, None]),  # no majority: wrong, counted
    rec("9", [["8", "9", "9"], ["9", "9.0", "7"]], ["9", "9"]),  # right after round 1 already
]


def test_accuracy_counts_every_question_and_unparsed_as_wrong():
    m = debate_metrics(RECORDS, TASK)
    assert m["n"] == 4
    assert m["accuracy"] == pytest.approx(2 / 4)
    assert m["stderr"] == pytest.approx(math.sqrt(0.5 * 0.5 / 4))
    assert m["accuracy_by_round"] == pytest.approx([2 / 4, 2 / 4])
    assert m["agent_accuracy"] == pytest.approx([2 / 4, 2 / 4, 1 / 4])
    assert m["consensus"] == pytest.approx((1 + 2 / 3 + 0 + 2 / 3) / 4)
    assert m["parse_failure_rate"] == pytest.approx(4 / 12)
    assert m["per_question"] == {"correct": [1, 0, 0, 1], "agreeing": [3, 2, 0, 2]}


def test_question_fingerprint_follows_ids_and_their_order():
    m = debate_metrics(RECORDS, TASK)
    assert m["questions"] == debate_metrics(list(RECORDS), TASK)["questions"]
    assert m["questions"] != debate_metrics(RECORDS[::-1], TASK)["questions"]
    assert m["questions"] != debate_metrics(RECORDS[:3], TASK)["questions"]


def test_accuracy_by_round_follows_each_rounds_majority():
    m = debate_metrics([rec("4", [["1", "1", "4"], ["4", "4", "1"]], ["1", "4"])], TASK)
    assert m["accuracy_by_round"] == [0.0, 1.0] and m["accuracy"] == 1.0 and m["stderr"] == 0.0


def test_wandb_mode_config_then_env_then_api_key(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc login
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode("online") == "online" and wandb_mode(None) == "disabled"
    monkeypatch.delenv("WANDB_MODE")
    assert wandb_mode(None) == "offline"  # no key: never block on a login
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode(None) == "online"


def test_tracker_without_wandb_appends_rows_and_plots(tmp_path):
    cfg = OmegaConf.create({"logger": {"name": "none"}})
    tracker = Tracker(cfg, tmp_path)
    row = {
        "iteration": 0,
        "split": "eval",
        "task": "arithmetic",
        "method": "debate",
        "agents": 3,
        **debate_metrics(RECORDS, TASK),
    }
    tracker.log(row, RECORDS)
    tracker.log({**row, "iteration": 1}, RECORDS)
    assert [r["iteration"] for r in tracker.logged()] == [0, 1]
    plot_rounds(tracker.logged(), tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"
