"""``metaopt train EXPERIMENT.yaml``: one training run, as the ``train:`` section says.

Writes ``runs/<name>/``: ``summary.json``, ``result.json`` (curves, diagnostics, warnings),
``train.csv`` (per-step scalars), figures and ``report.md``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from metaopt import experiment, optim, runs, schedules, tasks
from metaopt.experiment import ExperimentError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiment", help="experiment YAML file with a train: section")
    parser.add_argument("--out", default=None, help="run directory (default runs/<name>)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)


def check_optimizer(file: str, key: str, name: str, hparams: dict[str, Any]) -> None:
    """Build the optimizer on a dummy parameter so bad names and values fail before any
    work is done, with the file and key in the message."""
    try:
        optim.create(name, [torch.zeros(2, 2, requires_grad=True)], **hparams)
    except ValueError as err:
        raise ExperimentError(file, key, "a valid optimizer and hyperparameters", str(err)) \
            from None


def check_schedule(file: str, key: str, spec: Any) -> None:
    if spec is None:
        return
    specs = spec if "name" not in spec else {"lr": spec}
    for target, one in specs.items():
        try:
            schedules.create(schedules.with_base(one, 1.0))
        except (ValueError, TypeError) as err:
            raise ExperimentError(file, f"{key}.{target}" if "name" not in spec else key,
                                  "a valid schedule", str(err)) from None


def draw_landscape(task: tasks.Task, result: Any, directory: Any, seed: int) -> None:
    """The loss around the final weights with the optimizer's path (Li et al. 2018)."""
    import warnings

    from metaopt.landscape import loss_landscape

    try:
        loss_landscape(task, result, directory / "landscape.png", seed=seed,
                       title=f"{task.name} loss around the final weights")
    except (ValueError, RuntimeError) as err:
        warnings.warn(f"landscape figure skipped: {err}", stacklevel=2)


def run(args: argparse.Namespace) -> int:
    started = time.time()
    exp = experiment.load(args.experiment)
    section = exp.section("train")
    task = exp.load_task()
    check_optimizer(exp.file, "train.optimizer", section["optimizer"], section["hparams"])
    check_schedule(exp.file, "train.schedule", section["schedule"])

    from metaopt.monitor import CSVWriter
    from metaopt.train import train

    directory = runs.run_dir(exp.name, args.out)
    writer = CSVWriter(directory / "train.csv")
    steps = exp.steps or task.steps
    result = train(task, section["optimizer"], section["hparams"], section["schedule"],
                   steps=steps, seed=exp.seed, eval_every=section["eval_every"],
                   writers=[writer], device=exp.device, progress=args.progress,
                   record_path_every=max(1, steps // 40) if section["landscape"] else None)
    runs.write_json(directory / "result.json", {
        "status": result.status, "reason": result.reason, "diverged_at": result.diverged_at,
        "value": result.value, "steps": result.steps, "curve": result.curve,
        "val_curve": result.val_curve, "diagnostics": result.diagnostics,
        "warnings": result.warnings, "final_hparams": result.final_hparams,
        "seconds": result.seconds})
    runs.write_summary(directory, command="train", task=task.name,
                       optimizer=section["optimizer"], hparams=section["hparams"],
                       schedule=section["schedule"], value=result.value,
                       evaluations=result.evaluations, started=started, status=result.status,
                       reason=result.reason)
    if section["landscape"] and result.ok:
        draw_landscape(task, result, directory, exp.seed)
    from metaopt.report import render

    report = render(directory)
    status = "ok" if result.ok else f"diverged ({result.reason})"
    print(f"{task.name}: {section['optimizer']} {result.steps} steps -> val loss "
          f"{result.value:.4g} [{status}]; wrote {directory}/summary.json, {report}")
    return 0
