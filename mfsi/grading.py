"""Answer extraction and equivalence: what decides which outputs become training data.

`extract_boxed` finds the last \\boxed{...}/\\fbox{...} (nested braces, `\\boxed 5`).
`normalize` reads an answer as LaTeX tokens and drops presentation only: math delimiters,
spacing commands, \\left/\\right, dollars, thousands separators, percent and degree signs,
trailing units in \\text, a leading `x =` or `x \\in`; \\dfrac becomes \\frac, and one-token
arguments get braces (\\frac12). Row breaks (`\\\\`) and every other command stay as written.

`to_number` reads an answer as an exact Fraction (arithmetic and GSM8K compare those).
`math_equal` reads both answers' structure: matrices and vectors (compared cell by cell),
tuples and intervals (in order, with the same brackets), sets and bare lists (as multisets),
unions, text, and single expressions. Two exact numbers compare as Fractions, never rounded;
other expressions go to math-verify in both directions, with decimals written as exact
fractions. It is symmetric by construction, and in the main thread every call ends within
COMPARISON_TIMEOUT_S of CPU time (other threads have no deadline: signals need the main
one). Nothing here raises on garbage: failure is None or False.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction
from functools import cache, lru_cache

COMPARISON_TIMEOUT_S = 3  # CPU seconds for a whole comparison, parsing included
MAX_SYMBOLIC_CHARS = 400  # longer answers are compared as text only (MATH golds: <= 81)

# --- extraction -----------------------------------------------------------------------
_BOX = re.compile(r"\\(?:boxed|fbox)")


def _braced(text: str, start: int) -> str | None:
    """Content of the {...} group opening at text[start], honouring nesting."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i]
    return None


def extract_boxed(text: str) -> str | None:
    """The content of the last well-formed \\boxed{...} or \\fbox{...} in text, else None."""
    if not isinstance(text, str):
        return None
    for match in reversed(list(_BOX.finditer(text))):
        rest = match.end()
        while rest < len(text) and text[rest] == " ":
            rest += 1
        if rest < len(text) and text[rest] == "{":
            content = _braced(text, rest)
        elif rest > match.end():  # "\boxed 5": the token after the space
            content = re.match(r"[^\s$]*", text[rest:]).group(0)
        else:
            continue
        if content is not None and content.strip():
            return content.strip()
    return None


# --- normalisation --------------------------------------------------------------------
# A LaTeX token: a command (\frac, or one symbol: \\ \{ \, \$), a run of spaces, or a character.
_TOKEN = re.compile(r"\\(?:[A-Za-z]+|.)|\s+|.", re.DOTALL)
_SPACING = {"\\!", "\\,", "\\;", "\\:", "\\ ", "\\quad", "\\qquad"}
_INVISIBLE = {"$", "\\$", "%", "\\%", "\\displaystyle", "\\(", "\\)", "\\[", "\\]"}
_SIZED = {"\\left", "\\right", "\\big", "\\Big", "\\bigl", "\\bigr", "\\Bigl", "\\Bigr"}  # + "." = none
_ALIASES = {"\\dfrac": "\\frac", "\\tfrac": "\\frac", "\\cfrac": "\\frac", "\\mbox": "\\text"}
# 11,\!111 or 1\,000 or 1{,}000: digit groups joined by a LaTeX thousands separator.
_LATEX_THOUSANDS = re.compile(r"(?<=\d)(?:,\\!|\{,\}|\\,|\\!|,\\ )\s*(?=\d{3}(?!\d))")
_LIST_WORD = re.compile(r"\s*,?\s*\\(?:text|mbox)\s*\{\s*(?:and|or)\s*\}\s*")  # "19 \text{ and } 43"
_DEGREES = re.compile(r"\^\s*(?:\{\s*\\circ\s*\}|\\circ(?![A-Za-z]))|°")
# "5 \text{ cm}^2", "5\mathrm{cm}"; not \mathrm{i} or \mathrm{e}, which are numbers
_UNIT = re.compile(
    r"\s*\\(?:text\s*\{\s*[A-Za-z]+|mathrm\s*\{\s*[A-Za-z]{2,})(?:\s+[A-Za-z]+)*\.?\s*\}(?:\^\{?\d\}?)?\s*$"
)
_VAR_PREFIX = re.compile(r"^[A-Za-z]\s*(?:=|\\in(?![A-Za-z]))\s*")  # "x = 5", "x \in [0,1]"
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")  # a whole answer like 1,000


