"""The report on synthetic run directories: exact cells, missing and partial runs, all files."""

import json
import random
import re
import sys

import pytest
import yaml

from mfsi import plots, report
from mfsi.report import build_report

FILES = [
    "table1.md",
    "table2.md",
    "table4.md",
    "iterations.md",
    "accuracy_by_iteration.png",
    "diversity_by_iteration.png",
    "accuracy_by_round.png",
    "report.md",
]


def make_run(
    root,
    name,
    method,
    task,
    accuracies,
    model="phi3",
    stderr=0.01,
    iterations=None,
    seed=None,
    more=None,
    **extra,
):
    """A run directory as the loop writes it: config.yaml and metrics.jsonl (plus a train row).
    more: per iteration, more keys for that row (per-question results)."""
    path = root / name
    path.mkdir(parents=True)
    iterations = len(accuracies) - 1 if iterations is None else iterations
    config = {"task": {"name": task}, "model": {"name": model}, "method": {"name": method}, "seed": seed}
    (path / "config.yaml").write_text(yaml.safe_dump({**config, "iterations": iterations, "agents": 3}))
    rows = [{"iteration": 0, "split": "train", "accuracy": 0.0}]  # must be ignored
    for i, accuracy in enumerate(accuracies):
        rows.append(
            {
                "iteration": i,
                "split": "eval",
                "method": method,
                "task": task,
                "model": model,
                "agents": 3,
                "rounds": 2,
                "n": 500,
                "accuracy": accuracy,
                "stderr": stderr,
                "accuracy_by_round": [accuracy - 0.05, accuracy],
                "agent_accuracy": [accuracy] * 3,
                "consensus": 0.8,
                "parse_failure_rate": 0.0,
                "variant": extra.get("variant", method),
                "embedding_dissimilarity": 0.3 - 0.01 * i,
                "likelihood_diversity": 1.5,
                "kl_divergence": 0.1 * i,
                "kl_from_base": None,  # not computed
                **extra,
                **(more[i] if more else {}),
            }
        )
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def lines_of(path):
    return path.read_text().splitlines()


