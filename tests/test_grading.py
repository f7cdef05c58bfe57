"""Answer extraction and equivalence: a wrong grader silently poisons the finetuning data."""

import threading

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
]


@pytest.mark.parametrize("text,expected", EXTRACTION)
def test_math_extraction(text, expected):
    assert math_task.extract_answer(text) == expected


@pytest.mark.parametrize("a,b,expected", EQUIVALENCE)
def test_math_equivalence(a, b, expected):
    assert math_task.equivalent(a, b) is expected


def test_enough_math_cases():
    assert len(EXTRACTION) + len(EQUIVALENCE) >= 40


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


@pytest.mark.parametrize(
    "garbage", ["\\" * 50, "{" * 200, r"\frac{\frac{\frac{", "$$$", "\x00\x01", "1" * 5000]
)
def test_garbage_never_raises(garbage):
    assert math_task.extract_answer(garbage) in (None, grading.normalize(garbage))
    assert math_task.equivalent(garbage, "1") in (True, False)
    assert numeric_task.extract_answer(garbage) is None


def test_math_equivalence_works_outside_the_main_thread():
    # math-verify's timeout uses signal.alarm, which only the main thread may use.
    results = []
    thread = threading.Thread(target=lambda: results.append(math_task.equivalent(r"\frac{2}{4}", "0.5")))
    thread.start()
    thread.join()
    assert results == [True]