_ARGUMENTS = {"\\frac": 2, "\\dfrac": 2, "\\tfrac": 2, "\\cfrac": 2, "\\sqrt": 1}


def _brace_arguments(tokens: list[str]) -> list[str]:
    """One-token arguments of \\frac and \\sqrt get braces: \\frac12 -> \\frac{1}{2},
    \\frac\\pi4 -> \\frac{\\pi}{4}, \\sqrt2 -> \\sqrt{2} (math-verify reads \\frac \\pi4 + 2 as 2)."""
    out: list[str] = []
    owing: list[list] = []  # per \\frac or \\sqrt still owed arguments: [count, brace depth, is sqrt]
    depth, in_index = 0, False  # in_index: inside the [n] of \\sqrt[n]{x}

    def received() -> None:
        owing[-1][0] -= 1
        if owing[-1][0] == 0:
            owing.pop()

    for token in tokens:
        owed = bool(owing) and owing[-1][1] == depth and not in_index
        if owed and token.isspace():
            continue
        if owed and token == "[" and owing[-1][2]:
            in_index = True
        elif owed and token not in ("{", "}"):
            token = "{" + token + "}"
            received()
        out.append(token)
        in_index = in_index and token != "]"
        if token == "{":
            depth += 1
        elif token == "}":
            depth -= 1
            while owing and owing[-1][1] > depth:  # a malformed \\frac inside the group
                owing.pop()
            if owing and owing[-1][1] == depth:  # an argument group closed
                received()
        if token in _ARGUMENTS:
            owing.append([_ARGUMENTS[token], depth, token == "\\sqrt"])
    return out


@lru_cache(maxsize=65536)
def normalize(answer: str) -> str:
    """Strip presentation from an answer string, keeping its mathematical content."""
    s = _LIST_WORD.sub(", ", _LATEX_THOUSANDS.sub("", answer))
    out: list[str] = []
    after_sized = False
    for token in _brace_arguments(_TOKEN.findall(s)):
        if after_sized and token == ".":  # \left. and \right. draw nothing
            continue
        after_sized = token in _SIZED
        if token.isspace() or token in _SPACING:
            out.append(" ")
        elif token not in _INVISIBLE and not after_sized:
            out.append(_ALIASES.get(token, token))
    s = _DEGREES.sub("", " ".join("".join(out).split())).strip().rstrip(".").strip()
    unit = _UNIT.search(s)
    if unit and re.search(r"\d", s[: unit.start()]):  # "5 \text{ cm}" but not "\text{Monday}"
        s = s[: unit.start()].strip()
    s = _VAR_PREFIX.sub("", s)
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    return s


_SPACE = re.compile(r"(\\[A-Za-z]+)? +(?=([A-Za-z]?))")


def _compact(s: str) -> str:
    """Math mode ignores spaces: drop them, except one ending a command before a letter."""
    return _SPACE.sub(lambda m: m[1] + " " if m[1] and m[2] else m[1] or "", s)


# --- numbers --------------------------------------------------------------------------
_DECIMAL = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)")
_FRAC = re.compile(r"(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}")
_SLASH = re.compile(r"(-?\d+)/(-?\d+)")


def _exact(s: str) -> Fraction | None:
    """An integer, decimal or simple fraction written without spaces, as a Fraction."""
    if s.startswith("{") and s.endswith("}"):
        s = s[1:-1]
    try:
        if _DECIMAL.fullmatch(s):
            return Fraction(s)
        for pattern in (_FRAC, _SLASH):
            m = pattern.fullmatch(s)
            if m:
                sign, num, den = m.groups() if pattern is not _SLASH else ("", *m.groups())
                value = Fraction(int(num), int(den))
                return -value if sign else value
    except (ValueError, ZeroDivisionError):
        return None
    return None


def to_number(answer: str) -> Fraction | None:
    """An exact value for integers, decimals and simple fractions; None for anything else."""
    return _exact(normalize(answer).replace(" ", ""))


def format_number(value: Fraction) -> str:
    """Canonical text for a number: '18', '-3', '2.5', or '1/3' when not a finite decimal."""
    if value.denominator == 1:
        return str(value.numerator)
    den = value.denominator
    while den % 2 == 0:
        den //= 2
    while den % 5 == 0:
        den //= 5
    if den == 1:  # finite decimal expansion
        return format(value.numerator / value.denominator, "f").rstrip("0").rstrip(".")
    return f"{value.numerator}/{value.denominator}"


