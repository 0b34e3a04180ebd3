"""The report of a ``metaopt tune`` run: ``report.md`` and its figures under ``figures/``.

Figures are Optuna's own (``optuna.visualization.matplotlib``: optimization history, parallel
coordinates, slices, contours, fANOVA hyperparameter importances) plus one of every trial's
learning curve (the validation losses it reported). A study of a tune run has pruned and
failed trials, a categorical ``optimizer`` and conditional parameters (``adam.lr`` exists only
in Adam's trials); each figure that cannot be drawn is skipped with a line in the report.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from metaopt import runs
from metaopt.search.study import config_of, run_of

FIGURES = "figures"
TOP = 10  # trials in the report's table
MAX_SLICE = 8  # parameters in the slice figure
MAX_CONTOUR = 4  # parameters in the contour grid (n x n panels)
MAX_REASONS = 10  # distinct failure reasons listed
UNCOUNTED = ("lost", "surplus")  # failures that did not spend the budget (metaopt.search.study)


class _Skip(Exception):
    """A figure that has nothing to show; its message goes in the report."""


# -- trials -----------------------------------------------------------------------------------
def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _ranked(study: optuna.Study) -> list[FrozenTrial]:
    """Complete trials with a finite value, best first."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if _finite(t.value)]
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    return sorted(done, key=lambda t: (-t.value if maximize else t.value, t.number))


def _optimizer(t: FrozenTrial) -> str | None:
    return config_of(t).get("optimizer") or t.params.get("optimizer")


def _schedule(t: FrozenTrial) -> Any:
    return config_of(t).get("schedule")


def _hparams(t: FrozenTrial) -> Mapping[str, Any]:
    if isinstance(config_of(t).get("hparams"), Mapping):
        return config_of(t)["hparams"]
    return {k: v for k, v in t.params.items()
            if k != "optimizer" and not k.startswith("schedule.")}


def _last_step(t: FrozenTrial) -> int | None:
    return max(t.intermediate_values) if t.intermediate_values else None


def _varied(trials: Sequence[FrozenTrial], names: Sequence[str]) -> list[str]:
    """The parameters among ``names`` that take two or more values in ``trials``."""
    return [n for n in names if len({repr(t.params[n]) for t in trials if n in t.params}) > 1]


def _all_params(trials: Sequence[FrozenTrial]) -> list[str]:
    """Every parameter any complete trial has, the most common first."""
    counts = Counter(p for t in trials for p in t.params)
    return [p for p, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def _optimizers(study: optuna.Study, trials: Sequence[FrozenTrial]) -> list[str]:
    for t in trials:
        dist = t.distributions.get("optimizer")
        if isinstance(dist, CategoricalDistribution):
            return [str(c) for c in dist.choices]
    return sorted({o for t in trials if (o := _optimizer(t))})


# -- formatting -------------------------------------------------------------------------------
def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in value.items()) or "—"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return "—" if value is None else str(value)


def _cell(value: Any) -> str:
    return _fmt(value).replace("|", "\\|").replace("\n", " ")


# -- importances ------------------------------------------------------------------------------
def _importances(study: optuna.Study, ranked: list[FrozenTrial]
                 ) -> tuple[dict[str, float] | None, list[str], str]:
    """fANOVA importances over the best trial's parameters (with conditional parameters:
    among the complete trials that have all of them, its optimizer's branch); ``(None, [],
    why)`` when there is too little to say. Returns (importances, params, scope text)."""
    if len(ranked) < 2:
        return None, [], f"needs two or more complete trials (the study has {len(ranked)})"
    best = ranked[0]
    branch = [t for t in ranked if set(best.params) <= set(t.params)]
    params = _varied(branch, list(best.params))
    if len(branch) < 2:
        return None, [], "needs two or more complete trials with the best trial's parameters"
    if len(params) < 2:
        return None, params, ("needs two or more parameters that vary (the study has "
                              f"{', '.join(params) or 'none'})")
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    importances = optuna.importance.get_param_importances(study, evaluator=evaluator,
                                                          params=params)
    scope = f"over the {len(branch)} complete trials"
    if len(branch) < len(ranked):
        scope += (f" (of {len(ranked)}) that have the best trial's parameters "
                  f"(its optimizer's branch)")
    return dict(importances), params, scope


