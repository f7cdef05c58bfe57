"""Answer extraction and equivalence: a wrong grader silently poisons the finetuning data."""

import threading
import time

import pytest

from mfsi import grading
from mfsi.tasks import GSM, MATH, Arithmetic

math_task = MATH({})
numeric_task = Arithmetic({})

# (model output, expected extracted answer for MATH)
EXTRACTION = [
    (r"so the answer is \boxed{5}.", "5"),
    (r"\boxed{\frac{1}{\sqrt{2}}}", r"\frac{1}{\sqrt{2}}"),
    (r"first \boxed{3} then corrected to \boxed{4}", "4"),
    (r"nested \boxed{\left(\frac{a}{b}\right)^{2}} end", r"(\frac{a}{b})^{2}"),
    (r"\fbox{12}", "12"),
    (r"The answer is \boxed 5", "5"),
    (r"The answer is $\boxed 7$.", "7"),
    (r"\boxed{\dfrac{3}{4}}", r"\frac{3}{4}"),
    (r"\boxed{\tfrac{3}{4}}", r"\frac{3}{4}"),
    (r"\boxed{\$1,000}", "1000"),
    (r"\boxed{18.00}", "18.00"),
    (r"\boxed{50\%}", "50"),
    (r"\boxed{5 \text{ cm}}", "5"),
    (r"\boxed{12\text{ inches}}", "12"),
    (r"\boxed{25\text{ cm}^2}", "25"),
    (r"\boxed{\text{Monday}}", r"\text{Monday}"),
    (r"\boxed{120^\circ}", "120"),
    (r"\boxed{x = 5}", "5"),
    (r"\boxed{-3}", "-3"),
    (r"\boxed{ 7 }", "7"),
    (r"\boxed{\{1,2\}}", r"\{1,2\}"),
    ("no boxed answer here, just 42", None),
    (r"\boxed{", None),
    (r"\boxed{}", None),
    (r"\boxed{unbalanced", None),
    ("", None),
]

