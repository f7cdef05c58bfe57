"""The loaders and the grader on the real public GSM8K and MATH files (../shared/data).

Skipped, with the reason shown, where that folder is absent (a fresh clone). Every GSM8K and
MATH record is read. The suites of wrong and of equivalent answers are built here from the
real gold answers: numeric and structured golds from all 5000 MATH test problems, symbolic
ones (each new text costs math-verify a parse) from the 500 MATH500 problems, so that the
whole file runs in seconds. Every pair of different problems' golds is checked by
`python -m mfsi.audit --pairs` instead (minutes; README "Grading" has the numbers).
"""

import re
from fractions import Fraction
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from mfsi.tasks import GSM, MATH, load_task, parse_problem, read_local

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"real GSM8K/MATH files not found at {DATA}")
MATH_TEST = DATA / "math" / "hendrycks_test.jsonl"
MATH500 = DATA / "math" / "prm800k_test.jsonl"
math_task = MATH({})


def records(path: Path) -> list[tuple[dict, str, str]]:
    return [r for part in read_local(str(path)).values() for r in part]


def golds(path: Path) -> list[str]:
    return [parse_problem("math", *r, levels=[1, 2, 3, 4, 5]).answer for r in records(path)]


@pytest.fixture(scope="module")
def math_golds() -> list[str]:
    return golds(MATH_TEST)


@pytest.fixture(scope="module")
def math500_golds() -> set[str]:
    return set(golds(MATH500))


# --- loaders --------------------------------------------------------------------------
def test_every_gsm8k_gold_round_trips_through_boxed():
    task, n = GSM({}), 0
    for record, id_, where in records(DATA / "gsm8k"):
        gold = parse_problem("gsm", record, id_, where, levels=[]).answer
        written = record["answer"].rsplit("####", 1)[1].strip()  # as the file writes it: 1,245
        for text in (gold, written):
            assert task.is_correct(task.extract_answer(f"So the answer is $\\boxed{{{text}}}$."), gold)
        n += 1
    assert n == 7473 + 1319


def test_every_math_gold_extracts_and_equals_itself(math_golds):
    assert len(math_golds) == 5000
    for gold in math_golds:
        assert math_task.equivalent(gold, gold), gold
        assert math_task.is_correct(math_task.extract_answer(f"thus $\\boxed{{{gold}}}$."), gold), gold


def test_every_math500_answer_equals_the_gold_from_its_solution():
    for record, id_, where in records(MATH500):
        gold = parse_problem("math", record, id_, where, levels=[1, 2, 3, 4, 5])
        assert gold.id == record["unique_id"].removesuffix(".json")
        assert math_task.equivalent(record["answer"], gold.answer), (record["answer"], gold.answer)
        assert math_task.equivalent(gold.answer, record["answer"])


def test_math500_preset_split_trains_on_the_other_math_problems():
    cfg = {
        "name": "math",
        "n_train": 4500,
        "n_eval": 500,
        "hf_id": None,
        "levels": [1, 2, 3, 4, 5],
        "seed": 0,
    }
    task = load_task(OmegaConf.create({**cfg, "path": str(MATH_TEST), "eval_path": str(MATH500)}))
    train, held_out = task.split("train"), task.split("eval")
    assert len(train) == 4500 and len(held_out) == 500  # every MATH500 problem is in the MATH test set
    assert not {p.question for p in train} & {p.question for p in held_out}
    assert all(p.id.startswith("test/") for p in held_out)


# --- wrong answers made from real golds -----------------------------------------------
NUMBER = re.compile(r"-?(?:\d+\.?\d*|\.\d+)")
FRACTION = re.compile(r"(-?)\\frac\{?(\d+)\}?\{?(\d+)\}?")
MATRIX = re.compile(r"(\\begin\{[pb]matrix\})(.*)(\\end\{[pb]matrix\})", re.S)
TUPLE = re.compile(r"(\\left[(\[]|[(\[])(.*)(\\right[)\]]|[)\]])", re.S)


def value(entry: str) -> Fraction | None:
    """The value of a number or a plain \\frac, else None (symbolic)."""
    entry = entry.strip()
    if NUMBER.fullmatch(entry):
        return Fraction(entry)
    m = FRACTION.fullmatch(entry)
    return (-1 if m[1] else 1) * Fraction(int(m[2]), int(m[3])) if m else None


def top_level_commas(inner: str) -> list[str]:
    """inner split at commas outside braces and brackets, separators kept: [e, ',', e, ...]."""
    pieces, depth, start = [], 0, 0
    for i, char in enumerate(inner):
        depth += (char in "{([") - (char in "})]")
        if char == "," and depth == 0:
            pieces += [inner[start:i], ","]
            start = i + 1
    return pieces + [inner[start:]]


def ordered_entries(gold: str) -> tuple[str, list[str], str] | None:
    """(prefix, [entry, separator, entry, ...], suffix) of a matrix, vector, tuple or interval."""
    if m := MATRIX.fullmatch(gold):
        return m[1], re.split(r"(\s*(?:&|\\\\)\s*)", m[2]), m[3]
    if (m := TUPLE.fullmatch(gold)) and "\\cup" not in gold:
        pieces = top_level_commas(m[2])
        return (m[1], pieces, m[3]) if len(pieces) > 1 else None
    return None