def extract_number(text: str) -> str | None:
    """Numeric tasks: the boxed answer in canonical form, or None if absent or not a number."""
    boxed = extract_boxed(text)
    value = to_number(boxed) if boxed is not None else None
    return format_number(value) if value is not None else None


def numbers_equal(a: str | None, b: str | None) -> bool:
    """Exact numeric equality of two answers; False if either is not a number."""
    if a is None or b is None:
        return False
    x, y = to_number(a), to_number(b)
    return x is not None and y is not None and x == y


# --- structure ------------------------------------------------------------------------
# A node is ("leaf", latex) | ("text", words) | ("seq", open, close, items) | ("matrix", rows)
# | ("union", parts). Brackets of a seq: "(" "[" "\{", or "" for a bare comma-separated list.
Node = tuple
_OPENERS = {"(", "[", "{", "\\{", "\\begin"}
_CLOSERS = {")", "]", "}", "\\}", "\\end"}  # one depth counter: intervals mix ( and ]
_MATRIX = re.compile(r"\\begin\{([pbB]?matrix|smallmatrix|array)\}(?:\{[lcr|]*\})?(.*)\\end\{\1\}", re.S)
_TEXT = re.compile(r"\\(?:text|textbf|textrm)\{(.*)\}", re.S)
_WORD = re.compile(r"[A-Za-z][A-Za-z.']*")
_MAX_NESTING = 20  # brackets deeper than this are not handed to math-verify (slow to parse)


def _fold(word: str) -> str:
    """Words compare in any case; a single letter (a variable, a choice) as written."""
    return word if len(word) == 1 else word.casefold()


def _depths(tokens: list[str]) -> Iterator[int]:
    """Bracket depth after each token."""
    depth = 0
    for token in tokens:
        depth += (token in _OPENERS) - (token in _CLOSERS)
        yield depth


def _split(tokens: list[str], separator: str) -> list[list[str]]:
    """Tokens split at separators outside any brackets."""
    parts: list[list[str]] = [[]]
    for token, depth in zip(tokens, _depths(tokens)):
        if token == separator and depth == 0:
            parts.append([])
        else:
            parts[-1].append(token)
    return parts


def _balanced(tokens: list[str]) -> bool:
    depths = list(_depths(tokens))
    return not depths or (min(depths) >= 0 and depths[-1] == 0)


def _wrapped(tokens: list[str]) -> bool:
    """Whether the first token's bracket closes at the last token (not before)."""
    depths = list(_depths(tokens))
    return (
        len(tokens) >= 2
        and tokens[0] in _OPENERS
        and tokens[-1] in _CLOSERS
        and depths[-1] == 0
        and min(depths[:-1]) > 0
    )


@lru_cache(maxsize=65536)
def _structure(s: str, text: bool = False) -> Node:
    """The structure of a compact answer; text=True inside \\text{}, where letters are words."""
    if (m := _MATRIX.fullmatch(s)) and _balanced(_TOKEN.findall(m[2])):
        rows = [r for r in _split(_TOKEN.findall(m[2]), "\\\\") if "".join(r).strip()]
        return ("matrix", tuple(tuple(_node(c) for c in _split(r, "&")) for r in rows))
    if (m := _TEXT.fullmatch(s)) and _balanced(_TOKEN.findall(m[1])):
        return _structure(_compact(m[1].strip()), text=True)
    tokens = _TOKEN.findall(s)
    parts = _split(tokens, "\\cup")
    if len(parts) > 1:
        return ("union", tuple(_node(p, text) for p in parts))
    if _wrapped(tokens):
        opener, closer, inner = tokens[0], tokens[-1], tokens[1:-1]
        items = _split(inner, ",")
        if len(items) > 1 or opener == "\\{":
            return ("seq", opener, closer, tuple(_node(i, text) for i in items))
        if (opener, closer) in (("(", ")"), ("{", "}")):  # (5) is 5, {5} is 5
            return _node(inner, text)
    items = _split(tokens, ",")
    if len(items) > 1:
        return ("seq", "", "", tuple(_node(i, text) for i in items))
    if text and _exact(s) is None:
        return ("text", _fold(s))
    return ("leaf", s)


