"""Figures of training runs, written as PNG files.

Every function draws on its own :class:`matplotlib.figure.Figure` (Agg canvas, no pyplot state,
nothing shown on screen), saves it to ``path`` and returns the path.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

PathLike = str | os.PathLike


def new_figure(width: float = 7.0, height: float = 4.5) -> Figure:
    """A figure bound to the Agg canvas (safe in scripts, tests and threads)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, path: PathLike) -> Path:
    """Write ``fig`` as a PNG to ``path`` (parent folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=120)
    return path


def _log_if_positive(ax: Axes, values: Sequence[float], ratio: float = 20.0) -> None:
    """Log y-scale when every finite value is positive and they span more than ``ratio``."""
    finite = [v for v in values if math.isfinite(v)]
    if finite and min(finite) > 0 and max(finite) / min(finite) > ratio:
        ax.set_yscale("log")


def _runs(results: Any) -> dict[str, Any]:
    if isinstance(results, Mapping):
        return dict(results)
    label = getattr(results, "optimizer", "") or "run"
    return {label: results}


def plot_loss(results: Any, path: PathLike, *, title: str | None = None) -> Path:
    """Training loss (thin) and validation loss (markers) against the step, one colour per run.

    ``results``: a :class:`~metaopt.train.TrainResult` or ``{label: TrainResult}``. A diverged run
    is marked with an ``x`` at the step it diverged."""
    runs = _runs(results)
    fig = new_figure()
    ax = fig.add_subplot()
    everything: list[float] = []
    for i, (label, result) in enumerate(runs.items()):
        colour = f"C{i % 10}"
        if result.curve:
            steps, losses = zip(*result.curve)
            ax.plot(steps, losses, color=colour, lw=1, alpha=0.7, label=f"{label} (train)")
            everything += losses
        if result.val_curve:
            steps, losses = zip(*result.val_curve)
            ax.plot(steps, losses, color=colour, lw=2, marker="o", ms=3, label=f"{label} (val)")
            everything += losses
        if result.status == "diverged" and result.diverged_at is not None:
            finite = [v for _, v in result.curve if math.isfinite(v)]
            y = finite[-1] if finite else 1.0
            ax.plot([result.diverged_at], [y], "x", color=colour, ms=10, mew=2,
                    label=f"{label} diverged")
    _log_if_positive(ax, everything)
    task = next((r.task for r in runs.values() if getattr(r, "task", "")), "")
    ax.set_title(title or f"Loss{f' on {task}' if task else ''}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return save(fig, path)


def plot_schedule(schedule: Any, steps: int | None, path: PathLike, *,
                  title: str | None = None, ylabel: str = "learning rate") -> Path:
    """A schedule's value against the step.

    ``schedule``: a schedule ``s(k)``, a sequence of values, or ``{label: either}`` for several
    curves; ``steps``: how many steps to draw (default: the length of the values)."""
    curves = dict(schedule) if isinstance(schedule, Mapping) else {"": schedule}
    fig = new_figure(7.0, 3.5)
    ax = fig.add_subplot()
    everything: list[float] = []
    for label, curve in curves.items():
        values = _values(curve, steps)
        ax.plot(range(len(values)), values, lw=1.5, label=label or None)
        everything += values
    _log_if_positive(ax, everything, ratio=100.0)
    name = getattr(schedule, "name", None)
    ax.set_title(title or (f"Schedule: {name}" if name else "Schedule"))
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if len(curves) > 1 or next(iter(curves)):
        ax.legend(fontsize="small")
    return save(fig, path)


def _values(curve: Callable[[int], Any] | Sequence[float], steps: int | None) -> list[float]:
    if callable(curve):
        if steps is None:
            raise ValueError("plot_schedule: steps is required for a schedule function")
        return [float(curve(k)) for k in range(steps)]
    values = [float(v) for v in curve]
    return values if steps is None else values[:steps]


def plot_grad_norm(result: Any, path: PathLike, *, title: str | None = None) -> Path:
    """The global gradient norm (top) and the update/parameter ratio ‖Δθ‖/‖θ‖ (bottom) of a
    :class:`~metaopt.train.TrainResult`'s diagnostics, both on log scales."""
    records = [r for r in result.diagnostics if "grad_norm" in r]
    fig = new_figure(7.0, 5.5)
    top, bottom = fig.subplots(2, 1, sharex=True)
    steps = [r["step"] for r in records]
    for ax, key, label in ((top, "grad_norm", "gradient norm ‖g‖"),
                           (bottom, "update_ratio", "update ratio ‖Δθ‖/‖θ‖")):
        values = [r.get(key, math.nan) for r in records]
        ax.plot(steps, values, lw=1)
        if any(math.isfinite(v) and v > 0 for v in values):
            ax.set_yscale("log")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3, which="both")
    bottom.set_xlabel("step")
    task = getattr(result, "task", "")
    top.set_title(title or f"Gradients and updates{f' on {task}' if task else ''}")
    return save(fig, path)
