"""Metrics arithmetic on hand-made debate records."""

import math

import pytest

from mfsi.metrics import debate_metrics
from mfsi.tasks import Arithmetic

TASK = Arithmetic({"train": [], "eval": []})


def rec(gold: str, answers: list[list[str | None]], majorities: list[str | None]) -> dict:
    return {"gold": gold, "answers": answers, "majorities": majorities, "majority": majorities[-1]}


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


def test_accuracy_by_round_follows_each_rounds_majority():
    m = debate_metrics([rec("4", [["1", "1", "4"], ["4", "4", "1"]], ["1", "4"])], TASK)
    assert m["accuracy_by_round"] == [0.0, 1.0] and m["accuracy"] == 1.0 and m["stderr"] == 0.0
