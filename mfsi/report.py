"""The paper's tables and plots from run directories (reads metrics.jsonl; W&B not needed).

    python -m mfsi.report runs/ [more runs or folders of runs ...] [--out report/] [--iteration K]
    build_report(["runs/"], "report/")  # the same from Python; returns what it read and wrote

Every metrics.jsonl under the given paths is one run (its folder, with config.yaml beside
it); only eval-split rows count, the latest row per iteration. Written to --out:
  table1.md   methods x tasks, grouped by model (paper Table 1), at each run's last iteration
  table2.md   ablation variants x models, one table per task (paper Table 2)
  table4.md   methods x number of agents, one table per task (paper Table 4: 5 agents)
  accuracy_by_iteration.png   accuracy per finetuning iteration, one line per variant/model
  diversity_by_iteration.png  consensus and the mfsi.diversity metrics per iteration
  accuracy_by_round.png       majority accuracy per debate round at the last iteration
  report.md   all of the above on one page, with the list of runs
Cells are "accuracy ± stderr" in %. Several runs in one cell (seeds) give the mean over runs
± the standard error of that mean, then "(k runs)". A run that stopped before its configured
iterations is used only where no finished run fills the cell, and the cell is marked "*".
With --iteration K everything is read as of iteration K (rows after K are ignored; a run
counts as finished once it reached K), e.g. Table 2 after one iteration from 5-iteration runs.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import yaml

matplotlib.use("Agg")  # files only, no display (before pyplot is imported)
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from mfsi import rundir  # noqa: E402
from mfsi.errors import DataError  # noqa: E402

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
}
NO_FINETUNING = {"base", "majority", "debate"}  # iteration 0 only: no curve over iterations
DIVERSITY = ["consensus", "embedding_dissimilarity", "likelihood_diversity", "kl_divergence", "kl_from_base"]
MISSING = "–"


@dataclass
class Run:
    path: Path
    rows: list[dict]  # eval rows, one per iteration, in order
    finished: bool  # reached the configured number of iterations

    @property
    def last(self) -> dict:
        return self.rows[-1]

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


def read_run(metrics: Path, iteration: int | None) -> Run | None:
    """The run whose metrics.jsonl this is, read up to `iteration`; None without eval rows."""
    by_iteration = {r["iteration"]: r for r in rundir.read_jsonl(metrics) if r.get("split") == "eval"}
    rows = [by_iteration[i] for i in sorted(by_iteration) if iteration is None or i <= iteration]
    if not rows:
        return None
    config = metrics.parent / "config.yaml"
    try:
        settings = (yaml.safe_load(config.read_text()) or {}) if config.exists() else {}
    except yaml.YAMLError:
        raise DataError(f"{config}: damaged, not valid YAML") from None
    planned = settings.get("iterations")
    if settings.get("method", {}).get("selection") == "none":  # the loop stops after iteration 0
        planned = 0
    if iteration is not None and planned is not None:
        planned = min(planned, iteration)
    return Run(metrics.parent, rows, planned is None or rows[-1]["iteration"] >= planned)


def mean_error(values: list[float], stderrs: list[float]) -> tuple[float, float]:
    """One value with its own stderr, or the mean of several ± the stderr of their mean."""
    if len(values) == 1:
        return values[0], stderrs[0]
    mean = sum(values) / len(values)
    spread = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(spread / len(values))


def cell(runs: list[Run]) -> str:
    """A table cell from the runs of one (model, task, variant); see the module doc."""
    finished = [r for r in runs if r.finished]
    used = finished or runs
    if not used:
        return MISSING
    if len({(r.last["agents"], r.last["rounds"]) for r in used}) > 1:
        log.warning(
            "runs with different agents/rounds share a cell (label them with a variant): %s",
            [str(r.path) for r in used],
        )
    accuracy, error = mean_error([r.last["accuracy"] for r in used], [r.last["stderr"] for r in used])
    text = f"{100 * accuracy:.2f} ± {100 * error:.2f}"
    if len(used) > 1:
        text += f" ({len(used)} runs)"
    return text if finished else text + " *"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = [header, ["---"] * len(header), *rows]
    return "".join("| " + " | ".join(line) + " |\n" for line in lines)


def table1(groups: dict[tuple, list[Run]], at: str) -> str:
    models = sorted({model for model, _, variant in groups if variant in METHODS})
    rows = [
        [model if i == 0 else "", name, *(cell(groups.get((model, task, method), [])) for task in TASKS)]
        for model in models
        for i, (method, name) in enumerate(METHODS.items())
    ]
    body = markdown_table(["model", "method", *TASKS], rows) if rows else "No runs of these methods.\n"
    return f"# Table 1: accuracy (%) on held-out questions, {at}\n\n" + body + NOTE


def table2(groups: dict[tuple, list[Run]], at: str) -> str:
    scaled = {
        k[2]
        for k, runs in groups.items()
        if agents_label(k[2], runs[0].last["method"], runs[0].last["agents"])
    }
    extra = sorted({variant for _, _, variant in groups} - set(METHODS) - set(ABLATIONS) - scaled)
    variants = {**ABLATIONS, **{v: v for v in extra}}
    text = f"# Table 2: ablations, accuracy (%), {at}\n"
    tasks = [
        t for t in TASKS if any(k[1] == t and k[2] in variants and k[2] != "multiagent_ft" for k in groups)
    ]
    for task in tasks:
        models = sorted({model for model, t, variant in groups if t == task and variant in variants})
        rows = [[name, *(cell(groups.get((m, task, v), [])) for m in models)] for v, name in variants.items()]
        text += f"\n## {task}\n\n" + markdown_table(["variant", *models], rows)
    return text + (NOTE if tasks else "\nNo ablation runs.\n")


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
    "\nCells: accuracy ± stderr of one run, or the mean over k runs ± the stderr of that mean "
    f'"(k runs)"; "*": from runs that stopped before their last iteration; "{MISSING}": no run.\n'
)

Line = tuple[str, list[float], list[float], list[float]]  # label, x, y, error bars


def draw(path: Path, panels: dict[str, list[Line]], xlabel: str, ylabel: str) -> None:
    """One panel per entry, side by side; an empty panel says so instead of going blank."""
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(5 * max(len(panels), 1), 4), squeeze=False)
    for ax, (title, lines) in zip(axes[0], panels.items() or [("no runs", [])]):
        for label, x, y, err in lines:
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=label)
        if not lines:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        else:
            ax.legend(fontsize="small")
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def per_iteration(runs: list[Run], key: str, stderr: str | None = None) -> tuple[list, list, list]:
    """Iterations, the mean of key over the runs that have it there, and its error (stderr: the
    key of one run's own error; without one, a single run has none)."""
    at: dict[int, list[dict]] = defaultdict(list)
    for run in runs:
        for row in run.rows:
            if row.get(key) is not None:
                at[row["iteration"]].append(row)
    points = [
        (i, *mean_error([r[key] for r in rows], [r[stderr] if stderr else 0.0 for r in rows]))
        for i, rows in sorted(at.items())
    ]
    return [p[0] for p in points], [p[1] for p in points], [p[2] for p in points]


def plot_accuracy_by_iteration(groups: dict[tuple, list[Run]], path: Path) -> None:
    panels: dict[str, list[Line]] = {}
    for (model, task, variant), runs in sorted(groups.items(), key=lambda kv: kv[0][1]):
        if variant not in NO_FINETUNING:
            x, y, err = per_iteration(runs, "accuracy", "stderr")
            line = (f"{variant} · {model}", x, [100 * v for v in y], [100 * e for e in err])
            panels.setdefault(task, []).append(line)
    draw(path, panels, "finetuning iteration", "accuracy (%)")


def plot_diversity_by_iteration(groups: dict[tuple, list[Run]], path: Path) -> None:
    panels: dict[str, list[Line]] = {key: [] for key in DIVERSITY}
    for (model, task, variant), runs in sorted(groups.items()):
        if variant in NO_FINETUNING:
            continue
        for key in DIVERSITY:
            x, y, err = per_iteration(runs, key)
            if x:
                panels[key].append((f"{variant} · {model} · {task}", x, y, err))
    draw(path, panels, "finetuning iteration", "")


def plot_accuracy_by_round(groups: dict[tuple, list[Run]], path: Path) -> None:
    panels: dict[str, list[Line]] = {}
    for (model, task, variant), runs in sorted(groups.items(), key=lambda kv: kv[0][1]):
        used = [r for r in runs if r.finished] or runs
        curves = [r.last["accuracy_by_round"] for r in used if len(r.last.get("accuracy_by_round", [])) > 1]
        if len({len(c) for c in curves}) == 1:  # debates (2+ rounds) of one length, to average
            y = [100 * sum(c[m] for c in curves) / len(curves) for m in range(len(curves[0]))]
            label = f"{variant} · {model} (iteration {max(r.last['iteration'] for r in used)})"
            panels.setdefault(task, []).append((label, list(range(1, len(y) + 1)), y, [0.0] * len(y)))
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
    tables = {"table1.md": table1(groups, at), "table2.md": table2(groups, at), "table4.md": table4(runs, at)}
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
    result = build_report(args.run_dirs, args.out, args.iteration)
    print(f"{len(result['runs'])} runs -> {Path(args.out) / 'report.md'}")


if __name__ == "__main__":
    main()
