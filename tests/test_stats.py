"""mfsi.stats against exact values, and on synthetic paired data with a known effect."""

import math
import random

import pytest

from mfsi.stats import binomial_two_sided, mcnemar, mean_sem, paired_bootstrap


def test_mean_and_standard_error_of_the_mean():
    assert mean_sem([0.5]) == (0.5, None)
    mean, sem = mean_sem([0.40, 0.44, 0.48])
    assert mean == pytest.approx(0.44)
    assert sem == pytest.approx(math.sqrt(0.0016 / 3))  # sample variance 0.0016 over k = 3


def test_exact_binomial_two_sided():
    assert binomial_two_sided(0, 0) == 1.0
    assert binomial_two_sided(0, 5) == pytest.approx(2 / 32)
    assert binomial_two_sided(5, 5) == pytest.approx(2 / 32)  # symmetric
    assert binomial_two_sided(2, 10) == pytest.approx(2 * (1 + 10 + 45) / 1024)
    assert binomial_two_sided(5, 10) == 1.0
    assert 0 < binomial_two_sided(1000, 3000) < 1e-60  # big counts: exact integers, no overflow


def test_mcnemar_counts_discordant_questions_pooled_over_pairs():
    seed0 = ([1, 1, 0, 0, 1], [1, 0, 1, 0, 0])  # A alone right on 2, B alone right on 1
    seed1 = ([1, 0, 0], [0, 0, 0])  # A alone right on 1
    b, c, p = mcnemar([seed0, seed1])
    assert (b, c) == (3, 1)
    assert p == pytest.approx(2 * (1 + 4) / 16)


def synthetic(seed: int, n: int, effect: float) -> tuple[list[int], list[int]]:
    """Methods A and B answer n questions; question q is right with probability p_q (its
    ease, shared: paired results correlate) for B and p_q + effect for A (the planted effect)."""
    rng = random.Random(seed)
    ease = [rng.random() for _ in range(n)]
    return [int(rng.random() < p + effect) for p in ease], [int(rng.random() < p) for p in ease]


def test_a_planted_difference_is_found():
    pairs = [synthetic(seed, 500, 0.06) for seed in range(3)]  # about +5.8 points
    d = paired_bootstrap(pairs)
    assert 0.03 < d.estimate < 0.1 and d.low > 0
    assert d.per_pair == [pytest.approx(sum(a) / 500 - sum(b) / 500) for a, b in pairs]
    assert mcnemar(pairs)[2] < 0.001


def test_no_difference_is_not_found():
    pairs = [synthetic(seed, 500, 0.0) for seed in range(3)]
    d = paired_bootstrap(pairs)
    assert d.low < 0 < d.high
    assert mcnemar(pairs)[2] > 0.2


def test_one_pair_bootstraps_questions_and_is_reproducible():
    pair = synthetic(7, 300, 0.1)
    first, again = paired_bootstrap([pair], seed=3), paired_bootstrap([pair], seed=3)
    assert first == again
    # The percentile interval has the width of the normal one, 2 * 1.96 * sd(a - b) / sqrt(n).
    diffs = [x - y for x, y in zip(*pair)]
    mean = sum(diffs) / len(diffs)
    sd = math.sqrt(sum((v - mean) ** 2 for v in diffs) / len(diffs))
    assert first.high - first.low == pytest.approx(2 * 1.96 * sd / math.sqrt(300), rel=0.1)
    assert first.low < first.estimate < first.high


def test_continuous_values_and_the_seed_level_widen_the_interval():
    rng = random.Random(0)
    base = [[rng.random() for _ in range(200)] for _ in range(3)]
    # Every question moves by the same amount within a seed, but seeds disagree (+0.1, 0, -0.02):
    # without the seed level the interval would be as narrow as the question noise (none here).
    shifts = [0.1, 0.0, -0.02]
    pairs = [([v + s for v in values], values) for values, s in zip(base, shifts)]
    d = paired_bootstrap(pairs)
    assert d.estimate == pytest.approx(sum(shifts) / 3)
    assert d.low == pytest.approx(-0.02) and d.high == pytest.approx(0.1)


def test_bad_pairs_are_refused():
    with pytest.raises(ValueError):
        paired_bootstrap([])
    with pytest.raises(ValueError):
        paired_bootstrap([([1, 0], [1])])
