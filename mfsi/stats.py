"""Statistics for the report: pure functions over per-run and per-question values.

    mean, sem = mean_sem([0.432, 0.446, 0.428])              # k runs (seeds) of one method
    b, c, p = mcnemar([(correct_a_seed0, correct_b_seed0), ...])
    d = paired_bootstrap([(values_a_seed0, values_b_seed0), ...])  # d.estimate, d.low, d.high

A pair is two methods' per-question values on the same questions in the same order (one
seed of each; mfsi.metrics fingerprints the questions so the report pairs only those).
Definitions, with k pairs and a_iq, b_iq the two methods' values on question q of pair i:
- mean_sem: the mean of k values and its standard error s / sqrt(k), s the sample standard
  deviation (k - 1 in its denominator); None for k = 1.
- mcnemar (0/1 values: correct or not): exact two-sided McNemar test pooled over the pairs.
  b = questions A got right and B wrong, c = the reverse, summed over pairs. Under H0 (A
  and B exchangeable on every question) each of the n = b + c discordant questions favours
  A with probability 1/2, so p = min(1, 2 P(X <= min(b, c))), X ~ Binomial(n, 1/2), and
  p = 1 when n = 0. Summing over seeds is valid because H0 holds within each seed. The test
  takes the trained models as given: it asks whether these runs differ beyond question
  sampling, not whether retraining would give the same difference.
- paired_bootstrap (any values: correct, share of agents agreeing, dissimilarity):
  estimate = mean_i mean_q (a_iq - b_iq), each pair weighing the same, and a percentile
  confidence interval from `samples` resamples: each draws k pairs with replacement (seed
  to seed variation, i.e. training randomness) and, within each drawn pair, its questions
  with replacement (the same questions for A and B: paired). With one pair this is the
  ordinary paired bootstrap over questions. With few pairs the seed level is coarse (3
  seeds give 10 distinct draws), so the report also shows each pair's own difference.
  The resampling is seeded: the same input always gives the same interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Pair = tuple[Sequence[float], Sequence[float]]


def mean_sem(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean of the values and the standard error of that mean (None for one value)."""
    k = len(values)
    mean = sum(values) / k
    if k == 1:
        return mean, None
    variance = sum((v - mean) ** 2 for v in values) / (k - 1)
    return mean, math.sqrt(variance / k)


def binomial_two_sided(successes: int, trials: int) -> float:
    """Exact two-sided p of `successes` in `trials` fair coin flips (integer arithmetic)."""
    if trials == 0:
        return 1.0
    tail = sum(math.comb(trials, i) for i in range(min(successes, trials - successes) + 1))
    return min(1.0, 2 * tail / 2**trials)


def mcnemar(pairs: Sequence[Pair]) -> tuple[int, int, float]:
    """(b, c, p): A right and B wrong, A wrong and B right, exact p; see the module doc."""
    b = sum(int(x and not y) for a, other in pairs for x, y in zip(a, other, strict=True))
    c = sum(int(y and not x) for a, other in pairs for x, y in zip(a, other, strict=True))
    return b, c, binomial_two_sided(b, b + c)


@dataclass(frozen=True)
class Difference:
    estimate: float  # mean over pairs of the mean per-question difference a - b
    low: float  # the confidence interval's bounds
    high: float
    per_pair: list[float]  # each pair's own mean difference, in the order given


def paired_bootstrap(
    pairs: Sequence[Pair], samples: int = 10_000, level: float = 0.95, seed: int = 0
) -> Difference:
    """The paired difference A - B and its bootstrap interval over pairs and questions."""
    if not pairs:
        raise ValueError("paired_bootstrap needs at least one pair")
    diffs = [np.asarray(a, dtype=float) - np.asarray(b, dtype=float) for a, b in pairs]
    if any(len(a) != len(b) or len(a) == 0 for a, b in pairs):
        raise ValueError("each pair needs two equally long, non-empty lists of per-question values")
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, len(diffs), size=(samples, len(diffs)))  # which pair fills each slot
    total = np.zeros(samples)
    for slot in range(len(diffs)):
        for i, d in enumerate(diffs):
            rows = np.flatnonzero(drawn[:, slot] == i)
            total[rows] += _resampled_means(d, len(rows), rng)
    low, high = np.quantile(total / len(diffs), [(1 - level) / 2, (1 + level) / 2])
    per_pair = [float(d.mean()) for d in diffs]
    return Difference(sum(per_pair) / len(per_pair), float(low), float(high), per_pair)


def _resampled_means(values: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Means of `count` resamples of values with replacement. Few distinct values (0/1
    outcomes, agent counts) are resampled as multinomial counts over those values: the same
    distribution, hundreds of times faster than drawing every question."""
    distinct, counts = np.unique(values, return_counts=True)
    if len(distinct) <= 64:
        return rng.multinomial(len(values), counts / len(values), size=count) @ distinct / len(values)
    chunk = max(1, 2_000_000 // len(values))  # bounds memory: chunk x n indices at a time
    means = [
        values[rng.integers(0, len(values), size=(min(chunk, count - start), len(values)))].mean(axis=1)
        for start in range(0, count, chunk)
    ]
    return np.concatenate(means) if means else np.zeros(0)
