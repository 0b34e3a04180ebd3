"""``metaopt tune EXPERIMENT.yaml``: an Optuna study over the ``search:`` section's optimizers,
hyperparameters and schedule, its trials trained together as populations.

Writes ``runs/<name>/``: the study (``study.db``, SQLite, unless the experiment's ``storage:``
names ``journal`` or an SQLAlchemy URL), ``summary.json``, ``best.yaml`` (a ``metaopt train``
experiment reproducing the best trial), ``report.md`` and figures. Running the same command
again resumes the study: completed trials are kept and trials a killed run left running are
trained again. ``--workers N`` runs N processes on the one study.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from optuna.trial import TrialState

from metaopt import experiment, runs
from metaopt.experiment import ExperimentError

# Where a resumed study's mismatching fingerprint key lives in the experiment file.
KEYS = {"task": "task", "optimizer": "search.optimizer", "space": "search.space",
        "schedule": "search.schedule", "steps": "steps", "seed": "seed"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiment", help="experiment YAML file with a search: section")
    parser.add_argument("--out", default=None, help="run directory (default runs/<name>)")
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes on the one study (default 1)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)


def run(args: argparse.Namespace) -> int:
    started = time.time()
    exp = experiment.load(args.experiment)
    section = exp.section("search")
    task = exp.load_task()
    steps = exp.steps or task.steps

    from metaopt.search import space as spaces
    from metaopt.search import study as studies
    from metaopt.search.storage import open_storage, storage_url
    from metaopt.search.tune import ResumeMismatch, check_fingerprint, fingerprint, open_study

    space = spaces.load_space(section["space"], section["optimizer"], file=exp.file,
                              schedule=section["schedule"])
    if args.workers < 1:
        raise ExperimentError(exp.file, "--workers", "a positive number of processes",
                              args.workers)
    directory = Path(args.out) if args.out is not None else Path("runs") / exp.name
    try:
        storage_url(exp.storage, directory)
    except ValueError as err:
        raise ExperimentError(exp.file, "storage", "journal, journal:<path> or an SQLAlchemy "
                              "URL", str(err)) from None
    directory = runs.run_dir(exp.name, args.out)
    torch.set_flush_denormal(True)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.workers))
    eval_every = section["eval_every"] or max(1, steps // 10)
    study = open_study(exp.name, open_storage(exp.storage, directory),
                       studies.make_sampler(section["sampler"], exp.seed, space,
                                            section["trials"], section["population"]),
                       studies.make_pruner(section["pruner"], steps, eval_every))
    try:
        check_fingerprint(study, fingerprint(task, space, steps, exp.seed))
    except ResumeMismatch as err:
        raise ExperimentError(exp.file, KEYS[err.key], f"the {err.key} the study in "
                              f"{directory} was started with", str(err)) from None
    search = studies.Search(study, task, space, trials=section["trials"],
                            population=section["population"], steps=steps, seed=exp.seed,
                            eval_every=eval_every, device=exp.device,
                            progress=False if args.worker else args.progress)
    search.heartbeat(force=True)  # the helpers see this worker from their first count
    helpers = [] if args.worker else _spawn(args, directory)
    _wait_for(helpers, study)
    search.run()
    failed = [p.args for p in helpers if p.wait() != 0]
    if args.worker:
        return 0
    if failed:
        print(f"metaopt tune: {len(failed)} worker process(es) failed", file=sys.stderr)
    _write_outputs(exp, study, directory, steps, started,
                   storage=storage_url(exp.storage, directory), notes=search.notes)
    return 1 if failed else 0


def _spawn(args: argparse.Namespace, directory: Path) -> list[subprocess.Popen]:
    command = [sys.executable, "-m", "metaopt.cli", "tune", args.experiment, "--out",
               str(directory), "--worker", "--no-progress"]
    return [subprocess.Popen(command) for _ in range(args.workers - 1)]


def _wait_for(helpers: list[subprocess.Popen], study: Any, timeout: float = 60.0) -> None:
    """Let the helper processes start (imports take seconds) before the first trial, so the
    work is shared from the start: until each has beaten in the study, or has exited."""
    since, deadline = time.time(), time.time() + timeout
    while helpers and time.time() < deadline:
        beats = [v for k, v in study.user_attrs.items() if k.startswith("worker:")
                 and isinstance(v, float) and v >= since]
        if len(beats) >= sum(p.poll() is None for p in helpers):
            return
        time.sleep(0.2)


def _write_outputs(exp: experiment.Experiment, study: Any, directory: Path, steps: int,
                   started: float, **extra: Any) -> None:
    from metaopt.search.report import write_report
    from metaopt.search.study import best_of, run_of

    best = best_of(study)
    counts = {s.name.lower(): 0 for s in (TrialState.COMPLETE, TrialState.PRUNED,
                                          TrialState.FAIL)}
    evaluations = 0
    for t in study.get_trials(deepcopy=False):
        if t.state.name.lower() in counts and t.user_attrs.get("reason") not in ("lost",
                                                                                 "surplus"):
            counts[t.state.name.lower()] += 1
        evaluations += int(run_of(t).get("evaluations", 0))
    if best is not None:
        train = {"optimizer": best.optimizer, "hparams": best.hparams}
        if best.schedule is not None:
            train["schedule"] = best.schedule
        spec = {"name": f"{exp.name}-best", "task": exp.task, "steps": steps, "seed": exp.seed,
                "train": train}
        runs.write_atomic(directory / "best.yaml", yaml.safe_dump(runs.plain(spec),
                                                                  sort_keys=False))
    runs.write_summary(directory, command="tune", task=exp.task,
                       optimizer=best.optimizer if best else None,
                       hparams=best.hparams if best else {},
                       schedule=best.schedule if best else None,
                       value=best.value if best else float("nan"), evaluations=evaluations,
                       started=started, study=study.study_name, trials=counts,
                       best_trial=best.trial if best else None, **extra)
    write_report(directory, study)
    print(f"metaopt tune: {counts['complete']} complete, {counts['pruned']} pruned, "
          f"{counts['fail']} failed; best {best.value:.4g} ({best.optimizer} "
          f"{best.hparams})" if best else "metaopt tune: no trial completed")
    print(f"wrote {directory}/summary.json, best.yaml, report.md")
