"""Answer extraction and equivalence: what decides which outputs become training data.

`extract_boxed` finds the last \\boxed{...}/\\fbox{...} (nested braces, `\\boxed 5`);
`normalize` strips presentation (dollars, thousands separators, \\dfrac, units in \\text,
percent and degree signs); `to_number` reads a normalised answer as an exact Fraction.
Numeric tasks compare Fractions; MATH answers fall back to math-verify, with a timeout
in the main thread. Nothing here raises on garbage: failure is None or False.
"""

from __future__ import annotations

import re
import threading
from fractions import Fraction
from functools import lru_cache

_BOX = re.compile(r"\\(?:boxed|fbox)")
_UNIT = re.compile(r"\s*\\(?:text|mbox|mathrm)\{\s*[A-Za-z]+(?:\s+[A-Za-z]+)*\s*\}(?:\^\{?\d\}?)?\s*$")
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_DECIMAL = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)")
_FRAC = re.compile(r"(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}")
_FRAC_SHORT = re.compile(r"(-?)\\frac(\d)(\d)")  # \frac12
_SLASH = re.compile(r"(-?\d+)\s*/\s*(-?\d+)")
_VAR_PREFIX = re.compile(r"^[A-Za-z]\s*=\s*")
MATH_VERIFY_TIMEOUT_S = 3


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


def normalize(answer: str) -> str:
    """Strip presentation from an answer string, keeping its mathematical content."""
    s = answer.strip()
    for old, new in (("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("\\left", ""), ("\\right", "")):
        s = s.replace(old, new)
    for junk in ("\\!", "\\,", "\\;", "\\ ", "\\$", "$", "\\%", "%", "^\\circ", "^{\\circ}", "°"):
        s = s.replace(junk, "")
    s = s.strip().rstrip(".").strip()
    if s.startswith("\\(") and s.endswith("\\)"):
        s = s[2:-2].strip()
    unit = _UNIT.search(s)
    if unit and re.search(r"\d", s[: unit.start()]):  # "5 \text{ cm}" but not "\text{Monday}"
        s = s[: unit.start()].strip()
    s = _VAR_PREFIX.sub("", s)
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    return s


def to_number(answer: str) -> Fraction | None:
    """An exact value for integers, decimals and simple fractions; None for anything else."""
    s = normalize(answer).replace(" ", "")
    if s.startswith("{") and s.endswith("}"):
        s = s[1:-1]
    try:
        if _DECIMAL.fullmatch(s):
            return Fraction(s)
        for pattern in (_FRAC, _FRAC_SHORT, _SLASH):
            m = pattern.fullmatch(s)
            if m:
                sign, num, den = m.groups() if pattern is not _SLASH else ("", *m.groups())
                value = Fraction(int(num), int(den))
                return -value if sign else value
    except (ValueError, ZeroDivisionError):
        return None
    return None


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


def _timeout() -> int | None:
    # math-verify times out with signal.alarm, which only works in the main thread.
    return MATH_VERIFY_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


@lru_cache(maxsize=65536)
def _parsed(answer: str) -> tuple:
    from math_verify import parse

    try:
        return tuple(parse(f"${answer}$", parsing_timeout=_timeout()))
    except Exception:  # math-verify on adversarial input: treat as unparseable
        return ()


def math_equal(a: str | None, b: str | None) -> bool:
    """MATH equivalence: normalised text, then exact numbers, then math-verify."""
    if a is None or b is None:
        return False
    na, nb = normalize(a), normalize(b)
    if na == nb:
        return True
    if numbers_equal(na, nb):
        return True
    pa, pb = _parsed(na), _parsed(nb)
    if not pa or not pb:
        return False
    from math_verify import verify

    try:
        return bool(verify(list(pa), list(pb), timeout_seconds=_timeout()))
    except Exception:
        return False
