"""``metaopt select EXPERIMENT.yaml``: the best optimizer for the experiment's task.

Runs :func:`metaopt.select` with the ``select:`` section (``candidates``, ``budget``,
``tune``, ``warm_start``, ``store``) and writes ``runs/<name>/``: ``summary.json``,
``best.yaml`` (a ``metaopt train`` experiment of the winner), ``selection.json`` (ranking,
every probe), ``report.md``, ``halving.png``, ``sensitivity.png`` and ``state.json`` (the
finished work: the same command again resumes a killed selection).

``metaopt select --rebuild-store [--tasks a,b] [--force]`` rebuilds the results store's records
of the built-in tasks (those missing, or built with another learned-optimizer checkpoint).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import yaml

from metaopt import experiment, runs
from metaopt.experiment import ExperimentError

STATE = "state.json"
KEYS = {"task": "task", "candidates": "select.candidates", "budget": "select.budget",
        "steps": "steps", "seed": "seed"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiment", nargs="?", help="experiment YAML file with a select: "
                        "section")
    parser.add_argument("--out", default=None, help="run directory (default runs/<name>)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--rebuild-store", action="store_true",
                        help="rebuild the results store's records of the built-in tasks")
    parser.add_argument("--tasks", default=None, help="with --rebuild-store: comma-separated "
                        "task names (default: every built-in task)")
    parser.add_argument("--store", default=None, help="with --rebuild-store: the store folder "
                        "(default experiments/results/)")
    parser.add_argument("--force", action="store_true",
                        help="with --rebuild-store: rebuild records that are up to date too")


def run(args: argparse.Namespace) -> int:
    if args.rebuild_store:
        return rebuild_store(args)
    if args.experiment is None:
        raise ExperimentError("metaopt select", "EXPERIMENT", "an experiment file (or "
                              "--rebuild-store)")
    started = time.time()
    exp = experiment.load(args.experiment)
    section = exp.section("select")
    task = exp.load_task()
    directory = Path(args.out) if args.out is not None else Path("runs") / exp.name
    selector = _selector(exp, section, task, directory, args.progress)
    selection = selector.run()
    directory = runs.run_dir(exp.name, args.out)
    write_outputs(exp, selection, directory, selector.steps, started)
    return 0


def _selector(exp: experiment.Experiment, section: dict[str, Any], task: Any,
              directory: Path, progress: bool | None) -> Any:
    """The Selector, every input checked before anything is written."""
    from metaopt.select.plan import BudgetTooSmall
    from metaopt.select.selector import SelectionMismatch, Selector, candidates_of

    names = section["candidates"]
    names = [names] if isinstance(names, str) else names
    try:
        candidates_of(names)
    except ValueError as err:
        raise ExperimentError(exp.file, "select.candidates", "known candidates",
                              str(err)) from None
    store = section["store"]
    if store is not None and not Path(store).is_dir():
        raise ExperimentError(exp.file, "select.store", "a results-store folder", store)
    try:
        return Selector(task, section["budget"], names, steps=exp.steps, seed=exp.seed,
                        store=store if section["warm_start"] else False, exclude=(),
                        tune=section["tune"], device=exp.device, progress=progress,
                        journal=directory / STATE,
                        storage=f"sqlite:///{(directory / 'tune.db').resolve()}")
    except BudgetTooSmall as err:
        raise ExperimentError(exp.file, "select.budget", "a budget that pays for one probe",
                              str(err)) from None
    except SelectionMismatch as err:
        raise ExperimentError(exp.file, KEYS[err.key], f"the {err.key} the selection in "
                              f"{directory} was started with", str(err)) from None


def write_outputs(exp: experiment.Experiment, selection: Any, directory: Path, steps: int,
                  started: float) -> None:
    from metaopt.select import report

    best = selection.best
    if best is not None:
        spec = selection.experiment(f"{exp.name}-best", steps, exp.seed)
        runs.write_atomic(directory / "best.yaml", yaml.safe_dump(runs.plain(spec),
                                                                  sort_keys=False))
    report.save(directory, selection)
    runs.write_summary(directory, command="select", task=exp.task,
                       optimizer=best.optimizer if best else None,
                       hparams=best.hparams if best else {},
                       schedule=best.schedule if best else None,
                       value=best.value if best else float("nan"),
                       evaluations=selection.evaluations, started=started,
                       budget=selection.budget, candidate=best.candidate if best else None,
                       warm_start=[t for t, _ in selection.warm_start],
                       ranking=[{"candidate": e.candidate, "value": e.value,
                                 "status": e.status} for e in selection.ranking])
    path = report.write_report(directory)
    print(selection.ranking)
    if best is not None:
        print(f"metaopt select: best {best.candidate} ({best.optimizer} "
              f"lr={best.hparams.get('lr', float('nan')):.4g}): validation loss "
              f"{best.value:.4g}; {selection.evaluations:,} of {selection.budget:,} gradient "
              f"evaluations")
    else:
        print("metaopt select: every candidate diverged or failed")
    print(f"wrote {path}, {directory}/summary.json, best.yaml, halving.png, sensitivity.png")


def rebuild_store(args: argparse.Namespace) -> int:
    """Rebuild the results store's records by a cold selection on each built-in task."""
    from metaopt import tasks
    from metaopt.select import store
    from metaopt.select.selector import select

    names = args.tasks.split(",") if args.tasks else tasks.names()
    unknown = [n for n in names if n not in tasks.names()]
    if unknown:
        raise ExperimentError("metaopt select", "--tasks", "built-in task names",
                              ",".join(unknown))
    have = {r.task: r for r in store.load(args.store)}
    for name in names:
        if name in have and not have[name].stale and not args.force:
            print(f"{name}: up to date")
            continue
        selection = select(name, store=False, progress=args.progress)
        path = store.write(store.record_of(name, selection.features, selection), args.store)
        best = selection.best
        print(f"{name}: best {best.candidate if best else '-'}; wrote {path}")
    return 0
