"""Every figure mfsi draws: matplotlib to PNG files, written atomically.

    plot_rounds(rows, run_dir / "accuracy_by_round.png")          # a run's evaluations
    plot_iterations(rows, run_dir / "accuracy_by_iteration.png")
    draw(path, {"gsm": [Line(...), ...]}, "finetuning iteration", "accuracy (%)")  # mfsi.report

A run plots its own metrics rows (mfsi.metrics); the report builds `Line`s over many runs
and draws them in panels. matplotlib is imported on first use: a run's start-up does not
pay for it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from mfsi import rundir

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _pyplot():
    """matplotlib's pyplot, drawing to files only (no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Figure, path: Path) -> None:
    """Write a figure as PNG atomically, then close it."""
    fd, tmp = rundir.temporary(path, suffix=".png")
    os.close(fd)
    fig.savefig(tmp, dpi=120)
    _pyplot().close(fig)
    os.replace(tmp, path)


def _title(rows: list[dict]) -> str:
    first = rows[0] if rows else {}
    label = first.get("variant", first.get("method", ""))
    return f"{first.get('task', '')} {label}, {first.get('agents', '')} agents"


def plot_rounds(rows: list[dict], path: Path) -> None:
    """Majority accuracy (± stderr) after each debate round, one line per evaluation."""
    fig, ax = _pyplot().subplots(figsize=(5, 3.5))
    for row in rows:
        rounds = range(1, len(row["accuracy_by_round"]) + 1)
        acc = [100 * a for a in row["accuracy_by_round"]]
        err = [100 * row["stderr"] if m == len(acc) else 0 for m in rounds]  # final round only
        ax.errorbar(
            rounds, acc, yerr=err, marker="o", capsize=3, label=f"iter {row['iteration']} {row['split']}"
        )
    ax.set(xlabel="debate round", ylabel="majority accuracy (%)", title=_title(rows), ylim=(0, 100))
    ax.set_xticks(range(1, max((len(r["accuracy_by_round"]) for r in rows), default=1) + 1))
    ax.legend(fontsize=8)
    fig.tight_layout()
    save(fig, path)


def plot_iterations(rows: list[dict], path: Path) -> None:
    """Final-round majority accuracy (± stderr) and consensus after each finetuning iteration."""
    fig, ax = _pyplot().subplots(figsize=(5, 3.5))
    iterations = [r["iteration"] for r in rows]
    ax.errorbar(
        iterations,
        [100 * r["accuracy"] for r in rows],
        yerr=[100 * r["stderr"] for r in rows],
        marker="o",
        capsize=3,
        label="accuracy",
    )
    ax.plot(iterations, [100 * r["consensus"] for r in rows], marker="s", ls="--", label="consensus")
    ax.set(xlabel="finetuning iteration", ylabel="%", title=_title(rows), ylim=(0, 100))
    ax.set_xticks(iterations)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save(fig, path)


class Line(NamedTuple):
    label: str
    x: list[float]
    y: list[float]
    err: list[float]  # error bars of one run, or the half-width of the band of several
    runs: tuple[tuple[list[float], list[float]], ...] = ()  # each run's own (x, y)


def figure(panels: dict[str, list[Line]], xlabel: str, ylabel: str) -> Figure:
    """One panel per entry, side by side; an empty panel says so instead of going blank. A
    line from several runs (seeds) is their mean with a band of ± its standard error and
    each run's own curve drawn faintly; a line from one run has that run's error bars."""
    from matplotlib.ticker import MaxNLocator

    width = max(len(panels), 1)
    fig, axes = _pyplot().subplots(1, width, figsize=(5 * width, 4), squeeze=False)
    for ax, (title, lines) in zip(axes[0], panels.items() or [("no runs", [])]):
        for line in lines:
            if len(line.runs) > 1:
                (mean,) = ax.plot(line.x, line.y, marker="o", label=f"{line.label} ({len(line.runs)} runs)")
                low = [y - e for y, e in zip(line.y, line.err)]
                high = [y + e for y, e in zip(line.y, line.err)]
                ax.fill_between(line.x, low, high, color=mean.get_color(), alpha=0.2)
                for x, y in line.runs:
                    ax.plot(x, y, color=mean.get_color(), alpha=0.35, linewidth=0.8)
            else:
                ax.errorbar(line.x, line.y, yerr=line.err, marker="o", capsize=3, label=line.label)
        if not lines:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        else:
            ax.legend(fontsize="small")
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return fig


def draw(path: Path, panels: dict[str, list[Line]], xlabel: str, ylabel: str) -> None:
    """The panels' figure (`figure`) saved to path."""
    save(figure(panels, xlabel, ylabel), path)