def test_tables_cells_and_files(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, "base-arith", "base", "arithmetic", [0.883], stderr=0.0144)
    make_run(runs, "debate-arith", "debate", "arithmetic", [0.962], stderr=0.0086)  # iteration 0 only
    make_run(runs, "ours-arith", "multiagent_ft", "arithmetic", [0.9, 0.95, 0.994], stderr=0.0035)
    make_run(runs, "sweep/0_seed=0", "multiagent_ft", "gsm", [0.7, 0.80])  # two seeds: mean ± sem
    make_run(runs, "sweep/1_seed=1", "multiagent_ft", "gsm", [0.7, 0.90])
    make_run(runs, "sweep/2_seed=2", "multiagent_ft", "gsm", [0.1], iterations=1)  # unfinished: ignored
    make_run(runs, "ours-math", "multiagent_ft", "math", [0.5, 0.55], iterations=3)  # only unfinished
    make_run(runs, "no-summary", "multiagent_ft", "math", [0.5, 0.52], variant="no_summary")
    make_run(runs, "single", "single_agent_ft", "math", [0.5, 0.568, 0.56], stderr=0.0222)
    make_run(runs, "five", "multiagent_ft", "math", [0.5, 0.6], variant="agents5")  # not Table 4's label
    make_run(runs, "debate5", "debate", "arithmetic", [0.97], variant="debate_agents5", agents=5)
    make_run(runs, "mistral-debate", "debate", "gsm", [0.526], model="mistral", stderr=0.0223)
    del_key = tmp_path / "runs" / "no-summary" / "metrics.jsonl"  # a missing diversity key
    rows = [json.loads(line) for line in del_key.read_text().splitlines()]
    del_key.write_text(
        "".join(json.dumps({k: v for k, v in r.items() if k != "kl_divergence"}) + "\n" for r in rows)
    )

    result = build_report([runs], tmp_path / "out")

    out = tmp_path / "out"
    assert len(result["runs"]) == 12
    assert [p.name for p in result["files"]] == FILES
    assert all((out / name).stat().st_size > 0 for name in FILES)
    table1 = lines_of(out / "table1.md")
    assert "| model | method | arithmetic | gsm | math |" in table1
    assert "| mistral | Base | – | – | – |" in table1  # each model lists every method
    assert "|  | Debate | – | 52.60 ± 2.23 | – |" in table1
    assert "| phi3 | Base | 88.30 ± 1.44 | – | – |" in table1
    assert "|  | Debate | 96.20 ± 0.86 | – | – |" in table1
    assert "|  | STaR | – | – | – |" in table1
    assert (
        "|  | Multiagent FT (ours) | 99.40 ± 0.35 | 85.00 ± 5.00 (2 runs: 80.0, 90.0) | 55.00 ± 1.00 * |"
        in table1
    )
    assert table1.index("| mistral | Base | – | – | – |") < table1.index(
        "| phi3 | Base | 88.30 ± 1.44 | – | – |"
    )
    table2 = lines_of(out / "table2.md")
    assert "## math" in table2 and "## gsm" not in table2  # no ablation ran on gsm
    assert "| variant | phi3 |" in table2
    assert "| multiagent FT | 55.00 ± 1.00 * |" in table2
    assert "| without summary | 52.00 ± 1.00 |" in table2
    assert "| without critics | – |" in table2
    assert "| single-agent FT | 56.00 ± 2.22 |" in table2
    assert "| agents5 | 60.00 ± 1.00 |" in table2
    assert not any("debate_agents5" in line for line in table2)  # in Table 4 instead
    table4 = lines_of(out / "table4.md")
    assert "## arithmetic" in table4 and "## math" not in table4  # only debate has two agent counts
    assert "| model | method | 3 agents | 5 agents |" in table4
    assert "| phi3 | Debate | 96.20 ± 0.86 | 97.00 ± 1.00 |" in table4
    assert not any("Multiagent" in line for line in table4)
    page = (out / "report.md").read_text()
    assert "![accuracy_by_iteration](accuracy_by_iteration.png)" in page
    assert "### math" in page and "| 99.40 ± 0.35 |" in page


def test_no_runs_still_writes_every_file(tmp_path, monkeypatch, capsys):
    (tmp_path / "empty").mkdir()
    monkeypatch.setattr(sys, "argv", ["mfsi.report", str(tmp_path / "empty"), "--out", str(tmp_path / "out")])
    report.main()
    assert "0 runs" in capsys.readouterr().out
    assert all((tmp_path / "out" / name).exists() for name in FILES)
    assert "No runs of these methods." in (tmp_path / "out" / "table1.md").read_text()
    assert "No ablation runs." in (tmp_path / "out" / "table2.md").read_text()
    assert "No method was run with more than one" in (tmp_path / "out" / "table4.md").read_text()


def test_latest_row_of_an_iteration_wins_and_runs_without_config_count_as_finished(tmp_path):
    make_run(tmp_path, "r", "star", "gsm", [0.5, 0.6])
    metrics = tmp_path / "r" / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    metrics.write_text(metrics.read_text() + json.dumps({**rows[-1], "accuracy": 0.7}) + "\n")  # re-logged
    (tmp_path / "r" / "config.yaml").unlink()
    build_report([tmp_path], tmp_path / "out")
    assert "|  | STaR | – | 70.00 ± 1.00 | – |" in lines_of(tmp_path / "out" / "table1.md")