def changed_numbers(text: str) -> list[tuple[str, str]]:
    """Different numbers near a written number or plain fraction: sign, a digit, neighbours."""
    text = text.strip()
    x = value(text)
    if x is None:
        return []
    flipped = [("sign flipped", text[1:] if text.startswith("-") else f"-{text}")] if x != 0 else []
    if not NUMBER.fullmatch(text):  # a fraction: the next numerator up and down
        return flipped + [("neighbour", f"\\frac{{{x.numerator + d}}}{{{x.denominator}}}") for d in (1, -1)]
    places = len(text.split(".")[1]) if "." in text else 0
    step = Fraction(1, 10**places)
    neighbours = [f"{float(x + d):.{places}f}" if places else str(x + d) for d in (step, -step)]
    return flipped + [("digit added", text + "1")] + [("neighbour", n) for n in neighbours]


def wrong_answers(gold: str, symbolic: bool) -> list[tuple[str, str]]:
    """(kind, answer) pairs, each different from gold by construction; symbolic=False leaves
    out the ones that need math-verify to parse a new expression."""
    if (structure := ordered_entries(gold)) is None:
        if value(gold) is not None:
            return changed_numbers(gold)
        if symbolic and not re.search(r"[=<>,]|\\text|\\pm|\\cup|\\in", gold):
            return [("sign flipped", f"-\\left({gold}\\right)")]
        return []
    prefix, pieces, suffix = structure

    def rebuilt(i: int, entry: str, j: int | None = None) -> str:
        """The structure with entry i replaced (and, with j, entry j set to entry i)."""
        new = list(pieces)
        new[i] = entry
        if j is not None:
            new[j] = pieces[i]
        return prefix + "".join(new) + suffix

    wrong, entries = [], range(0, len(pieces), 2)
    for i in entries:
        if value(pieces[i]) is not None:
            wrong += [(f"entry {kind}", rebuilt(i, new)) for kind, new in changed_numbers(pieces[i])]
        elif symbolic:
            wrong.append(("entry sign flipped", rebuilt(i, f"-\\left({pieces[i].strip()}\\right)")))
    for i in entries:
        for j in entries:
            u, v = value(pieces[i]), value(pieces[j])
            if i < j and u is not None and v is not None and u != v:
                wrong.append(("entries swapped", rebuilt(i, pieces[j], j)))
    return wrong


def test_no_wrong_answer_made_from_a_real_gold_is_accepted(math_golds, math500_golds):
    suite = {
        (gold, kind, wrong)
        for gold in math_golds
        for kind, wrong in wrong_answers(gold, gold in math500_golds)
    }
    accepted = [
        (g, k, w) for g, k, w in sorted(suite) if math_task.equivalent(w, g) or math_task.equivalent(g, w)
    ]
    kinds = {k for _, k, _ in suite}
    assert len(suite) > 6000 and len(kinds) == 7, (len(suite), kinds)
    assert accepted == []


# --- equivalent forms of real golds ---------------------------------------------------
def equivalent_forms(gold: str) -> list[str]:
    """Other ways to write the same answer."""
    forms = [f"${gold}$", f"\\({gold}\\)", gold.replace("\\frac", "\\dfrac")]
    forms.append(re.sub(r"(?<!,)\s+", "", gold))  # unspaced; but "45,135" would be the number 45135
    forms.append(re.sub(r"(\\\\|&|,)", r" \1 ", gold))  # spaced out
    x = value(gold)
    if x is not None:
        forms += [f"x = {gold}", f"{gold} \\text{{ units}}", f"\\frac{{{x.numerator}}}{{{x.denominator}}}"]
        if x.denominator == 1:
            forms.append(f"{x}.0")
            if abs(x) >= 1000:
                digits = f"{abs(int(x)):,}"
                sign = "-" if x < 0 else ""
                forms += [
                    sign + digits,
                    sign + digits.replace(",", "{,}"),
                    sign + digits.replace(",", ",\\! "),
                ]
        elif 10**6 % x.denominator == 0:  # a finite decimal
            forms.append(str(float(x)))
    if (m := TUPLE.fullmatch(gold)) and m[1] == "(" and m[3] == ")":
        forms.append(f"\\left({m[2]}\\right)")
    if (m := MATRIX.fullmatch(gold)) and "&" not in m[2]:  # a column vector as a tuple
        forms.append("(" + ", ".join(re.split(r"\s*\\\\\s*", m[2].strip())) + ")")
    if "," in gold and not re.search(r"[()\[\]{}]|\\text", gold):  # a list: any order
        forms.append(", ".join(reversed(gold.split(","))))
    if m := re.fullmatch(r"\\text\{\(?([A-Z])\)?\}", gold):  # a choice letter
        forms += [m[1], f"({m[1]})"]
    return [f for f in forms if f != gold]


def test_equivalent_forms_of_real_golds_are_accepted(math_golds):
    suite = {(gold, form) for gold in math_golds for form in equivalent_forms(gold)}
    rejected = [
        (g, f) for g, f in sorted(suite) if not (math_task.equivalent(f, g) and math_task.equivalent(g, f))
    ]
    assert len(suite) > 9000
    assert rejected == []
