"""``metaopt report RUN_DIR``: a run's figures and a Markdown report a person can open.

Every command's run directory has ``summary.json``; what else the report shows depends on
what the command left: a training run's ``result.json`` gives loss, schedule and gradient
figures. Commands add renderers to ``RENDERERS``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from metaopt import runs


def _train_figures(directory: Path, summary: dict[str, Any]) -> list[tuple[str, Path]]:
    data_file = directory / "result.json"
    if not data_file.exists():
        return []
    from metaopt import plots

    data = json.loads(data_file.read_text())
    result = SimpleNamespace(
        curve=[tuple(x) for x in data["curve"] if x[1] is not None],
        val_curve=[tuple(x) for x in data["val_curve"] if x[1] is not None],
        diagnostics=data["diagnostics"], task=summary["task"],
        optimizer=summary["best"]["optimizer"], status=data["status"],
        diverged_at=data["diverged_at"], reason=data["reason"])
    figures = [("Loss", plots.plot_loss(result, directory / "loss.png"))]
    if any("grad_norm" in r for r in result.diagnostics):
        figures.append(("Gradient norm and update ratio",
                        plots.plot_grad_norm(result, directory / "grad_norm.png")))
    lrs = [r["lr"] for r in result.diagnostics if r.get("lr") is not None]
    if lrs:
        figures.append(("Learning rate", plots.plot_schedule(lrs, len(lrs),
                                                             directory / "lr.png")))
    if (directory / "landscape.png").exists():
        figures.append(("Loss landscape (filter-normalised directions, Li et al. 2018)",
                        directory / "landscape.png"))
    return figures


def _moving_average(values: Any, window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def _meta_train_figures(directory: Path, summary: dict[str, Any]) -> list[tuple[str, Path]]:
    """The meta-loss of every meta-step (and its moving average) beside the validation
    meta-loss (mean log10 ratio of held-out final losses to tuned Adam's, lower is better)."""
    data_file = directory / "meta_train.json"
    if not data_file.exists():
        return []
    from metaopt import plots

    data = json.loads(data_file.read_text())
    fig = plots.new_figure(10, 4)
    train_ax, val_ax = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    curve = [(k, v) for k, v in data["curve"] if v is not None]
    if curve:
        steps, values = zip(*curve)
        window = max(1, len(values) // 50)
        smooth = _moving_average(values, window)
        train_ax.plot(steps, values, lw=0.5, alpha=0.4, color="C0", label="per meta-step")
        train_ax.plot(steps, smooth, lw=2, color="C0", label=f"moving average ({window})")
    train_ax.set_title("training meta-loss")
    train_ax.set_xlabel("meta-step")
    val = [(k, v) for k, v in data["val_curve"] if v is not None]
    if val:
        steps, values = zip(*val)
        val_ax.plot(steps, values, marker="o", color="C1")
        val_ax.axvline(data["best_step"], color="gray", ls=":", label="kept (best)")
    val_ax.set_title("validation: log10(final loss / tuned Adam's), mean")
    val_ax.set_xlabel("meta-step")
    for ax in (train_ax, val_ax):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    return [("Meta-loss", plots.save(fig, directory / "meta_loss.png"))]


def _pbt_figures(directory: Path, summary: dict[str, Any]) -> list[tuple[str, Path]]:
    """A PBT run's lineage tree and hyperparameter trajectories, from ``lineage.json``."""
    if not (directory / "lineage.json").exists():
        return []
    from metaopt.pbt.report import redraw

    return redraw(directory)


RENDERERS: dict[str, Callable[[Path, dict[str, Any]], list[tuple[str, Path]]]] = {
    "train": _train_figures,
    "meta-train": _meta_train_figures,
    "pbt": _pbt_figures,
}


def format_value(value: Any) -> str:
    """A value as a report cell: floats to 4 digits, dicts as k=v, None as a dash."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={format_value(v)}" for k, v in value.items()) or "—"
    return "—" if value is None else str(value)


def render(directory: str | Path) -> Path:
    """Write the run's figures and ``report.md``; returns the report's path."""
    directory = Path(directory)
    summary = runs.read_summary(directory)
    renderer = RENDERERS.get(summary["command"], lambda d, s: [])
    figures = renderer(directory, summary)
    best = summary["best"]
    lines = [f"# {summary['command']}: {summary['task']}", "",
             "| | |", "|---|---|",
             f"| optimizer | {best['optimizer']} |",
             f"| hyperparameters | {format_value(best['hparams'])} |",
             f"| schedule | {format_value(best['schedule'])} |",
             f"| validation loss | {format_value(best['value'])} |",
             f"| gradient evaluations | {summary['evaluations']:,} |",
             f"| wall time | {summary['wall_seconds']:.1f} s |"]
    for key in ("status", "reason"):
        if summary.get(key):
            lines.append(f"| {key} | {summary[key]} |")
    result_file = directory / "result.json"
    if result_file.exists():
        warnings = json.loads(result_file.read_text()).get("warnings", [])
        if warnings:
            lines += ["", "## Warnings", "", *[f"- {w}" for w in warnings]]
    for title, path in figures:
        lines += ["", f"## {title}", "", f"![{title}]({Path(path).name})"]
    return runs.write_atomic(directory / "report.md", "\n".join(lines) + "\n")