def _node(tokens: list[str], text: bool = False) -> Node:
    return _structure("".join(tokens), text)


# --- equivalence ----------------------------------------------------------------------
class _Timeout(BaseException):
    """Raised by the deadline's alarm; a BaseException so math-verify cannot swallow it."""


@contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """Interrupt the block after `seconds` of CPU time (main thread only: signals need it;
    and POSIX). CPU time, not wall time, so that a busy machine never changes a verdict."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGPROF"):
        yield
        return

    def expire(signum, frame):
        raise _Timeout

    previous = signal.signal(signal.SIGPROF, expire)
    signal.setitimer(signal.ITIMER_PROF, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)


_DECIMAL_LITERAL = re.compile(r"(?<![\d.])(\d*)\.(\d+)(?![\d.])")
# Our deadline covers math-verify, so its warnings that its own timeouts are off are noise.
logging.getLogger("math_verify").setLevel(logging.ERROR)


@cache
def _extraction() -> list:
    from latex2sympy2_extended.latex2sympy2 import NormalizationConfig
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    # math-verify's own unit stripping reads 4t as 4 and 9\text{ a.m.} as 9; normalize strips
    # units written in \text{} after a number.
    normalization = NormalizationConfig(
        basic_latex=True, units=False, malformed_operators=True, nits=True, boxed="all", equations=False
    )
    return [LatexExtractionConfig(normalization_config=normalization), ExprExtractionConfig()]


@lru_cache(maxsize=65536)
def _sympy(s: str):
    """math-verify's reading of a leaf, decimals made exact (0.1 -> 1/10); None if unreadable."""
    from math_verify import parse

    tokens = _TOKEN.findall(s)
    if not _balanced(tokens) or max(_depths(tokens), default=0) > _MAX_NESTING:
        return None
    exact = _DECIMAL_LITERAL.sub(lambda m: f"\\frac{{{int(m[1] + m[2])}}}{{{10 ** len(m[2])}}}", s)
    parsed = parse(f"${exact}$", extraction_config=_extraction(), parsing_timeout=None)
    return next((p for p in parsed if not isinstance(p, str)), None)


_PROBE = (Fraction(7, 3), Fraction(-5, 11), Fraction(13, 17), Fraction(3, 29), Fraction(-19, 7))


@lru_cache(maxsize=65536)
def _value(s: str) -> complex | None:
    """A leaf's value, its variables set to fixed probe values by name; None if not a number."""
    import sympy

    if (number := _exact(s)) is not None:
        return complex(number)
    expr = _sympy(s)
    if not isinstance(expr, sympy.Expr):
        return None
    try:
        probes = {v: _PROBE[sum(map(ord, v.name)) % len(_PROBE)] for v in expr.free_symbols}
        return complex(sympy.N(expr.subs(probes), 30))
    except (TypeError, ValueError, OverflowError, AttributeError):
        return None


def _values_differ(a: str, b: str) -> bool:
    """Cheap proof of inequality: the two leaves evaluate to clearly different numbers."""
    u, v = _value(a), _value(b)
    return u is not None and v is not None and abs(u - v) > 1e-9 * max(1.0, abs(u), abs(v))


def _verified(a: str, b: str) -> bool:
    """math-verify accepts each answer with the other one as the gold."""
    from math_verify import verify

    x, y = _sympy(a), _sympy(b)
    if x is None or y is None or _values_differ(a, b):
        return False
    options = {"timeout_seconds": None, "allow_set_relation_comp": True}
    return verify(x, y, **options) and verify(y, x, **options)


_NUMERAL = re.compile(r"(\d[0-9A-Za-z]*)_\{?(\d+)\}?")  # 4210_7: digits in base 7


def _numeral(s: str) -> tuple[int, int] | None:
    """(value, base) of a numeral written in a base, else None."""
    m = _NUMERAL.fullmatch(s)
    try:
        return (int(m[1], int(m[2])), int(m[2])) if m else None
    except ValueError:  # a digit the base does not have
        return None


def _leaves_equal(a: str, b: str) -> bool:
    """Exact numbers compare as Fractions, numerals in a base by value and base, single letters
    as written (math-verify reads A as a); anything else is left to math-verify."""
    u, v = _exact(a), _exact(b)
    if u is not None and v is not None:
        return u == v
    if _NUMERAL.fullmatch(a) or _NUMERAL.fullmatch(b):
        return _numeral(a) is not None and _numeral(a) == _numeral(b)
    if len(a) == 1 and a.isalpha() or len(b) == 1 and b.isalpha():
        return False  # the texts differ
    return _verified(a, b)


