"""``metaopt meta-train EXPERIMENT.yaml``: meta-train a learned optimizer (``learned``).

Writes ``runs/<name>/``: ``lstm.pt`` (the best weights: ``metaopt.optim.create("lstm",
params, checkpoint=...)`` or ``learned.LSTMOptimizer(params, checkpoint=...)`` loads it),
``meta_state.pt`` (resumable: running the command again continues the run), ``meta_train.json``
(meta-loss curves), ``summary.json`` (``value``: the validation meta-loss; ``best``:
``lstm`` with the checkpoint path), ``meta_loss.png`` and ``report.md``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from metaopt import experiment, runs
from metaopt.experiment import ExperimentError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiment", help="experiment YAML file with a meta_train: section")
    parser.add_argument("--out", default=None, help="run directory (default runs/<name>)")
    parser.add_argument("--fresh", action="store_true",
                        help="start over instead of resuming the run in the directory")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)


def build_config(exp: experiment.Experiment) -> Any:
    """The section as a :class:`learned.config.MetaTrainConfig`, or an ExperimentError."""
    from learned import problems
    from learned.config import MetaTrainConfig

    section = dict(exp.section("meta-train"))
    names = [section["tasks"]] if isinstance(section["tasks"], str) else section["tasks"]
    for name in names:
        if name not in problems.FAMILIES:
            raise ExperimentError(exp.file, "meta_train.tasks", "problem families among "
                                  f"{', '.join(problems.names())}", name)
    for key, kind in (("batch", int), ("horizon_max", int), ("scale", float)):
        value = section[key]
        if isinstance(value, dict):
            unknown = set(value) - set(names)
            if unknown:
                raise ExperimentError(exp.file, f"meta_train.{key}", "a mapping over the "
                                      f"tasks {', '.join(names)}", sorted(unknown))
            section[key] = {k: kind(v) for k, v in value.items()}
    try:
        config = MetaTrainConfig(**{**section, "tasks": tuple(names), "seed": exp.seed})
        from learned import nets

        nets.build({"kind": config.model, **config.model_args})
    except (ValueError, TypeError) as err:
        raise ExperimentError(exp.file, "meta_train", "a valid meta-training recipe",
                              str(err)) from None
    return config


def run(args: argparse.Namespace) -> int:
    started = time.time()
    exp = experiment.load(args.experiment)
    config = build_config(exp)
    task = exp.load_task()

    from learned.meta_train import STATE_FILE, meta_train

    directory = runs.run_dir(exp.name, args.out)
    if args.fresh:
        (directory / STATE_FILE).unlink(missing_ok=True)
    try:
        result = meta_train(config, directory, resume=True, progress=args.progress)
    except ValueError as err:  # an existing run from another recipe
        raise ExperimentError(exp.file, "meta_train", f"the recipe of the run in {directory} "
                              f"(or --fresh)", str(err)) from None
    check = check_on_task(task, result.checkpoint, exp.steps, exp.seed)
    runs.write_json(directory / "meta_train.json", {
        "curve": result.curve, "val_curve": result.val_curve, "val_parts": result.val_parts,
        "grad_norms": result.grad_norms, "best_step": result.best_step,
        "config": config.to_dict()})
    runs.write_summary(directory, command="meta-train", task=task.name, optimizer="lstm",
                       hparams={"checkpoint": str(result.checkpoint)}, schedule=None,
                       value=result.value, evaluations=result.evaluations, started=started,
                       meta_steps=result.steps, best_step=result.best_step,
                       val_parts=result.val_parts, skipped_steps=result.skipped,
                       train_seconds=result.seconds, peak_rss_mb=result.peak_rss_mb,
                       task_check=check)
    from metaopt.report import render

    report = render(directory)
    print(f"meta-train: {result.steps} meta-steps in {result.seconds:.0f} s, validation "
          f"meta-loss {result.value:.4g} (best at step {result.best_step}); "
          f"{task.name} with the learned optimizer: val loss {check['value']:.4g}; "
          f"wrote {result.checkpoint}, {directory}/summary.json, {report}")
    return 0


def check_on_task(task: Any, checkpoint: Path, steps: int | None, seed: int) -> dict[str, Any]:
    """Train the experiment's task with the new optimizer through ``metaopt.train``, as a
    user would: proof that the checkpoint works as a registered optimizer."""
    from metaopt.train import train

    result = train(task, "lstm", {"checkpoint": str(checkpoint)}, steps=steps, seed=seed,
                   progress=False)
    return {"status": result.status, "value": result.value, "steps": result.steps}