# -- drawing ----------------------------------------------------------------------------------
def _pyplot() -> Any:
    """pyplot on the Agg backend (chosen unless pyplot was already imported, in which case
    its backend is kept and drawing runs with interactive mode off)."""
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


class _Notes(logging.Handler):
    """Collects Optuna's visualization warnings (which it logs) as report notes."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def _quiet(notes: list[str]) -> Iterator[None]:
    """Optuna's ExperimentalWarning silenced; its other warnings and the warnings its
    visualization module logs collected in ``notes`` instead of printed."""
    logger = logging.getLogger("optuna.visualization")
    handler, propagate = _Notes(), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
        for message in [str(w.message) for w in caught] + handler.messages:
            if message not in notes:
                notes.append(message)


def _figure_of(drawn: Any) -> Any:
    """The figure of what an ``optuna.visualization.matplotlib`` function returns (an Axes
    or an array of them)."""
    if hasattr(drawn, "figure"):
        return drawn.figure
    return next(iter(getattr(drawn, "flat", drawn))).figure


def _draw(plt: Any, make: Callable[[], Any], path: Path) -> tuple[Path | None, list[str]]:
    """Draw one figure and save it; ``(None, [why])`` when it cannot be drawn. Every figure
    opened on the way is closed."""
    import matplotlib

    notes: list[str] = []
    before = set(plt.get_fignums())
    try:
        with plt.ioff(), matplotlib.rc_context(), _quiet(notes):  # Optuna's style stays here
            fig = make()
            path.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(path, dpi=120, bbox_inches="tight")
        return path, notes
    except _Skip as why:
        return None, [str(why), *notes]
    except Exception as err:  # a figure must never take the report down
        return None, [f"could not be drawn ({type(err).__name__}: {err})", *notes]
    finally:
        for num in set(plt.get_fignums()) - before:
            plt.close(num)


def _learning_curves(study: optuna.Study, ranked: list[FrozenTrial]) -> Any:
    """Every trial's reported validation losses against the step: complete trials coloured
    by their final value, pruned ones grey, failed ones dotted red, the best one black."""
    from matplotlib import colormaps, colors
    from matplotlib.cm import ScalarMappable
    from matplotlib.lines import Line2D

    from metaopt import plots

    trials = [t for t in study.get_trials(deepcopy=False) if t.intermediate_values]
    if not trials:
        raise _Skip("no trial reported intermediate values")
    finals = [t.value for t in ranked]
    positive = bool(finals) and min(finals) > 0
    if positive and max(finals) / min(finals) > 20:
        norm: colors.Normalize = colors.LogNorm(min(finals), max(finals))
    else:
        norm = colors.Normalize(min(finals, default=0.0), max(finals, default=1.0))
    cmap = colormaps["viridis"]
    best = ranked[0] if ranked else None
    fig = plots.new_figure(9, 5)
    ax = fig.add_subplot()
    everything: list[float] = []
    for t in trials:
        points = sorted((s, v) for s, v in t.intermediate_values.items() if _finite(v))
        if not points:
            continue
        steps, values = zip(*points)
        everything += values
        if best is not None and t.number == best.number:
            continue  # drawn last, on top
        if t.state == TrialState.COMPLETE and _finite(t.value):
            style = {"color": cmap(norm(t.value)), "lw": 1.2, "alpha": 0.85, "zorder": 2}
        elif t.state == TrialState.PRUNED:
            style = {"color": "0.6", "lw": 0.8, "alpha": 0.6, "zorder": 1}
        elif t.state == TrialState.FAIL:
            style = {"color": "tab:red", "lw": 0.8, "ls": ":", "alpha": 0.7, "zorder": 1}
        else:
            style = {"color": "0.4", "lw": 0.8, "ls": "--", "alpha": 0.6, "zorder": 1}
        ax.plot(steps, values, marker="o", ms=2, **style)
    handles = [Line2D([], [], color=cmap(0.5), lw=1.2, label="complete (colour: final value)"),
               Line2D([], [], color="0.6", lw=0.8, label="pruned")]
    if any(t.state == TrialState.FAIL for t in trials):
        handles.append(Line2D([], [], color="tab:red", lw=0.8, ls=":", label="failed"))
    if best is not None and best.intermediate_values:
        steps, values = zip(*sorted(best.intermediate_values.items()))
        ax.plot(steps, values, color="black", lw=2.5, marker="o", ms=3, zorder=3)
        handles.append(Line2D([], [], color="black", lw=2.5,
                              label=f"best: trial {best.number} ({best.value:.4g})"))
    finite = [v for v in everything if math.isfinite(v)]
    if finite and min(finite) > 0 and max(finite) / min(finite) > 20:
        ax.set_yscale("log")
    if ranked:
        fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="final value")
    counts = Counter(t.state.name.lower() for t in trials)
    ax.set_title(f"Learning curves of {len(trials)} trials "
                 f"({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))})")
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss (reported)")
    ax.grid(True, alpha=0.3)
    ax.legend(handles=handles, fontsize="small")
    return fig


def _figures(study: optuna.Study, ranked: list[FrozenTrial], importances: dict | None,
             imp_params: list[str], imp_note: str, directory: Path
             ) -> list[tuple[str, Path | None, list[str]]]:
    """``(title, path or None, notes)`` for each figure, in the report's order."""
    plt = _pyplot()
    from optuna.visualization import matplotlib as ovm

    best = ranked[0] if ranked else None
    ordered = list(importances) if importances else []
    params = ordered + [p for p in _all_params(ranked) if p not in ordered]
    params = _varied(ranked, params)
    branch_params = _varied(ranked, [p for p in params if best and p in best.params])

    def need_complete() -> None:
        if not ranked:
            raise _Skip("no trial completed")

    def history() -> Any:
        need_complete()
        return _figure_of(ovm.plot_optimization_history(study))

    def parallel() -> Any:
        need_complete()
        if not branch_params:
            raise _Skip("no parameter varies among the complete trials")
        return _figure_of(ovm.plot_parallel_coordinate(study, params=branch_params))

    def slices() -> Any:
        need_complete()
        if not params:
            raise _Skip("no parameter varies among the complete trials")
        return _figure_of(ovm.plot_slice(study, params=params[:MAX_SLICE]))

    def contour() -> Any:
        need_complete()
        if len(branch_params) < 2:
            raise _Skip("a contour needs two or more parameters")
        return _figure_of(ovm.plot_contour(study, params=branch_params[:MAX_CONTOUR]))

    def importance() -> Any:
        if importances is None:
            raise _Skip(imp_note)
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        return _figure_of(ovm.plot_param_importances(study, evaluator=evaluator,
                                                     params=imp_params))

    parallel_title = "Parallel coordinates"
    if best is not None and len([t for t in ranked if set(branch_params) <= set(t.params)]) \
            < len(ranked):
        parallel_title += " (trials with the best trial's parameters)"
    specs: list[tuple[str, str, Callable[[], Any]]] = [
        ("Optimization history", "history.png", history),
        ("Learning curves", "learning_curves.png", lambda: _learning_curves(study, ranked)),
        (parallel_title, "parallel_coordinate.png", parallel),
        ("Slices", "slice.png", slices),
        ("Contours", "contour.png", contour),
        ("Importances", "importances.png", importance),
    ]
    out = []
    for title, name, make in specs:
        path, notes = _draw(plt, make, directory / FIGURES / name)
        if path is None:
            (directory / FIGURES / name).unlink(missing_ok=True)  # no stale figure
        out.append((title, path, notes))
    return out