def test_methods_without_finetuning_are_finished_after_iteration_0(tmp_path):
    # A sweep sets iterations=1 for every method, but base/majority/debate stop at iteration 0.
    make_run(tmp_path, "d", "debate", "math", [0.4], iterations=1)
    config = tmp_path / "d" / "config.yaml"
    config.write_text(config.read_text().replace("name: debate", "name: debate\n  selection: none"))
    build_report([tmp_path], tmp_path / "out")
    assert "|  | Debate | – | – | 40.00 ± 1.00 |" in lines_of(tmp_path / "out" / "table1.md")


def test_tables_as_of_an_earlier_iteration(tmp_path):
    make_run(tmp_path, "ours", "multiagent_ft", "math", [0.5, 0.6, 0.7, 0.8])
    make_run(tmp_path, "single", "single_agent_ft", "math", [0.5, 0.55, 0.5])
    make_run(tmp_path, "cut", "multiagent_ft", "math", [0.5], iterations=1, variant="no_critics")  # not at 1
    make_run(tmp_path, "base", "base", "math", [0.45], iterations=0)
    build_report([tmp_path], tmp_path / "out", iteration=1)
    table2 = lines_of(tmp_path / "out" / "table2.md")
    assert "# Table 2: ablations, accuracy (%), iteration 1 (or the last before it)" in table2
    assert "| multiagent FT | 60.00 ± 1.00 |" in table2
    assert "| single-agent FT | 55.00 ± 1.00 |" in table2
    assert "| without critics | 50.00 ± 1.00 * |" in table2
    assert "| phi3 | Base | – | – | 45.00 ± 1.00 |" in lines_of(tmp_path / "out" / "table1.md")


# --- statistics: synthetic runs with known effects ---------------------------------------
def answers(seed, who, shift=0.0, n=500):
    """0/1 results of `who` on n questions whose ease is shared by every method of a seed
    (paired results correlate); shift moves every question's chance of being right (a
    planted effect)."""
    ease = random.Random(seed)
    chances = [ease.random() for _ in range(n)]
    draw = random.Random(f"{seed}/{who}/{shift}")
    return [int(draw.random() < p + shift) for p in chances]


def paired_rows(seed, correct, agreeing=None):
    agreeing = agreeing or [3] * len(correct)
    return {
        "accuracy": sum(correct) / len(correct),
        "consensus": sum(agreeing) / 3 / len(agreeing),
        "questions": f"questions-of-seed-{seed}",
        "per_question": {"correct": correct, "agreeing": agreeing, "embedding_dissimilarity": None},
    }


def seeded_run(root, variant, seed, shifts, method="multiagent_ft", agreeing=None):
    """A run with per-question results at each iteration (one shift per iteration); at
    iteration 0 every method is the same base society, so it answers alike."""
    rows = [
        paired_rows(seed, answers(seed, variant if i else "base", s), agreeing and agreeing(seed, i))
        for i, s in enumerate(shifts)
    ]
    make_run(
        root,
        f"{variant}/seed{seed}",
        method,
        "arithmetic",
        [r["accuracy"] for r in rows],
        model="tiny",
        seed=seed,
        more=rows,
        variant=variant,
    )


DELTA = re.compile(r"([+-]\d+\.\d+) \[([+-]\d+\.\d+), ([+-]\d+\.\d+)\](?:, p (< 0.001|= [\d.]+))?")


def delta(line):
    """(Δ, low, high, p) of the first comparison in a table line."""
    found = DELTA.search(line)
    assert found, line
    est, low, high, p = found.groups()
    return float(est), float(low), float(high), p and (0.0 if p == "< 0.001" else float(p[2:]))


def row_of(path, start):
    return next(line for line in lines_of(path) if line.startswith(start))


