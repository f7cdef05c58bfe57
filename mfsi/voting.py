"""Majority vote over parsed answers, with the task's own notion of equivalence.

    majority(["18", "18.0", "7", None], task.equivalent, key="0/arith/1+2")  # -> "18"

Answers are clustered in order of appearance: each joins the first cluster whose first
member it is equivalent to, so `equivalent` must be symmetric (task graders are). Unparsed
answers (None) do not vote. The majority answer is the largest cluster's first member; when
several clusters tie for largest, `random.Random(key).choice` picks one of them (listed in
order of appearance), seeded with `key` (run seed + question id): stable across reruns, and
blind to how the answers are spelt (the official code picks the alphabetically first).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence


def clusters(answers: Sequence[str | None], equivalent: Callable[[str, str], bool]) -> list[list[str]]:
    """Parsed answers grouped by equivalence to each group's first member, in order of appearance."""
    groups: list[list[str]] = []
    for answer in answers:
        if answer is None:
            continue
        group = next((g for g in groups if equivalent(g[0], answer)), None)
        if group is None:
            groups.append([answer])
        else:
            group.append(answer)
    return groups


def majority(answers: Sequence[str | None], equivalent: Callable[[str, str], bool], key: str) -> str | None:
    """The first member of the largest cluster (a seeded choice among tied ones); None if none parsed."""
    groups = clusters(answers, equivalent)
    if not groups:
        return None
    top = max(map(len, groups))
    tied = [g[0] for g in groups if len(g) == top]
    return tied[0] if len(tied) == 1 else random.Random(key).choice(tied)
