"""The paper's tables and plots from run directories (reads metrics.jsonl; W&B not needed).

    python -m mfsi.report runs/ [more runs or folders of runs ...] [--out report/] [--iteration K]
    build_report(["runs/"], "report/")  # the same from Python; returns what it read and wrote

Every metrics.jsonl under the given paths is one run (its folder, with config.yaml beside
it); only eval-split rows count, the latest row per iteration. Written to --out:
  table1.md   methods x tasks, grouped by model (paper Table 1), at each run's last iteration
  table2.md   ablation variants x models, one table per task (paper Table 2)
  table4.md   methods x number of agents, one table per task (paper Table 4: 5 agents)
  iterations.md  each finetuned variant run for 2+ iterations against multiagent FT, by
              iteration: accuracy, consensus and embedding dissimilarity, paired differences
  accuracy_by_iteration.png   accuracy per finetuning iteration, one line per variant/model
  diversity_by_iteration.png  consensus and the mfsi.diversity metrics per iteration
  accuracy_by_round.png       majority accuracy per debate round at the last iteration
  report.md   all of the above on one page, with the list of runs
Cells are "accuracy ± stderr" in %. Several runs in one cell (seeds) give the mean over runs
± the standard error of that mean (sample standard deviation / sqrt(k)), then each run's
accuracy "(k runs: a, b, c)" in seed order. A run that stopped before its configured
iterations is used only where no finished run fills the cell, and the cell is marked "*".
In the plots several runs of a line give their mean, a band of ± that standard error, and
each run's own curve (faint); one run gives error bars of its own stderr.

Paired comparisons (mfsi/stats.py has the exact definitions): every variant is compared with
multiagent FT (REFERENCE) of the same model and task, on the runs that answered the same eval
questions (same `questions` fingerprint in metrics.jsonl, i.e. the same seed and sizes), one
pair per seed. "Δ" columns (Tables 1 and 2, iterations.md) give the variant minus multiagent
FT in points: the mean over seeds of the per-question difference, a 95% bootstrap interval
resampling seeds and then questions (paired), the exact McNemar p pooled over seeds, and each
seed's own Δ. iterations.md does the same for consensus (share of agents agreeing with the
majority, per question) and embedding dissimilarity. Runs without per-question results (made
before mfsi kept them) cannot be paired: their cells say "unpaired", and a table without any
pair says so instead of showing Δ columns.
With --iteration K everything is read as of iteration K (rows after K are ignored; a run
counts as finished once it reached K), e.g. Table 2 after one iteration from 5-iteration runs.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import yaml

from mfsi import console, rundir
from mfsi.errors import DataError
from mfsi.plots import Line, draw
from mfsi.stats import Difference, Pair, mcnemar, mean_sem, paired_bootstrap

log = logging.getLogger(__name__)

TASKS = ["arithmetic", "gsm", "math"]
METHODS = {  # Table 1 rows, in the paper's order
    "base": "Base",
    "majority": "Majority",
    "debate": "Debate",
    "star": "STaR",
    "majority_ft": "Majority FT",
    "multiagent_ft": "Multiagent FT (ours)",
}
ABLATIONS = {  # Table 2 rows; other variant labels are added below them (not Table 4's)
    "multiagent_ft": "multiagent FT",
    "no_summary": "without summary",
    "no_critics": "without critics",
    "single_agent_ft": "single-agent FT",
    "single_agent_ft_no_debate": "single-agent FT without debate",
    "unique_id": "one model, unique ID per agent",
    "cooperative": "cooperative debate",
}
REFERENCE = "multiagent_ft"  # the variant every other one is compared with, question by question
NO_FINETUNING = {"base", "majority", "debate"}  # iteration 0 only: no curve over iterations
DIVERSITY = ["consensus", "embedding_dissimilarity", "likelihood_diversity", "kl_divergence", "kl_from_base"]
MISSING = "–"
UNPAIRED = "unpaired"
REFERENCE_CELL = "reference"
BOOTSTRAP_SAMPLES = 10_000


@dataclass
class Run:
    path: Path
    rows: list[dict]  # eval rows, one per iteration, in order
    finished: bool  # reached the configured number of iterations
    seed: int | None = None  # from config.yaml

    @property
    def last(self) -> dict:
        return self.rows[-1]

    def at(self, iteration: int | None) -> dict | None:
        """The row of that iteration (None: the last row); None when the run has none."""
        if iteration is None:
            return self.last
        return next((r for r in self.rows if r["iteration"] == iteration), None)

    @property
    def key(self) -> tuple[str, str, str]:
        return self.last["model"], self.last["task"], self.last.get("variant") or self.last["method"]


def load_runs(paths: list[Path], iteration: int | None = None) -> list[Run]:
    """Every run with at least one eval row under paths (a run directory or any parent),
    read up to `iteration` when given. A run whose files cannot be read is skipped, and a
    path that holds no run is named, with a warning each."""
    found: set[Path] = set()
    for path in map(Path, paths):
        runs_here = set(path.rglob("metrics.jsonl"))
        if not runs_here:
            log.warning(
                "%s: %s", path, "no runs (no metrics.jsonl)" if path.exists() else "no such file or folder"
            )
        found |= runs_here
    runs = []
    for metrics in sorted(found):
        try:
            run = read_run(metrics, iteration)
        except (DataError, OSError, KeyError, TypeError, AttributeError) as e:  # damaged or foreign files
            log.warning("%s: cannot be read (%s): run skipped", metrics.parent, e)
            continue
        if run:
            runs.append(run)
    return runs


ROW = {  # what the report reads of an eval row: key -> type
    "iteration": int,
    "model": str,
    "task": str,
    "method": str,
    "agents": int,
    "rounds": int,
    "accuracy": (int, float),
    "stderr": (int, float),
}


def read_run(metrics: Path, iteration: int | None) -> Run | None:
    """The run whose metrics.jsonl this is, read up to `iteration`. DataError naming file:line
    for a line that is not an eval row of mfsi, and for a file without eval rows."""
    by_iteration = {}
    for number, row in rundir.json_lines(metrics):
        if isinstance(row, DataError):
            raise row
        if not isinstance(row, dict) or row.get("split") not in ("eval", "train"):
            raise DataError(f"{metrics}:{number}: not a metrics row of mfsi (no split)")
        wrong = [key for key, kind in ROW.items() if not isinstance(row.get(key), kind)]
        if row["split"] == "eval" and wrong:
            raise DataError(f"{metrics}:{number}: not a metrics row of mfsi (no {', '.join(wrong)})")
        if row["split"] == "eval":
            by_iteration[row["iteration"]] = row
    if not by_iteration:
        raise DataError(f"{metrics}: no evaluation rows (empty)")
    rows = [by_iteration[i] for i in sorted(by_iteration) if iteration is None or i <= iteration]
    if not rows:
        return None
    config = metrics.parent / "config.yaml"
    try:
        settings = (yaml.safe_load(rundir.read_text(config)) or {}) if config.exists() else {}
    except yaml.YAMLError:
        raise DataError(f"{config}: damaged, not valid YAML") from None
    if not isinstance(settings, dict):
        raise DataError(f"{config}: not a run's config (a mapping of settings)")
    planned = settings.get("iterations")
    if (settings.get("method") or {}).get("selection") == "none":  # the loop stops after iteration 0
        planned = 0
    if iteration is not None and planned is not None:
        planned = min(planned, iteration)
    finished = planned is None or rows[-1]["iteration"] >= planned
    return Run(metrics.parent, rows, finished, settings.get("seed"))


def mean_error(values: list[float], stderrs: list[float]) -> tuple[float, float]:
    """One value with its own stderr, or the mean of several ± the stderr of their mean."""
    mean, sem = mean_sem(values)
    return mean, stderrs[0] if sem is None else sem


def used(runs: list[Run]) -> list[Run]:
    """The runs a cell reads: the finished ones, or all when none finished; by seed."""
    return sorted(
        [r for r in runs if r.finished] or runs, key=lambda r: (r.seed is None, r.seed or 0, r.path)
    )


def cell(runs: list[Run], iteration: int | None = None) -> str:
    """A table cell from the runs of one (model, task, variant) at an iteration (None: each
    run's last); see the module doc."""
    rows = [row for r in used(runs) if (row := r.at(iteration))]
    if not rows:
        return MISSING
    if len({(r["agents"], r["rounds"]) for r in rows}) > 1:
        log.warning(
            "runs with different agents/rounds share a cell (label them with a variant): %s",
            [str(r.path) for r in used(runs)],
        )
    accuracy, error = mean_error([r["accuracy"] for r in rows], [r["stderr"] for r in rows])
    text = f"{100 * accuracy:.2f} ± {100 * error:.2f}"
    if len(rows) > 1:
        each = ", ".join(f"{100 * r['accuracy']:.1f}" for r in rows)
        text += f" ({len(rows)} runs: {each})"
    return text if any(r.finished for r in runs) else text + " *"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = [header, ["---"] * len(header), *rows]
    return "".join("| " + " | ".join(line) + " |\n" for line in lines)


# --- paired comparisons with the reference method ----------------------------------------
def per_question(row: dict, metric: str) -> list[float] | None:
    """A row's per-question values of "correct" (0/1), "consensus" (share of the agents that
    agree with the majority) or "embedding_dissimilarity"; None where the row has none
    (runs made before mfsi kept them, or a metric that was not computed)."""
    values = (row.get("per_question") or {}).get("agreeing" if metric == "consensus" else metric)
    if not values:
        return None
    return [k / row["agents"] for k in values] if metric == "consensus" else values


def pairs(runs: list[Run], reference: list[Run], metric: str, iteration: int | None = None) -> list[Pair]:
    """(runs' values, reference's values) for each set of questions both answered (the
    fingerprint: same seed and sizes), i.e. one pair per seed, in seed order."""
    theirs: dict[str, list[float]] = {}
    for run in used(reference):
        row = run.at(iteration)
        if row and row.get("questions") and (values := per_question(row, metric)) is not None:
            theirs.setdefault(row["questions"], values)
    found: dict[str, Pair] = {}
    for run in used(runs):
        row = run.at(iteration)
        if row and row.get("questions") in theirs and (values := per_question(row, metric)) is not None:
            found.setdefault(row["questions"], (values, theirs[row["questions"]]))
    return list(found.values())


def interval(d: Difference, scale: float, digits: int) -> str:
    return f"{scale * d.estimate:+.{digits}f} [{scale * d.low:+.{digits}f}, {scale * d.high:+.{digits}f}]"


def p_text(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def accuracy_comparison(runs: list[Run], reference: list[Run], iteration: int | None = None) -> str:
    """Δ accuracy of runs minus reference in points [95% CI], McNemar p, each seed's Δ."""
    if runs is reference:  # the reference's own row
        return REFERENCE_CELL
    if not runs:
        return MISSING
    found = pairs(runs, reference, "correct", iteration)
    if not found:
        return UNPAIRED
    d = paired_bootstrap(found, BOOTSTRAP_SAMPLES)
    text = f"{interval(d, 100, 2)}, {p_text(mcnemar(found)[2])}"
    if len(found) > 1:
        text += f" ({len(found)} seeds: {', '.join(f'{100 * x:+.1f}' for x in d.per_pair)})"
    return text


def diversity_comparison(runs: list[Run], reference: list[Run], metric: str, iteration: int) -> list[str]:
    """[reference mean / runs' mean, Δ [95% CI]] of a diversity metric at an iteration."""
    means = []
    for group in (reference, runs):
        values = [
            row[metric] for r in used(group) if (row := r.at(iteration)) and row.get(metric) is not None
        ]
        means.append(f"{sum(values) / len(values):.3f}" if values else MISSING)
    found = pairs(runs, reference, metric, iteration)
    return [
        " / ".join(means),
        interval(paired_bootstrap(found, BOOTSTRAP_SAMPLES), 1, 3) if found else UNPAIRED,
    ]


def comparison_columns(header: str, cells: list[str]) -> list[tuple[str, list[str]]]:
    """The column as [(header, cells)] if any cell is a comparison, else none."""
    return [(header, cells)] if set(cells) - {MISSING, UNPAIRED, REFERENCE_CELL} else []


def table_with_columns(
    first: list[list[str]], header: list[str], columns: list[tuple[str, list[str]]]
) -> str:
    rows = [[*lead, *(cells[i] for _, cells in columns)] for i, lead in enumerate(first)]
    return markdown_table([*header, *(name for name, _ in columns)], rows)


def table1(groups: dict[tuple, list[Run]], at: str) -> str:
    models = sorted({model for model, _, variant in groups if variant in METHODS})
    keys = [(model, method) for model in models for method in METHODS]
    columns = []
    for task in TASKS:
        runs = [groups.get((model, task, method), []) for model, method in keys]
        reference = [groups.get((model, task, REFERENCE), []) for model, _ in keys]
        columns.append((task, [cell(r) for r in runs]))
        comparisons = [accuracy_comparison(r, ref) for r, ref in zip(runs, reference)]
        columns += comparison_columns(f"Δ vs ours: {task}", comparisons)
    first = [
        [model if i == 0 else "", METHODS[method]] for model in models for i, method in enumerate(METHODS)
    ]
    body = table_with_columns(first, ["model", "method"], columns) if first else "No runs of these methods.\n"
    return f"# Table 1: accuracy (%) on held-out questions, {at}\n\n" + body + notes(columns, bool(first))


def table2(groups: dict[tuple, list[Run]], at: str) -> str:
    scaled = {
        k[2]
        for k, runs in groups.items()
        if agents_label(k[2], runs[0].last["method"], runs[0].last["agents"])
    }
    extra = sorted({variant for _, _, variant in groups} - set(METHODS) - set(ABLATIONS) - scaled)
    variants = {**ABLATIONS, **{v: v for v in extra}}
    text = f"# Table 2: ablations, accuracy (%), {at}\n"
    tasks = [t for t in TASKS if any(k[1] == t and k[2] in variants and k[2] != REFERENCE for k in groups)]
    columns: list[tuple[str, list[str]]] = []
    for task in tasks:
        models = sorted({model for model, t, variant in groups if t == task and variant in variants})
        task_columns = []
        for m in models:
            runs = [groups.get((m, task, v), []) for v in variants]
            reference = groups.get((m, task, REFERENCE), [])
            task_columns.append((m, [cell(r) for r in runs]))
            comparisons = [accuracy_comparison(r, reference) for r in runs]
            task_columns += comparison_columns(f"Δ vs multiagent FT: {m}", comparisons)
        first = [[name] for name in variants.values()]
        text += f"\n## {task}\n\n" + table_with_columns(first, ["variant"], task_columns)
        columns += task_columns
    return text + (notes(columns, True) if tasks else "\nNo ablation runs.\n")


def iterations_table(groups: dict[tuple, list[Run]], at: str) -> str:
    """Each finetuned variant run for 2+ iterations next to multiagent FT, iteration by
    iteration: accuracy, the paired Δ, and consensus and embedding dissimilarity with theirs."""
    text = f"# Iterations: each variant against multiagent FT by finetuning iteration, {at}\n"
    header = [
        "iteration",
        "multiagent FT",
        "variant",
        "Δ accuracy",
        "consensus: ours / variant",
        "Δ consensus",
        "embedding dissim.: ours / variant",
        "Δ embedding dissim.",
    ]
    sections = []
    for (model, task, variant), runs in sorted(groups.items()):
        reference = groups.get((model, task, REFERENCE))
        if variant in (REFERENCE, *NO_FINETUNING) or not reference:
            continue
        if max(r.last["iteration"] for r in used(runs)) < 2:  # Table 2 shows one-iteration runs
            continue
        shared = {row["iteration"] for r in used(runs) for row in r.rows}
        shared &= {row["iteration"] for r in used(reference) for row in r.rows}
        rows = [
            [
                str(i),
                cell(reference, i),
                cell(runs, i),
                accuracy_comparison(runs, reference, i),
                *diversity_comparison(runs, reference, "consensus", i),
                *diversity_comparison(runs, reference, "embedding_dissimilarity", i),
            ]
            for i in sorted(shared)
        ]
        title = f"{task} · {model}: {label(variant)} (variant) vs multiagent FT"
        sections.append(f"\n## {title}\n\n" + markdown_table(header, rows))
    if not sections:
        return text + "\nNo finetuned variant was run for more than one iteration next to multiagent FT.\n"
    return text + "".join(sections) + NOTE + COMPARISON_NOTE + DIVERSITY_NOTE


def label(variant: str) -> str:
    return ABLATIONS.get(variant) or METHODS.get(variant) or variant


def notes(columns: list[tuple[str, list[str]]], any_rows: bool) -> str:
    """The cells' legend, and the comparisons' (or why there are none)."""
    if not any_rows:
        return ""
    compared = any(name.startswith("Δ") for name, _ in columns)
    return NOTE + (COMPARISON_NOTE if compared else NO_COMPARISON_NOTE)


def agents_label(variant: str, method: str, agents: int) -> bool:
    """Whether a run's variant is its plain method or `<method>_agents<N>` (the agents5
    preset's label): such runs differ from their method only in the number of agents."""
    return variant in (method, f"{method}_agents{agents}")


def table4(runs: list[Run], at: str) -> str:
    """Methods run with more than one number of agents, one column per agent count."""
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        (model, task, variant), method, agents = run.key, run.last["method"], run.last["agents"]
        if agents_label(variant, method, agents):
            groups[model, task, method, agents].append(run)
    counts: dict[tuple, set[int]] = defaultdict(set)
    for model, task, method, agents in groups:
        counts[model, task, method].add(agents)
    scaled = sorted((k for k, v in counts.items() if len(v) > 1), key=lambda k: (k[0], method_order(k[2])))
    text = f"# Table 4: accuracy (%) by number of agents, {at}\n"
    for task in [t for t in TASKS if any(k[1] == t for k in scaled)]:
        keys = [k for k in scaled if k[1] == task]
        columns = sorted(set().union(*(counts[k] for k in keys)))
        rows = [
            [model, METHODS.get(method, method), *(cell(groups[model, task, method, n]) for n in columns)]
            for model, _, method in keys
        ]
        header = ["model", "method", *(f"{n} agents" for n in columns)]
        text += f"\n## {task}\n\n" + markdown_table(header, rows)
    return text + (NOTE if scaled else "\nNo method was run with more than one number of agents.\n")


def method_order(method: str) -> int:
    """Table 1's order; methods outside it (single_agent_ft) after it."""
    return list(METHODS).index(method) if method in METHODS else len(METHODS)


NOTE = (
    "\nCells: accuracy ± stderr of one run, or the mean over k runs ± the standard error of that "
    f'mean "(k runs: each run\'s accuracy, by seed)"; "*": from runs that stopped before their last '
    f'iteration; "{MISSING}": no run.\n'
)
COMPARISON_NOTE = (
    "\nΔ: this row minus multiagent FT, in points, on the same questions (runs paired by seed): "
    "the mean over seeds [95% paired bootstrap interval over seeds and questions], "
    "p = exact McNemar test pooled over seeds, (each seed's Δ); "
    f'"{UNPAIRED}": no run of both on the same questions with per-question results (made before '
    "mfsi kept them, or another seed or size). Definitions: mfsi/stats.py.\n"
)
NO_COMPARISON_NOTE = (
    "\nNo paired comparison: no two of these runs answered the same questions with per-question "
    "results recorded (runs made before mfsi kept them have none), so differences between cells "
    "can only be read against their standard errors.\n"
)
DIVERSITY_NOTE = (
    "\nDiversity: the mean over runs of each; Δ = variant minus multiagent FT per question (consensus: "
    "the share of agents agreeing with the majority), mean over seeds [95% paired bootstrap "
    "interval over seeds and questions].\n"
)


def curve(label: str, runs: list[Run], key: str, stderr: str | None = None, scale: float = 1.0) -> Line:
    """key per iteration: the mean over the runs that have it there and its error (one run:
    its own `stderr` key, or none; several: the standard error of their mean), times scale."""
    at: dict[int, list[dict]] = defaultdict(list)
    for run in runs:
        for row in run.rows:
            if row.get(key) is not None:
                at[row["iteration"]].append(row)
    points = [
        (i, *mean_error([r[key] for r in rows], [r[stderr] if stderr else 0.0 for r in rows]))
        for i, rows in sorted(at.items())
    ]
    own = [
        (
            [r["iteration"] for r in run.rows if r.get(key) is not None],
            [scale * r[key] for r in run.rows if r.get(key) is not None],
        )
        for run in runs
    ]
    x, y, err = ([p[k] for p in points] for k in range(3))
    return Line(label, x, [scale * v for v in y], [scale * e for e in err], tuple(c for c in own if c[0]))


def plot_accuracy_by_iteration(groups: dict[tuple, list[Run]], path: Path) -> None:
    panels: dict[str, list[Line]] = {}
    for (model, task, variant), runs in sorted(groups.items(), key=lambda kv: kv[0][1]):
        if variant not in NO_FINETUNING:
            line = curve(f"{variant} · {model}", runs, "accuracy", "stderr", scale=100)
            panels.setdefault(task, []).append(line)
    draw(path, panels, "finetuning iteration", "accuracy (%)")


def plot_diversity_by_iteration(groups: dict[tuple, list[Run]], path: Path) -> None:
    panels: dict[str, list[Line]] = {key: [] for key in DIVERSITY}
    for (model, task, variant), runs in sorted(groups.items()):
        if variant in NO_FINETUNING:
            continue
        for key in DIVERSITY:
            line = curve(f"{variant} · {model} · {task}", runs, key)
            if line.x:
                panels[key].append(line)
    draw(path, panels, "finetuning iteration", "")


def plot_accuracy_by_round(groups: dict[tuple, list[Run]], path: Path) -> None:
    panels: dict[str, list[Line]] = {}
    for (model, task, variant), runs in sorted(groups.items(), key=lambda kv: kv[0][1]):
        read = used(runs)
        curves = [r.last["accuracy_by_round"] for r in read if len(r.last.get("accuracy_by_round", [])) > 1]
        if len({len(c) for c in curves}) == 1:  # debates (2+ rounds) of one length, to average
            y = [100 * sum(c[m] for c in curves) / len(curves) for m in range(len(curves[0]))]
            label = f"{variant} · {model} (iteration {max(r.last['iteration'] for r in read)})"
            panels.setdefault(task, []).append(Line(label, list(range(1, len(y) + 1)), y, [0.0] * len(y)))
    draw(path, panels, "debate round", "majority accuracy (%)")


def demote(markdown: str) -> str:
    """Every heading one level down, to nest a file's text under report.md's title."""
    return "".join("#" + line if line.startswith("#") else line for line in markdown.splitlines(True))


def build_report(run_dirs: list[str | Path], out_dir: str | Path, iteration: int | None = None) -> dict:
    """Read the runs under run_dirs (up to `iteration`), write the tables, plots and report.md
    into out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = load_runs([Path(p) for p in run_dirs], iteration)
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        groups[run.key].append(run)
    at = "last iteration" if iteration is None else f"iteration {iteration} (or the last before it)"
    tables = {
        "table1.md": table1(groups, at),
        "table2.md": table2(groups, at),
        "table4.md": table4(runs, at),
        "iterations.md": iterations_table(groups, at),
    }
    for name, text in tables.items():
        rundir.write_text(out / name, text)
    plots = {
        "accuracy_by_iteration.png": plot_accuracy_by_iteration,
        "diversity_by_iteration.png": plot_diversity_by_iteration,
        "accuracy_by_round.png": plot_accuracy_by_round,
    }
    for name, plot in plots.items():
        plot(groups, out / name)
    listing = [[str(r.path), *r.key, str(r.last["iteration"]), "yes" if r.finished else "no"] for r in runs]
    report = (
        f"# Report\n\n{len(runs)} runs (eval split).\n\n"
        + "\n".join(demote(text) for text in tables.values())
        + "\n## Plots\n\n"
        + "".join(f"![{name[:-4]}]({name})\n\n" for name in plots)
        + "## Runs\n\n"
        + markdown_table(["run", "model", "task", "variant", "last iteration", "finished"], listing)
    )
    rundir.write_text(out / "report.md", report)
    return {"runs": [r.path for r in runs], "files": [out / n for n in [*tables, *plots, "report.md"]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dirs", nargs="+", help="run directories or folders holding them")
    parser.add_argument("--out", default="report", help="where to write (default: report/)")
    parser.add_argument("--iteration", type=int, help="read every run as of this iteration")
    args = parser.parse_args()
    logging.basicConfig(format="%(levelname)s: %(message)s")
    console.doing(f"the report into {args.out}")
    with console.stop_on_signals(shlex.join(["python", "-m", "mfsi.report", *sys.argv[1:]])):
        result = build_report(args.run_dirs, args.out, args.iteration)
    print(f"{len(result['runs'])} runs -> {Path(args.out) / 'report.md'}")


if __name__ == "__main__":
    main()