def test_a_planted_difference_is_found_and_no_difference_is_not(tmp_path):
    for seed in range(3):
        seeded_run(tmp_path, "multiagent_ft", seed, [0.0, 0.0])
        seeded_run(tmp_path, "no_critics", seed, [0.0, -0.08])  # 8 points worse: found
        seeded_run(tmp_path, "no_summary", seed, [0.0, 0.0])  # the same chances: not found
    seeded_run(tmp_path, "single_agent_ft", 5, [0.0, 0.0])  # another seed: nothing to pair with
    make_run(tmp_path, "old", "multiagent_ft", "arithmetic", [0.4, 0.5], model="tiny", variant="unique_id")
    build_report([tmp_path], tmp_path / "out")

    table2 = tmp_path / "out" / "table2.md"
    assert "| variant | tiny | Δ vs multiagent FT: tiny |" in lines_of(table2)
    assert row_of(table2, "| multiagent FT |").endswith(
        "(3 runs: "
        + ", ".join(f"{100 * sum(answers(seed, 'multiagent_ft')) / 500:.1f}" for seed in range(3))
        + ") | reference |"
    )
    est, low, high, p = delta(row_of(table2, "| without critics |"))
    assert -11 < est < -5 and high < 0 and p < 0.001
    assert "(3 seeds: " in row_of(table2, "| without critics |")
    est, low, high, p = delta(row_of(table2, "| without summary |"))
    assert low < 0 < high and p > 0.05
    assert row_of(table2, "| single-agent FT |").endswith("| unpaired |")
    assert row_of(table2, "| one model, unique ID per agent |").endswith("| unpaired |")  # no per-question
    assert "exact McNemar test pooled over seeds" in table2.read_text()


def test_runs_without_per_question_results_get_no_comparison(tmp_path):
    make_run(tmp_path, "ours", "multiagent_ft", "math", [0.5, 0.6])
    make_run(tmp_path, "single", "single_agent_ft", "math", [0.5, 0.55])
    build_report([tmp_path], tmp_path / "out")
    table2 = (tmp_path / "out" / "table2.md").read_text()
    assert "| variant | phi3 |\n" in table2 and "Δ" not in table2
    assert "No paired comparison" in table2


def test_iterations_table_compares_accuracy_and_consensus_by_iteration(tmp_path):
    def agreeing(more):  # 3 agents; `more`: the share of questions where all three agree
        return lambda seed, i: [
            3 if random.Random(f"{seed}/{q}/{i}").random() < more * i else 2 for q in range(500)
        ]

    for seed in range(3):
        seeded_run(tmp_path, "multiagent_ft", seed, [0.0, 0.0, 0.0], agreeing=agreeing(0.1))
        seeded_run(tmp_path, "single_agent_ft", seed, [0.0, 0.0, 0.0], "single_agent_ft", agreeing(0.3))
    build_report([tmp_path], tmp_path / "out")
    table = tmp_path / "out" / "iterations.md"
    assert "## arithmetic · tiny: single-agent FT (variant) vs multiagent FT" in lines_of(table)
    assert row_of(table, "| 0 |").count("+0.00 [+0.00, +0.00], p = 1.000") == 1  # the same base society
    for i in (1, 2):
        cells = [c.strip("| ") for c in row_of(table, f"| {i} |").split(" | ")]
        est, low, high, p = delta(cells[3])  # accuracy: the same chances
        assert low < 0 < high and p > 0.05
        est, low, high, _ = delta(cells[5])  # consensus: a third more often unanimous
        assert est == pytest.approx(0.2 * i / 3, abs=0.03) and low > 0
        ours, theirs = map(float, cells[4].split(" / "))  # the mean consensus of each
        assert theirs - ours == pytest.approx(est, abs=0.002)
        mean = f"{0.3 - 0.01 * i:.3f}"  # means from the rows, but no per-question values to pair
        assert cells[6] == f"{mean} / {mean}" and cells[7] == "unpaired"