# -- the report -------------------------------------------------------------------------------
def _summary(directory: Path) -> dict[str, Any]:
    try:
        return json.loads((directory / runs.SUMMARY).read_text())
    except (OSError, ValueError):
        return {}


def _counts(trials: Sequence[FrozenTrial]) -> tuple[str, list[str]]:
    """The trials line (``12: 7 complete, 4 pruned, 1 failed``) and the failure lines."""
    states = Counter(t.state for t in trials)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    uncounted = Counter(r for t in failed if (r := t.user_attrs.get("reason")) in UNCOUNTED)
    parts = [f"{states[TrialState.COMPLETE]} complete", f"{states[TrialState.PRUNED]} pruned",
             f"{len(failed) - sum(uncounted.values())} failed"]
    parts += [f"{n} {s.name.lower()}" for s, n in states.items()
              if s in (TrialState.RUNNING, TrialState.WAITING)]
    parts += [f"{n} {r} (not counted)" for r, n in sorted(uncounted.items())]
    reasons = Counter(t.user_attrs.get("reason") or "no reason recorded" for t in failed
                      if t.user_attrs.get("reason") not in UNCOUNTED)
    lines = [f"- {n} × {_cell(r)}" for r, n in reasons.most_common(MAX_REASONS)]
    if len(reasons) > MAX_REASONS:
        rest = sum(n for _, n in reasons.most_common()[MAX_REASONS:])
        lines.append(f"- … and {rest} more with {len(reasons) - MAX_REASONS} other reasons")
    return f"{len(trials)}: " + ", ".join(parts), lines