# (a, b, equivalent under MATH grading)
EQUIVALENCE = [
    ("18.00", "18", True),
    ("1,000", "1000", True),
    (r"\$1,000", "1000", True),
    ("-3", "-3.0", True),
    ("0.5", r"\frac{1}{2}", True),
    (r"\dfrac{1}{2}", r"\frac12", True),
    (r"\frac{\sqrt{2}}{2}", r"\frac{1}{\sqrt{2}}", True),
    (r"2\sqrt{2}", r"\sqrt{8}", True),
    ("x+1", "1+x", True),
    (r"x^2+2x+1", r"(x+1)^2", True),
    (r"9\pi", r"9 \pi", True),
    (r"\pi", "3.14", False),
    (r"50\%", "50", True),
    (r"120^\circ", "120", True),
    (r"5 \text{ cm}", "5", True),
    (r"\frac{5}{6}", r"\frac{10}{12}", True),
    ("3/4", r"\frac{3}{4}", True),
    (r"(1,2)", r"(1,2)", True),
    (r"(1,2)", r"(2,1)", False),
    (r"\{1,2\}", r"\{2,1\}", True),
    ("2", "3", False),
    ("-4", "4", False),
    ("0.333", r"\frac{1}{3}", False),
    (r"\sqrt{2}", "1.41", False),
    ("garbage}}{{", "3", False),
    (r"\frac{", r"\frac{1}{2}", False),
    ("", "0", False),
    (None, "3", False),
    ("3", None, False),
    (r"\text{Monday}", r"\text{Monday}", True),
    (r"\text{(A)}", r"\text{(B)}", False),
    ("y=7", "7", True),
    (r"\left(3,4\right)", "(3,4)", True),
    ("10^{3}", "1000", True),
    (r"1\,000", "1000", True),
    (r"\infty", r"\infty", True),
    # matrices and vectors compare cell by cell, however they are spaced
    (r"\begin{pmatrix} -7 \\ 16 \\ 5 \end{pmatrix}", r"\begin{pmatrix} -7 \\ 16 \\ 6 \end{pmatrix}", False),
    (r"\begin{pmatrix} -7 \\ 16 \\ 5 \end{pmatrix}", r"\begin{pmatrix}-7\\16\\5\end{pmatrix}", True),
    (r"\begin{pmatrix} 1/5 \\ -18/5 \end{pmatrix}", r"\begin{pmatrix} 1/5 \\ -19/5 \end{pmatrix}", False),
    (
        r"\begin{pmatrix} 1/5 \\ -18/5 \end{pmatrix}",
        r"\begin{pmatrix} 0.2 \\ -\frac{18}{5} \end{pmatrix}",
        True,
    ),
    (r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}", r"\begin{bmatrix} 1 & 2 \\ 3 & 4 \end{bmatrix}", True),
    (r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}", r"\begin{pmatrix} 1 & 3 \\ 2 & 4 \end{pmatrix}", False),
    (
        r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}",
        r"\begin{pmatrix} 1 \\ 2 \\ 3 \\ 4 \end{pmatrix}",
        False,
    ),
    (r"\begin{pmatrix} -7 \\ 16 \end{pmatrix}", "(-7, 16)", True),  # a vector written as a tuple
    (r"\begin{pmatrix} -7 \\ 16 \end{pmatrix}", "(16, -7)", False),
    # tuples and intervals: in order, with the same brackets
    (r"\left( 3, \frac{\pi}{2} \right)", r"(3,\frac{\pi}{2})", True),
    (r"\left( 3, \frac{\pi}{2} \right)", r"(3,-\frac{\pi}{2})", False),
    ("[0,1)", "[0,1]", False),
    ("[0,1)", "(0,1)", False),
    (r"(-\infty,-4)\cup(-4,6)", r"(-4,6) \cup (-\infty,-4)", True),
    (r"(-\infty,-4)\cup(-4,6)", r"(-\infty,-4)\cup(-4,6]", False),
    (r"x \in [-2,7]", "[-2,7]", True),
    ("x > 2", r"(2, \infty)", True),
    ("x > 2", r"[2, \infty)", False),
    ("(1,2)", "1,2", False),  # an ordered pair or an interval is not a list of two numbers
    # sets and lists: any order, same members
    ("1,2,-3", "-3, 2, 1", True),
    ("1,2,-3", "1, 2, 3", False),
    ("1,2", "1,2,2", False),
    (r"1 \pm \sqrt{19}", r"1+\sqrt{19}, 1-\sqrt{19}", True),
    ("19 \\text{ and }43", "43, 19", True),
    # exact decimals, never rounded
    ("0.0000672", "0.0000673", False),
    ("0.0000672", r"\frac{672}{10000000}", True),
    (r"\sqrt{2}", "1.414214", False),
    (r"\frac{1}{3}", "0.333333", False),
    (r"2.5x", r"\frac{5x}{2}", True),
    # numbers written with LaTeX thousands separators
    (r"11,\! 111,\! 111,\! 100", "11111111100", True),
    (r"1{,}000", "1000", True),
    ("27,93", "2793", False),  # not a thousands group: a list of two numbers
    # signs, mixed numbers, text answers
    (r"-\frac{\sqrt{3}}{2}", r"\frac{\sqrt{3}}{2}", False),
    (r"6\frac{3}{4}", r"\frac{27}{4}", True),
    (r"\frac \pi4 + 2 - \sqrt2", r"\frac{\pi}{4}+2-\sqrt{2}", True),  # one-token arguments
    (r"\frac \pi4 + 2 - \sqrt2", "2", False),
    (r"\text{(C)}", "C", True),
    (r"\text{(C)}", r"\text{(D)}", False),
    (r"\text{A,D}", r"\text{D, A}", True),
    (r"\text{A,D}", r"\text{A, C}", False),
    (r"\text{ACF}", r"\text{CAF}", False),  # words, not products of variables
    (r"\text{Evelyn}", "evelyn", True),
    (r"\text{Evelyn}", r"\text{Evelin}", False),
    ("a", r"\text{A}", False),  # a variable is not choice (A)
    ("4", "4t", False),  # t is a variable here, not a unit
    (r"9\text{ a.m.}", "9", False),
    (r"5\mathrm{cm}", "5", True),
    (r"2+3\mathrm{i}", "2+3", False),  # \mathrm{i} is a number, not a unit
    # numerals in a base compare by base and value
    ("40", "40_9", False),
    ("4210_7", "4210_{7}", True),
    ("4210_7", "4210_5", False),
    ("20x + 23y + 26z - 69 = 0", "-20x - 23y - 26z + 69 = 0", True),
    ("20x + 23y + 26z - 69 = 0", "20x + 23y + 26z + 69 = 0", False),
]


@pytest.mark.parametrize("text,expected", EXTRACTION)
def test_math_extraction(text, expected):
    assert math_task.extract_answer(text) == expected


@pytest.mark.parametrize("a,b,expected", EQUIVALENCE)
def test_math_equivalence(a, b, expected):
    assert math_task.equivalent(a, b) is expected


