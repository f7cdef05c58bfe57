"""Evaluation metrics from debate records (mfsi.debate): pure functions, data in, dict out.

    m = debate_metrics(records, task)   # accuracy, stderr, accuracy_by_round, ...

Every question counts: a question whose majority is None (no agent parsed) is wrong, so
the denominator is always all questions (the official code drops them and inflates).
`m["per_question"]` keeps the values behind accuracy and consensus for each question, in
record order, and `m["questions"]` fingerprints that order: two runs with the same
fingerprint answered the same questions, so the report can compare them question by
question (a paired test) instead of only by their means.
"""

from __future__ import annotations

import hashlib
import math

from mfsi.chat import final_answer
from mfsi.tasks import Task


def stderr(p: float, n: int) -> float:
    """Standard error of an accuracy p over n questions."""
    return math.sqrt(p * (1 - p) / n) if n else 0.0


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def fingerprint(ids: list[str]) -> str:
    """A short stable digest of an ordered list of question ids."""
    return hashlib.sha1("\n".join(ids).encode()).hexdigest()[:16]


def debate_metrics(records: list[dict], task: Task) -> dict:
    """Accuracy of the final majority and its stderr, accuracy of the majority at each round,
    each agent's final-round accuracy, consensus (mean share of agents whose final answer
    agrees with the majority; 0 for a question without majority), the share of
    final-round answers that did not parse, and per question: whether the majority is
    correct (0/1) and how many agents' final answers agree with it."""
    n = len(records)
    rounds = len(records[0]["majorities"]) if records else 0
    agents = len(records[0]["answers"][0]) if records else 0
    finals = [r["answers"][-1] for r in records]
    correct = [int(task.is_correct(r["majority"], r["gold"])) for r in records]
    agreeing = [
        sum(None not in (a, r["majority"]) and task.equivalent(a, r["majority"]) for a in f)
        for f, r in zip(finals, records)
    ]
    accuracy = mean(correct)
    return {
        "n": n,
        "accuracy": accuracy,
        "stderr": stderr(accuracy, n),
        "accuracy_by_round": [
            mean(task.is_correct(r["majorities"][m], r["gold"]) for r in records) for m in range(rounds)
        ],
        "agent_accuracy": [
            mean(task.is_correct(f[k], r["gold"]) for f, r in zip(finals, records)) for k in range(agents)
        ],
        "consensus": mean(k / agents for k in agreeing),
        "parse_failure_rate": mean(a is None for f in finals for a in f),
        "questions": fingerprint([r["id"] for r in records]),
        "per_question": {"correct": correct, "agreeing": agreeing},
    }


def unfinished_reasoning(records: list[dict], opened: bool) -> int:
    """Responses whose reasoning never ended (cut by max_new_tokens or max_reasoning_tokens),
    which give no answer; `opened`: the generation prompt opens the reasoning (mfsi.chat)."""
    return sum(
        final_answer(text, opened) is None for r in records for texts in r["responses"] for text in texts
    )


def table(rows: list[dict]) -> str:
    """The metrics rows of a run's evaluations as the plain-text table a run prints: accuracy
    ± stderr and by round in %, consensus, embedding dissimilarity, unparsed answers."""
    header = ("iter", "n", "accuracy", "by round", "consensus", "dissim.", "unparsed")
    lines = ["{:>4} {:>5} {:>13} {:>18} {:>9} {:>8} {:>8}".format(*header)]
    for r in rows:
        by_round = " ".join(f"{100 * a:.1f}" for a in r["accuracy_by_round"])
        accuracy = f"{100 * r['accuracy']:.1f} ± {100 * r['stderr']:.1f}"
        dissimilarity = r.get("embedding_dissimilarity")
        lines.append(
            f"{r['iteration']:>4} {r['n']:>5} {accuracy:>13} {by_round:>18} {r['consensus']:>9.2f} "
            f"{'-' if dissimilarity is None else f'{dissimilarity:.3f}':>8} {r['parse_failure_rate']:>8.2f}"
        )
    return "\n".join(lines)