def write_report(run_dir: Path, study: optuna.Study | None = None) -> Path:
    """Write ``run_dir/report.md`` and its figures under ``run_dir/figures/``; returns the
    report's path. ``study``: the tune run's study (default: the one ``summary.json`` names,
    see :func:`metaopt.search.storage.load_study`). Task, gradient evaluations, wall time and
    notes come from ``summary.json`` when it is there."""
    directory = Path(run_dir)
    if study is None:
        from metaopt.search.storage import load_study

        study = load_study(directory)
    summary = _summary(directory)
    trials = study.get_trials(deepcopy=False)
    ranked = _ranked(study)
    best = ranked[0] if ranked else None
    try:
        with _quiet([]):
            importances, imp_params, imp_note = _importances(study, ranked)
    except Exception as err:  # fANOVA failing must not take the report down
        importances, imp_params = None, []
        imp_note = f"could not be computed ({type(err).__name__}: {err})"
    figures = _figures(study, ranked, importances, imp_params, imp_note, directory)

    counts, failures = _counts(trials)
    optimizers = _optimizers(study, trials)
    lines = [f"# tune: {summary.get('task', study.study_name)}", "",
             "| | |", "|---|---|",
             f"| study | {_cell(study.study_name)} |"]
    if summary.get("storage"):
        lines.append(f"| storage | `{summary['storage']}` |")
    lines += [f"| optimizers | {_cell(', '.join(optimizers) or None)} |",
              f"| trials | {counts} |",
              f"| best validation loss | "
              f"{_fmt(best.value) + f' (trial {best.number})' if best else 'no trial completed'}"
              " |"]
    if isinstance(summary.get("evaluations"), int):
        lines.append(f"| gradient evaluations | {summary['evaluations']:,} |")
    if _finite(summary.get("wall_seconds")):
        lines.append(f"| wall time | {summary['wall_seconds']:.1f} s |")

    if best is not None:
        lines += ["", "## Best trial", "", "| | |", "|---|---|",
                  f"| trial | {best.number} |",
                  f"| validation loss | {_fmt(best.value)} |",
                  f"| optimizer | {_cell(_optimizer(best))} |",
                  f"| hyperparameters | {_cell(_hparams(best))} |",
                  f"| schedule | {_cell(_schedule(best))} |",
                  f"| steps | {_cell(_last_step(best))} |"]
    if failures:
        lines += ["", "## Failed trials", "", *failures]

    if ranked:
        lines += ["", f"## Top {min(TOP, len(ranked))} trials", "",
                  "| rank | trial | validation loss | optimizer | hyperparameters | schedule "
                  "| steps |", "|---:|---:|---:|---|---|---|---:|"]
        for rank, t in enumerate(ranked[:TOP], 1):
            number = str(t.number)
            if "duplicate_of" in run_of(t):
                number += f" (= {run_of(t)['duplicate_of']})"
            lines.append(f"| {rank} | {number} | {_fmt(t.value)} | {_cell(_optimizer(t))} | "
                         f"{_cell(_hparams(t))} | {_cell(_schedule(t))} | "
                         f"{_cell(_last_step(t))} |")

    lines += ["", "## Hyperparameter importances (fANOVA)", ""]
    if importances is None:
        lines.append(f"Skipped: {imp_note}.")
    else:
        lines += [f"fANOVA (seed 0) {imp_note}.", "", "| parameter | importance |",
                  "|---|---:|", *[f"| {_cell(p)} | {v:.3f} |" for p, v in importances.items()]]

    lines += ["", "## Figures"]
    for title, path, notes in figures:
        lines += ["", f"### {title}", ""]
        if path is not None:
            lines.append(f"![{title}]({FIGURES}/{path.name})")
            lines += [f"- note: {_cell(n)}" for n in notes]
        else:
            reason = notes[0] if notes else "could not be drawn"
            lines.append(f"Skipped: {_cell(reason)}.")
    if summary.get("notes"):
        lines += ["", "## Populations", "", *[f"- {_cell(n)}" for n in summary["notes"]]]
    return runs.write_atomic(directory / "report.md", "\n".join(lines) + "\n")