def test_enough_math_cases():
    assert len(EXTRACTION) + len(EQUIVALENCE) >= 80


@pytest.mark.parametrize("a,b,expected", EQUIVALENCE)
def test_math_equivalence_is_symmetric(a, b, expected):
    # Voting clusters by equivalence with each cluster's first member: order must not matter.
    assert math_task.equivalent(b, a) is math_task.equivalent(a, b)


def test_math_normalisation_keeps_row_breaks_braces_arguments_and_is_idempotent():
    column = r"\begin{pmatrix} -7 \\ 16 \end{pmatrix}"
    assert grading.normalize(column) == r"\begin{pmatrix} -7 \\ 16 \end{pmatrix}"
    assert grading.normalize(r"\frac \pi4 + \sqrt[3]2") == r"\frac{\pi}{4} + \sqrt[3]{2}"
    for answer, _, _ in EQUIVALENCE:
        if answer is not None:
            assert grading.normalize(grading.normalize(answer)) == grading.normalize(answer)


@pytest.mark.parametrize(
    "text,expected",
    [
        (r"\boxed{1,000}", "1000"),
        (r"\boxed{\$1,000}", "1000"),
        (r"\boxed{-3}", "-3"),
        (r"\boxed{18.00}", "18"),
        (r"\boxed{2.50}", "2.5"),
        (r"\boxed{\frac{1}{4}}", "0.25"),
        (r"\boxed{\dfrac{1}{3}}", "1/3"),
        (r"\boxed{45\%}", "45"),
        (r"\boxed{7 \text{ apples}}", "7"),
        (r"\boxed 12", "12"),
        (r"\boxed{x}", None),
        (r"\boxed{1+1}", None),
        ("the answer is 5", None),
    ],
)
def test_numeric_extraction_is_canonical(text, expected):
    assert numeric_task.extract_answer(text) == expected
    assert GSM({}).extract_answer(text) == expected


@pytest.mark.parametrize(
    "a,b,expected",
    [
        ("18", "18.00", True),
        ("1000", "1,000", True),
        ("-3", "3", False),
        ("0.5", "1/2", True),
        (None, "1", False),
    ],
)
def test_numeric_equivalence_is_exact(a, b, expected):
    assert numeric_task.equivalent(a, b) is expected


def test_unparsed_prediction_is_wrong():
    assert not numeric_task.is_correct(None, "5")
    assert not math_task.is_correct(None, "5")
    assert math_task.is_correct("5.0", "5")


def test_format_number():
    from fractions import Fraction

    assert grading.format_number(Fraction(-27)) == "-27"
    assert grading.format_number(Fraction(5, 2)) == "2.5"
    assert grading.format_number(Fraction(2, 3)) == "2/3"


GARBAGE = [
    "\\" * 50,
    "{" * 200,
    r"\frac{\frac{\frac{",
    "$$$",
    "\x00\x01",
    "1" * 5000,
    "(" * 2000 + "1" + ")" * 2000,
    "(" * 150 + "1" + ")" * 150,
    r"\begin{pmatrix}" * 60 + "1" + r"\end{pmatrix}" * 60,
    ",".join(["1"] * 190),
    "".join(chr(33 + (i * 7919) % 94) for i in range(5000)),  # printable noise, 5000 chars
]


@pytest.mark.parametrize("garbage", GARBAGE)
def test_garbage_never_raises(garbage):
    assert math_task.extract_answer(garbage) in (None, grading.normalize(garbage))
    for other in ("1", garbage, garbage + "1", r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}"):
        start = time.thread_time()
        assert math_task.equivalent(garbage, other) in (True, False)
        assert time.thread_time() - start < grading.COMPARISON_TIMEOUT_S + 0.5
    assert numeric_task.extract_answer(garbage) is None


def test_a_slow_comparison_stops_at_the_deadline(monkeypatch):
    # Comparing with a huge power makes sympy work out 2^(2^100): the deadline ends it.
    monkeypatch.setattr(grading, "COMPARISON_TIMEOUT_S", 0.5)
    start = time.thread_time()
    assert math_task.equivalent("2^{2^{100}}", "5") is False
    assert time.thread_time() - start < 1.0


def test_math_equivalence_works_outside_the_main_thread():
    # math-verify's timeout uses signal.alarm, which only the main thread may use.
    results = []
    thread = threading.Thread(target=lambda: results.append(math_task.equivalent(r"\frac{2}{4}", "0.5")))
    thread.start()
    thread.join()
    assert results == [True]
