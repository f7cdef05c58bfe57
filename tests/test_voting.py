"""Majority vote: equivalence clusters, unparsed answers, seeded tie-breaks."""

from mfsi.grading import math_equal, numbers_equal
from mfsi.voting import clusters, majority


def test_equivalent_answers_vote_together():
    assert clusters(["18", "7", "18.00", None, "7.0", "18"], numbers_equal) == [
        ["18", "18.00", "18"],
        ["7", "7.0"],
    ]
    assert majority(["18.0", "7", "18"], numbers_equal, key="k") == "18.0"  # the cluster's first member


def test_unparsed_answers_do_not_vote():
    assert majority([None, None, "3"], numbers_equal, key="k") == "3"
    assert majority([None, None, None], numbers_equal, key="k") is None
    assert majority([], numbers_equal, key="k") is None


def test_ties_are_seeded_stable_and_not_by_string_order():
    answers = ["1", "2", None]
    picks = [majority(answers, numbers_equal, key=f"0/q{i}") for i in range(40)]
    assert picks == [majority(answers, numbers_equal, key=f"0/q{i}") for i in range(40)]  # stable
    assert set(picks) == {"1", "2"}  # both sides of the tie win for some questions
    assert majority(["1", "2", "2"], numbers_equal, key="0/q0") == "2"  # no tie: no randomness


def test_math_votes_merge_only_equal_matrices_in_any_order():
    # The grader used to read these vectors as one-entry matrices and merge all three.
    five, six = r"\begin{pmatrix} -7 \\ 16 \\ 5 \end{pmatrix}", r"\begin{pmatrix} -7 \\ 16 \\ 6 \end{pmatrix}"
    answers = [six, five, r"\begin{pmatrix}-7\\16\\5\end{pmatrix}", None]
    for ordered in (answers, answers[::-1]):
        groups = clusters(ordered, math_equal)
        assert sorted(map(len, groups)) == [1, 2]
        assert majority(ordered, math_equal, key="k") in (five, r"\begin{pmatrix}-7\\16\\5\end{pmatrix}")
