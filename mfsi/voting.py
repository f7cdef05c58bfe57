"""Majority vote over parsed answers, with the task's own notion of equivalence.

    majority(["18", "18.0", "7", None], task.equivalent, key="0/arith/1+2")  # -> "18"

Equivalent answers form one cluster (represented by its first member); unparsed answers
(None) do not vote; a tie between the largest clusters is broken by a random choice
seeded with `key` (run seed + question id), so it is stable across reruns and does not
favour any string order (the official code picks the alphabetically first).
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
    """The most common answer up to equivalence; None when no answer parsed."""
    groups = clusters(answers, equivalent)
    if not groups:
        return None
    top = max(map(len, groups))
    tied = [g[0] for g in groups if len(g) == top]
    return tied[0] if len(tied) == 1 else random.Random(key).choice(tied)
