"""A PBT run directory's files: ``summary.json``, ``best.yaml`` (a ``metaopt train`` experiment
replaying the best member's discovered schedule), ``lineage.json``, the figures
(``lineage.png``, ``hparams.png``) and ``report.md``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from pathlib import Path
from typing import Any

import yaml

from metaopt import runs
from metaopt.pbt.lineage import Lineage, plot_lineage, plot_trajectories
from metaopt.pbt.local import PBTResult
from metaopt.pbt.space import MemberSpace
from metaopt.report import format_value
from metaopt.search.params import Categorical, Fixed, FloatParam, IntParam

LINEAGE = "lineage.json"


def best_experiment(result: PBTResult, name: str, task: str, steps: int,
                    device: str = "cpu") -> dict[str, Any] | None:
    """The train experiment replaying the best member: its ancestor's seed (the same initial
    weights), its starting values and its discovered schedule."""
    best = result.best
    if best is None:
        return None
    train: dict[str, Any] = {"optimizer": best.optimizer, "hparams": best.hparams}
    if best.schedule is not None:
        train["schedule"] = best.schedule
    spec: dict[str, Any] = {"name": f"{name}-best", "task": task, "steps": steps,
                            "seed": best.seed}
    if device != "cpu":
        spec["device"] = device
    spec["train"] = train
    return spec


def write_outputs(directory: Path, result: PBTResult, *, name: str, task: str, steps: int,
                  started: float, device: str = "cpu", **extra: Any) -> list[Path]:
    """Every file of the run directory but the checkpoint; returns the ones written."""
    written = []
    best = result.best
    spec = best_experiment(result, name, task, steps, device)
    if spec is not None:
        written.append(runs.write_atomic(directory / "best.yaml", yaml.safe_dump(
            runs.plain(spec), sort_keys=False)))
    ancestry = result.lineage.ancestry(best.member) if best is not None else None
    written.append(runs.write_json(directory / LINEAGE, {
        **result.lineage.as_dict(), "best": None if best is None else best.member,
        "ancestry": ancestry, "optimizer": result.space.optimizer,
        "params": params_as_dict(result.space.params)}))
    figures = _figures(directory, result)
    diverged = sum(1 for iv in result.lineage.intervals for v in iv.values
                   if not math.isfinite(v))
    written.append(runs.write_summary(
        directory, command="pbt", task=task, optimizer=result.space.optimizer,
        hparams=best.hparams if best else {}, schedule=best.schedule if best else None,
        value=best.value if best else math.nan, evaluations=result.evaluations,
        started=started, population=len(result.values), steps=result.steps,
        best_member=best.member if best else None, replay_seed=best.seed if best else None,
        exploits=result.exploits, diverged=diverged, engine=result.note,
        values=result.values, notes=result.notes, **extra))
    written.append(write_report(directory, result.lineage, runs.read_summary(directory),
                                figures))
    return written


def params_as_dict(params: dict[str, Any]) -> dict[str, Any]:
    """The member space's parameters as JSON (``kind`` and the dataclass fields)."""
    return {name: {"kind": type(p).__name__, **dataclasses.asdict(p)}
            for name, p in params.items()}


def params_from_dict(data: dict[str, Any]) -> dict[str, Any]:
    kinds = {cls.__name__: cls for cls in (FloatParam, IntParam, Categorical, Fixed)}
    out = {}
    for name, fields in data.items():
        fields = dict(fields)
        cls = kinds[fields.pop("kind")]
        if cls is Categorical:
            fields["choices"] = tuple(fields["choices"])
        out[name] = cls(**fields)
    return out


def redraw(directory: str | Path) -> list[tuple[str, Path]]:
    """The run's figures drawn again from ``lineage.json`` (for ``metaopt report``)."""
    directory = Path(directory)
    data = json.loads((directory / LINEAGE).read_text())
    lineage = Lineage.from_dict(data)
    space = MemberSpace(data.get("optimizer", ""), params_from_dict(data.get("params", {})),
                        {})
    return _draw(directory, lineage, data.get("best"), space)


def _figures(directory: Path, result: PBTResult) -> list[tuple[str, Path]]:
    best = result.best.member if result.best is not None else None
    return _draw(directory, result.lineage, best, result.space)


def _draw(directory: Path, lineage: Lineage, best: int | None,
          space: MemberSpace) -> list[tuple[str, Path]]:
    out = []
    for title, draw in (
            ("Lineage", lambda: plot_lineage(lineage, best, directory / "lineage.png")),
            ("Hyperparameters", lambda: plot_trajectories(lineage, best, space,
                                                           directory / "hparams.png"))):
        try:
            out.append((title, draw()))
        except (ValueError, RuntimeError) as err:
            warnings.warn(f"{title.lower()} figure skipped: {err}", stacklevel=2)
    return out


def write_report(directory: Path, lineage: Lineage, summary: dict[str, Any],
                 figures: list[tuple[str, Path]]) -> Path:
    """``report.md``: the outcome, the best member's ancestry and the figures, from the
    lineage and ``summary.json``'s record (so ``metaopt report`` writes the same file)."""
    best = summary.get("best_member")
    finite = sorted(v for v in summary.get("values", []) if v is not None and math.isfinite(v))
    median = format_value(finite[len(finite) // 2]) if finite else "—"
    record = summary.get("best", {})
    schedule = record.get("schedule")
    changed = ", ".join(schedule) if schedule else "—"
    lines = [f"# pbt: {lineage.members} members, {summary.get('steps')} steps", "",
             "| | |", "|---|---|",
             f"| optimizer | {summary.get('optimizer', record.get('optimizer'))} |",
             f"| best member | {best if best is not None else '—'} |",
             f"| validation loss (best) | "
             f"{format_value(record.get('value')) if best is not None else '—'} |",
             f"| validation loss (median) | {median} |",
             f"| starting values | "
             f"{format_value(record.get('hparams')) if best is not None else '—'} |",
             f"| discovered schedule (piecewise) | {changed} |",
             f"| exploits | {summary.get('exploits')} |",
             f"| gradient evaluations | {summary.get('evaluations', 0):,} |",
             f"| engine | {summary.get('engine')} |"]
    if summary.get("notes"):
        lines += ["", "## Notes", "", *[f"- {n}" for n in summary["notes"]]]
    if best is not None:
        lines += ["", "## The best member's ancestry", "",
                  "| steps | member | validation loss at the end | hyperparameters |",
                  "|---|---|---|---|"]
        for iv, slot in zip(lineage.intervals, lineage.ancestry(best)):
            lines.append(f"| {iv.start}–{iv.end} | {slot} | {format_value(iv.values[slot])} | "
                         f"{format_value(iv.hparams[slot])} |")
        lines += ["", "`best.yaml` replays it on one model: `metaopt train best.yaml`."]
    for title, file in figures:
        lines += ["", f"## {title}", "", f"![{title}]({Path(file).name})"]
    return runs.write_atomic(directory / "report.md", "\n".join(lines) + "\n")


def rewrite_report(directory: str | Path) -> Path:
    """``metaopt report`` of a PBT run: the figures and ``report.md`` again, from
    ``lineage.json`` and ``summary.json``."""
    directory = Path(directory)
    lineage = Lineage.from_dict(json.loads((directory / LINEAGE).read_text()))
    return write_report(directory, lineage, runs.read_summary(directory), redraw(directory))