def _matched(xs: tuple, ys: tuple) -> bool:
    """Multiset equality under _same: every x pairs with its own equal y."""
    if len(xs) != len(ys):
        return False
    left = list(ys)
    for x in xs:
        match = next((i for i, y in enumerate(left) if _same(x, y)), None)
        if match is None:
            return False
        left.pop(match)
    return True


def _same(x: Node, y: Node) -> bool:
    """Equality of two structures, part by part."""
    if x == y:
        return True
    kinds = (x[0], y[0])
    if kinds == ("leaf", "leaf"):
        return _leaves_equal(x[1], y[1])
    if set(kinds) == {"text", "leaf"}:  # \text{Evelyn} and Evelyn, \text{(C)} and C
        words, leaf = (x[1], y[1]) if x[0] == "text" else (y[1], x[1])
        return bool(_WORD.fullmatch(leaf)) and _fold(leaf) == words
    if kinds == ("matrix", "matrix"):
        shapes = [len(r) for r in x[1]], [len(r) for r in y[1]]
        return shapes[0] == shapes[1] and all(map(_same, sum(x[1], ()), sum(y[1], ())))
    if set(kinds) == {"matrix", "seq"}:  # a vector written as a tuple
        matrix, seq = (x, y) if x[0] == "matrix" else (y, x)
        cells = sum(matrix[1], ())
        vector = len(matrix[1]) == 1 or all(len(r) == 1 for r in matrix[1])
        return (
            vector and seq[1:3] == ("(", ")") and len(cells) == len(seq[3]) and all(map(_same, cells, seq[3]))
        )
    if kinds == ("seq", "seq"):
        if {x[1], y[1]} <= {"", "\\{"}:  # sets and bare lists: order does not matter
            return _matched(x[3], y[3])
        return x[1:3] == y[1:3] and len(x[3]) == len(y[3]) and all(map(_same, x[3], y[3]))
    if kinds == ("union", "union"):
        return _matched(x[1], y[1])
    return False


def _means_a_set(leaf: str) -> bool:
    """A leaf that math-verify reads as a set or a relation (x > 2, 1 \\pm \\sqrt{2})."""
    import sympy

    return _exact(leaf) is None and isinstance(_sympy(leaf), (sympy.Set, sympy.logic.boolalg.Boolean))


@lru_cache(maxsize=65536)
def _equal(a: str, b: str) -> bool:
    if a == b:
        return bool(a)
    if max(len(a), len(b)) > MAX_SYMBOLIC_CHARS:
        return False
    try:
        with _deadline(COMPARISON_TIMEOUT_S):
            x, y = _structure(a), _structure(b)
            if {x[0], y[0]} - {"leaf", "text"} and "leaf" in (x[0], y[0]):  # x > 2 and (2, \infty)
                return _means_a_set(x[1] if x[0] == "leaf" else y[1]) and _verified(a, b)
            return _same(x, y)
    except (Exception, _Timeout):  # adversarial input, or out of time: not shown equal
        return False


def _leaves(node: Node) -> Iterator[Node]:
    if node[0] in ("leaf", "text"):
        yield node
        return
    children = node[3] if node[0] == "seq" else sum(node[1], ()) if node[0] == "matrix" else node[1]
    for child in children:
        yield from _leaves(child)


def is_readable(answer: str) -> bool:
    """Whether every part of an answer is an exact number, \\text, or an expression math-verify
    reads; any other answer equals only its own text (the audit lists such golds)."""
    s = _compact(normalize(answer))
    try:
        with _deadline(COMPARISON_TIMEOUT_S):
            parts = _leaves(_structure(s)) if 0 < len(s) <= MAX_SYMBOLIC_CHARS else [("leaf", "")]
            return all(k == "text" or _exact(p) is not None or _sympy(p) is not None for k, p in parts)
    except (Exception, _Timeout):
        return False


def math_equal(a: str | None, b: str | None) -> bool:
    """MATH equivalence; symmetric, so the argument order (gold or prediction) never matters."""
    if a is None or b is None:
        return False
    return _equal(*sorted((_compact(normalize(a)), _compact(normalize(b)))))
