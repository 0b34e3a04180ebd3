"""``metaopt demo`` (``make demo``), the main job: which optimizer for the digits MLP?

1. ``metaopt select``: every candidate of the default portfolio (the learned and the
   learning-rate-free optimizers included) probed at a few learning rates, successive halving,
   warm-started from the shipped results store;
2. ``metaopt tune``: a short Optuna study of the winner (its shipped search space, the
   learning rate narrowed around the winning one), stored in the embedded SQLite default.

Both steps are written as ordinary experiment files into the run directory first
(``runs/demo/select.yaml``, ``runs/demo/tune.yaml``) and run as the commands would run them, so
what the demo did can be edited and rerun. Prints the ranking, the tuned best and where the
reports and figures are.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

from metaopt import runs

TASK = "digits_mlp"
TUNE_TRIALS = 32
TUNE_POPULATION = 16
LR_SPREAD = 0.5  # the tune's lr range: the winner's x 10^[-0.5, 0.5]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="run directory (default runs/demo)")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps per run (default the task's 500)")
    parser.add_argument("--budget", type=int, default=None,
                        help="selection budget in gradient evaluations (default 24 runs' worth)")
    parser.add_argument("--trials", type=int, default=TUNE_TRIALS, help="tune trials")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    print(f"metaopt demo: which optimizer for {TASK}? selection, then a short tune of the "
          f"winner (results in {out}/)", flush=True)
    select_file = _write(out / "select.yaml", _select_experiment(args))
    _run("select", select_file, out / "select", args.progress)
    best = runs.read_summary(out / "select")["best"]
    if best["optimizer"] is None:
        print("metaopt demo: every candidate diverged; nothing to tune")
        return 1
    tune_file = _write(out / "tune.yaml", _tune_experiment(args, best))
    print(f"\nmetaopt demo: tuning {best['optimizer']} ({args.trials} trials, SQLite study "
          f"{out / 'tune' / 'study.db'})", flush=True)
    _run("tune", tune_file, out / "tune", args.progress)
    tuned = runs.read_summary(out / "tune")["best"]
    print(f"\nselected {best['optimizer']}: validation loss {best['value']:.4g}; after the "
          f"tune {tuned['value']:.4g}")
    print(f"reports: {out}/select/report.md (ranking, halving.png, sensitivity.png), "
          f"{out}/tune/report.md; train the winner again with: metaopt train "
          f"{out}/tune/best.yaml; browse the study with: metaopt dashboard {out}/tune")
    return 0


def _select_experiment(args: argparse.Namespace) -> dict[str, Any]:
    section: dict[str, Any] = {}
    if args.budget is not None:
        section["budget"] = args.budget
    spec = {"name": "demo-select", "task": TASK, "seed": 0, "select": section}
    if args.steps is not None:
        spec["steps"] = args.steps
    return spec


def _tune_experiment(args: argparse.Namespace, best: dict[str, Any]) -> dict[str, Any]:
    from metaopt.search.params import FloatParam
    from metaopt.search.space import load_space

    optimizer, lr = best["optimizer"], float(best["hparams"]["lr"])
    shipped = load_space(None, optimizer).optimizers[optimizer]
    space = {"lr": {"low": lr * 10 ** -LR_SPREAD, "high": lr * 10 ** LR_SPREAD, "log": True}}
    for name, param in shipped.items():
        if name != "lr" and isinstance(param, FloatParam):
            space[name] = {"low": param.low, "high": param.high, "log": param.log}
    search: dict[str, Any] = {"optimizer": optimizer, "space": space, "trials": args.trials,
                              "population": min(TUNE_POPULATION, args.trials),
                              "sampler": "tpe", "pruner": "median"}
    if best["schedule"] is not None:
        search["schedule"] = {k: v for k, v in best["schedule"].items() if k != "T_max"}
    spec = {"name": "demo-tune", "task": TASK, "seed": 0, "search": search}
    if args.steps is not None:
        spec["steps"] = args.steps
    return spec


def _write(path: Path, spec: dict[str, Any]) -> Path:
    return runs.write_atomic(path, yaml.safe_dump(runs.plain(spec), sort_keys=False))


def _run(command: str, experiment: Path, out: Path, progress: bool | None) -> None:
    from metaopt.commands import load

    args = SimpleNamespace(experiment=str(experiment), out=str(out), progress=progress,
                           rebuild_store=False, workers=1, worker=False)
    load(command).run(args)
