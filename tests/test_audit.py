"""The grader audit (python -m mfsi.audit) on the fixture data; README "Grading" has its
numbers on the real GSM8K and MATH files."""

import json
from pathlib import Path

from mfsi.audit import audit, main, report

FIXTURES = Path(__file__).parent / "fixtures"


def test_math_audit_counts_golds_answers_and_equal_cross_problem_pairs(tmp_path):
    records = [json.loads(line) for line in (FIXTURES / "math.jsonl").read_text().splitlines()]
    records[0]["answer"] = "4"  # as PRM800K files carry it: agrees with \boxed{4}
    records[1]["answer"] = "\\frac{5}{7}"  # disagrees with \boxed{\frac{5}{6}}
    records[2]["solution"] = "no boxed answer"
    records[3]["solution"] = "so it is $\\boxed{\\dfrac{10}{12}}$"  # equal to record 1's gold
    path = tmp_path / "math.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    result = audit("math", str(path), pairs=True)
    assert result.records == 12 and len(result.golds) == 10  # no \boxed; "Level ?"
    assert len(result.unusable) == 2 and not result.unreadable and not result.not_self_equal
    assert result.answer_field == 2 and [a for _, a, _ in result.answer_disagreements] == ["\\frac{5}{7}"]
    assert [(a.split()[0], b.split()[0]) for a, b in result.equal_pairs] == [
        ("\\frac{5}{6}", "\\frac{10}{12}")
    ]
    assert result.text_pairs == 45 and result.pairs == 45 and result.same_text_pairs == 0
    text = report(result)
    assert "`answer` field equals gold: 1/2" in text and "1 text pairs are judged equal" in text


def test_gsm_audit_from_the_command_line(capsys):
    main(["--task", "gsm", "--path", str(FIXTURES / "gsm")])
    out = capsys.readouterr().out
    assert "records: 16" in out and "gold survives \\boxed{} and extraction: 16/16" in out
    assert "comparisons timed: 15; median" in out
