"""Grader audit: how the grader reads a dataset's gold answers, and how fast it compares them.

    python -m mfsi.audit --task math --path data/prm800k/math_splits/test.jsonl
    python -m mfsi.audit --task math --path data/MATH --pairs    # + every cross-problem pair
    python -m mfsi.audit --task gsm --path data/grade_school_math/data

Reports how many gold answers were found and are readable (every part a number, an
expression math-verify parses, or text), that each equals itself, that each survives a
round trip through \\boxed{} and extraction, agreement with the file's own `answer` field
where it has one (PRM800K/MATH500), and comparison times: every gold against the next
problem's gold, cold (first sight of each answer, parsing included). With --pairs, every
pair of different problems' golds with different texts is compared, and those the grader
calls equal are listed: each must be genuinely equal.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from dataclasses import dataclass, field
from itertools import combinations

from mfsi import grading
from mfsi.errors import DataError
from mfsi.tasks import GSM, MATH, Task, parse_problem, read_local

ALL_LEVELS = [1, 2, 3, 4, 5]


@dataclass
class Audit:
    records: int = 0
    golds: dict[str, str] = field(default_factory=dict)  # problem id -> gold answer
    unusable: list[str] = field(default_factory=list)  # where + why, for records without a gold
    unreadable: list[str] = field(default_factory=list)  # golds the grader reads as text only
    not_self_equal: list[str] = field(default_factory=list)
    round_trip_failures: list[str] = field(default_factory=list)
    answer_field: int = 0  # records with an `answer` field
    answer_disagreements: list[tuple[str, str, str]] = field(default_factory=list)  # id, answer, gold
    timings: list[tuple[float, str, str]] = field(default_factory=list)  # seconds, a, b
    text_pairs: int = 0  # pairs of different gold texts compared (--pairs)
    pairs: int = 0  # cross-problem pairs whose golds differ in text (--pairs)
    same_text_pairs: int = 0  # cross-problem pairs whose golds are the same text
    equal_pairs: list[tuple[str, str]] = field(default_factory=list)  # different texts judged equal


def _timed(task: Task, a: str, b: str, audit: Audit) -> bool:
    """task.equivalent, timed in CPU seconds of this thread (the machine may be shared) with
    the garbage collector paused (its pauses belong to the whole program, not one comparison)."""
    gc.disable()
    start = time.thread_time()
    equal = task.equivalent(a, b)
    audit.timings.append((time.thread_time() - start, a, b))
    gc.enable()
    return equal


def _cross_pairs(task: Task, result: Audit) -> None:
    """Compare every two different gold texts once; count the problem pairs each stands for."""
    ids: dict[str, list[str]] = {}
    for id_, gold in result.golds.items():
        ids.setdefault(gold, []).append(id_)
    result.same_text_pairs = sum(len(v) * (len(v) - 1) // 2 for v in ids.values())
    for a, b in combinations(ids, 2):
        result.text_pairs += 1
        result.pairs += len(ids[a]) * len(ids[b])
        if _timed(task, a, b, result):
            result.equal_pairs.append((f"{a}  [{ids[a][0]}]", f"{b}  [{ids[b][0]}]"))


def audit(task_name: str, path: str, pairs: bool = False) -> Audit:
    """Read every record of a gsm or math file/folder and check how the grader handles it."""
    import math_verify  # noqa: F401  # imported once here, not inside the first timed comparison

    task = GSM({}) if task_name == "gsm" else MATH({})
    result = Audit()
    answers: dict[str, str] = {}
    for records in read_local(path).values():
        for record, id_, where in records:
            result.records += 1
            try:
                problem = parse_problem(task_name, record, id_, where, ALL_LEVELS)
            except DataError as e:
                result.unusable.append(str(e))
                continue
            if problem is None:
                result.unusable.append(f"{where}: no \\boxed answer or no level")
                continue
            result.golds[problem.id] = problem.answer
            if task_name == "math" and isinstance(record.get("answer"), str):
                answers[problem.id] = record["answer"]
    golds = list(result.golds.values())
    for a, b in zip(golds, golds[1:]):  # first, so that these are cold: parsing included
        _timed(task, a, b, result)
    for id_, gold in result.golds.items():
        if task_name == "math" and not grading.is_readable(gold):
            result.unreadable.append(f"{id_}: {gold}")
        if not task.equivalent(gold, gold):
            result.not_self_equal.append(f"{id_}: {gold}")
        if not task.is_correct(task.extract_answer(f"so the answer is \\boxed{{{gold}}}."), gold):
            result.round_trip_failures.append(f"{id_}: {gold}")
    result.answer_field = len(answers)
    for id_, answer in answers.items():
        if not _timed(task, answer, result.golds[id_], result):
            result.answer_disagreements.append((id_, answer, result.golds[id_]))
    if pairs:
        _cross_pairs(task, result)
    return result


def _listed(items: list, limit: int = 10) -> str:
    shown = "".join(f"\n    {item}" for item in items[:limit])
    return shown + (f"\n    ... and {len(items) - limit} more" if len(items) > limit else "")


def _duration(seconds: float) -> str:
    return f"{seconds * 1e6:.0f} us" if seconds < 1e-3 else f"{seconds * 1e3:.1f} ms"


def report(result: Audit, slowest: int = 5) -> str:
    """The audit as text: counts, then what failed, then timings."""
    n = len(result.golds)
    lines = [
        f"records: {result.records}",
        f"gold answers found: {n} ({n / max(result.records, 1):.2%}){_listed(result.unusable)}",
        f"gold answers readable: {n - len(result.unreadable)}/{n}{_listed(result.unreadable)}",
        f"gold equals itself: {n - len(result.not_self_equal)}/{n}{_listed(result.not_self_equal)}",
        f"gold survives \\boxed{{}} and extraction: {n - len(result.round_trip_failures)}/{n}"
        + _listed(result.round_trip_failures),
    ]
    if result.answer_field:
        agree = result.answer_field - len(result.answer_disagreements)
        lines.append(
            f"`answer` field equals gold: {agree}/{result.answer_field}"
            + _listed([f"{i}: answer {a!r} vs gold {g!r}" for i, a, g in result.answer_disagreements])
        )
    if result.text_pairs:
        lines.append(
            f"cross-problem pairs: {result.same_text_pairs} with the same gold text; {result.pairs} with "
            f"different texts ({result.text_pairs} pairs of texts), "
            f"of which {len(result.equal_pairs)} text pairs are judged equal (inspect them)"
            + _listed([f"{a}  ==  {b}" for a, b in result.equal_pairs], limit=1000)
        )
    if result.timings:
        seconds = sorted(t for t, _, _ in result.timings)
        lines.append(
            f"comparisons timed: {len(seconds)}; median {_duration(statistics.median(seconds))}, "
            f"99th percentile {_duration(seconds[int(0.99 * (len(seconds) - 1))])}, "
            f"max {_duration(seconds[-1])} of CPU time (timeout {grading.COMPARISON_TIMEOUT_S} s)"
            + _listed(
                [f"{_duration(t)}: {a!r} vs {b!r}" for t, a, b in sorted(result.timings)[::-1]], slowest
            )
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mfsi.audit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=["gsm", "math"], required=True)
    parser.add_argument("--path", required=True, help="a JSONL file or a folder, as task.path takes")
    parser.add_argument("--pairs", action="store_true", help="compare every cross-problem pair (slow)")
    parser.add_argument("--slowest", type=int, default=5, help="slowest comparisons to list")
    args = parser.parse_args(argv)
    try:
        print(report(audit(args.task, args.path, args.pairs), args.slowest))
    except DataError as e:
        parser.exit(2, f"error: {e}\n")


if __name__ == "__main__":
    main()
