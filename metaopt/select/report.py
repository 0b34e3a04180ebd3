"""A selection's report: ``report.md`` with the ranking table, the reasons, and two figures.

- ``halving.png``: each candidate's best validation loss per round (x: the round's length in
  steps), so one sees who was dropped where;
- ``sensitivity.png``: validation loss against learning rate for every candidate probed, one
  line per candidate and round (as Schmidt et al. 2021 plot "Descending through a Crowded
  Valley"): how forgiving each optimizer is of its learning rate.

Everything is read from ``selection.json`` (what :func:`save` wrote), so ``metaopt report``
redraws it.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from metaopt import plots, runs
from metaopt.report import format_value

FILE = "selection.json"


def save(directory: Path, selection: Any) -> Path:
    """Write what the report needs: ranking, probes, plan, warm start, features, tune."""
    data = {"task": selection.task, "budget": selection.budget,
            "evaluations": selection.evaluations,
            "ranking": [asdict(e) for e in selection.ranking],
            "probes": [asdict(p) for p in selection.probes],
            "plan": asdict(selection.plan), "order": selection.order,
            "warm_start": selection.warm_start, "features": selection.features,
            "tune": selection.tune, "notes": selection.notes}
    return runs.write_json(Path(directory) / FILE, data)


def write_report(directory: Path) -> Path:
    directory = Path(directory)
    data = json.loads((directory / FILE).read_text())
    summary = runs.read_summary(directory)
    figures = [("Successive halving", halving_figure(data, directory / "halving.png")),
               ("Learning-rate sensitivity",
                sensitivity_figure(data, directory / "sensitivity.png"))]
    best = summary["best"]
    lines = [f"# select: {data['task']}", "",
             f"Best: **{best['optimizer']}** {format_value(best['hparams'])}, schedule "
             f"{format_value(best['schedule'])}: validation loss {format_value(best['value'])}",
             "", f"Gradient evaluations: {data['evaluations']:,} of a budget of "
             f"{data['budget']:,}; wall time {summary['wall_seconds']:.1f} s.", "",
             "## Why this order", "", *reasons(data), "", "## Ranking", "", *table(data)]
    if data.get("notes"):
        lines += ["", "## Notes", "", *[f"- {n}" for n in data["notes"]]]
    for title, path in figures:
        lines += ["", f"## {title}", "", f"![{title}]({path.name})"]
    return runs.write_atomic(directory / "report.md", "\n".join(lines) + "\n")


def reasons(data: dict) -> list[str]:
    plan = data["plan"]
    out = []
    if data["warm_start"]:
        near = ", ".join(f"{t} (distance {d:.2f})" for t, d in data["warm_start"])
        out.append(f"- warm-started from: {near}: the candidates were probed in the order "
                   f"they ranked there, their learning rates centred on what worked there.")
    else:
        out.append("- no warm start (the results store had no record to compare with): "
                   "every candidate was probed over its full learning-rate range.")
    rounds = "; ".join(f"{r['candidates']} candidates x {r['lrs']} learning rates x "
                       f"{r['steps']} steps" for r in plan["rounds"])
    tune = data.get("tune")
    tuned = (f"then a tune of {tune['candidate']}: {tune['trials']} full-length trials"
             if tune else "no tune (the rounds left too little budget for one)")
    out.append(f"- rounds: {rounds}; {tuned}.")
    return out


def table(data: dict) -> list[str]:
    rows = ["| rank | candidate | optimizer | hyperparameters | schedule | validation loss | "
            "round (steps) | gradient evaluations | note |",
            "|---:|---|---|---|---|---:|---|---:|---|"]
    for i, e in enumerate(data["ranking"], start=1):
        value = format_value(e["value"]) if e["status"] == "ok" else e["status"]
        rows.append(f"| {i} | {e['candidate']} | {e['optimizer']} | "
                    f"{format_value(e['hparams'])} | {format_value(e['schedule'])} | {value} | "
                    f"{e['rung'] + 1} ({e['steps']}) | {e['evaluations']:,} | "
                    f"{e['reason'] or ''} |")
    return rows


def _colour(names: list[str], name: str) -> Any:
    """One colour per candidate, distinct for up to 20 of them (tab10 repeats after 10)."""
    from matplotlib import colormaps

    return colormaps["tab20"](sorted(names).index(name) % 20)


def _finite(v: Any) -> bool:
    return v is not None and math.isfinite(v)


def halving_figure(data: dict, path: Path) -> Path:
    fig = plots.new_figure(7.5, 4.5)
    ax = fig.add_subplot()
    best: dict[str, dict[int, float]] = {}
    for p in data["probes"]:
        if p["status"] == "ok" and _finite(p["value"]):
            by_steps = best.setdefault(p["candidate"], {})
            by_steps[p["steps"]] = min(by_steps.get(p["steps"], math.inf), p["value"])
    winner = data["ranking"][0]["candidate"] if data["ranking"] else None
    for name, by_steps in sorted(best.items()):
        xs = sorted(by_steps)
        ax.plot(xs, [by_steps[x] for x in xs], marker="o", label=name,
                color=_colour(list(best), name), linewidth=2.5 if name == winner else 1.0)
    ax.set_xscale("log")
    ax.set_xlabel("round length (steps)")
    ax.set_ylabel("best validation loss in the round")
    values = [v for b in best.values() for v in b.values()]
    plots._log_if_positive(ax, values)
    ax.set_title(f"{data['task']}: successive halving (thick: the winner)")
    ax.legend(fontsize=7, ncol=2)
    return plots.save(fig, path)


def sensitivity_figure(data: dict, path: Path) -> Path:
    fig = plots.new_figure(7.5, 4.5)
    ax = fig.add_subplot()
    lines: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for p in data["probes"]:
        value = p["value"] if p["status"] == "ok" and _finite(p["value"]) else math.nan
        lines.setdefault((p["candidate"], p["round"]), []).append((p["lr"], value))
    names = sorted({name for name, _ in lines})
    labelled: set[str] = set()
    for (name, rnd), points in sorted(lines.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        points.sort()
        ax.plot([x for x, _ in points], [y for _, y in points], marker="o",
                markersize=3 + 2 * rnd, alpha=0.5 + 0.25 * min(rnd, 2),
                color=_colour(names, name), label=None if name in labelled else name)
        labelled.add(name)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (multiplier for learning-rate-free and learned optimizers)")
    ax.set_ylabel("validation loss")
    plots._log_if_positive(ax, [y for pts in lines.values() for _, y in pts], ratio=5.0)
    ax.set_title(f"{data['task']}: loss against learning rate (bigger marks: later rounds)")
    ax.legend(fontsize=7, ncol=2)
    return plots.save(fig, path)