def test_several_seeds_draw_a_band_and_one_run_error_bars():
    from matplotlib.collections import PolyCollection

    seeds = plots.Line("seeds", [0, 1], [40.0, 42.0], [1.0, 1.5], (([0, 1], [39, 41]), ([0, 1], [41, 43])))
    single = plots.Line("one run", [0, 1], [40.0, 41.0], [2.2, 2.2])
    fig = plots.figure({"arithmetic": [seeds, single]}, "iteration", "accuracy")
    ax = fig.axes[0]
    [band] = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert band.get_paths()[0].vertices[:, 1].min() == pytest.approx(39.0)  # mean - sem at iteration 0
    assert len(ax.containers) == 1  # the single run's error bars
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["seeds (2 runs)", "one run"]


def test_an_unreadable_run_is_skipped_and_paths_without_runs_are_named(tmp_path, monkeypatch, capsys, caplog):
    make_run(tmp_path / "runs", "good", "debate", "gsm", [0.5])
    make_run(tmp_path / "runs", "cut", "debate", "math", [0.5, 0.6])
    metrics = tmp_path / "runs" / "cut" / "metrics.jsonl"
    metrics.write_bytes(metrics.read_bytes()[:-20])  # a copy cut short
    make_run(tmp_path / "runs", "bad-config", "debate", "math", [0.5])
    (tmp_path / "runs" / "bad-config" / "config.yaml").write_text("iterations: [1\n")
    (tmp_path / "empty").mkdir()
    paths = [tmp_path / "runs", tmp_path / "empty", tmp_path / "misspelt"]
    monkeypatch.setattr(sys, "argv", ["mfsi.report", *map(str, paths), "--out", str(tmp_path / "out")])
    report.main()  # the command: a warning each, the report of the readable run
    assert "1 runs" in capsys.readouterr().out
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        f"{tmp_path / 'empty'}: no runs (no metrics.jsonl)",
        f"{tmp_path / 'misspelt'}: no such file or folder",
        f"{tmp_path / 'runs' / 'bad-config'}: cannot be read "
        f"({tmp_path / 'runs' / 'bad-config' / 'config.yaml'}: damaged, not valid YAML): run skipped",
        f"{tmp_path / 'runs' / 'cut'}: cannot be read ({metrics}:3: not valid JSON "
        "(Unterminated string starting at)): run skipped",
    ]


@pytest.mark.parametrize(
    "name,content,problem",
    [
        ("binary", b"\x00\x01\x02", ": a binary file (it holds NUL bytes), not text"),
        ("latin-1", '{"model": "caf\u00e9"}\n'.encode("latin-1"), ":1: not UTF-8 text (byte 0xe9)"),
        ("foreign", b'{"step": 1, "loss": 0.5}\n', ":1: not a metrics row of mfsi (no split)"),
        (
            "no-model",
            b'{"split": "eval", "iteration": 0, "accuracy": 0.5}\n',
            ":1: not a metrics row of mfsi (no model",
        ),
        ("empty", b"", ": no evaluation rows (empty)"),
    ],
)
def test_an_unreadable_metrics_file_is_named_and_the_good_runs_are_reported(
    tmp_path, caplog, name, content, problem
):
    make_run(tmp_path / "runs", "good", "debate", "gsm", [0.5])
    (tmp_path / "runs" / name).mkdir()
    metrics = tmp_path / "runs" / name / "metrics.jsonl"
    metrics.write_bytes(content)
    result = build_report([tmp_path / "runs"], tmp_path / "out")
    assert result["runs"] == [tmp_path / "runs" / "good"]
    assert f"{metrics.parent}: cannot be read ({metrics}{problem}" in caplog.text


def test_an_undecodable_config_is_named(tmp_path, caplog):
    make_run(tmp_path / "runs", "good", "debate", "gsm", [0.5])
    make_run(tmp_path / "runs", "bad", "debate", "math", [0.5])
    config = tmp_path / "runs" / "bad" / "config.yaml"
    config.write_bytes(b"seed: \xff\n")
    assert build_report([tmp_path / "runs"], tmp_path / "out")["runs"] == [tmp_path / "runs" / "good"]
    assert f"cannot be read ({config}:1: not UTF-8 text (byte 0xff)): run skipped" in caplog.text
