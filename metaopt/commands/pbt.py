"""``metaopt pbt EXPERIMENT.yaml``: population-based training (Jaderberg et al. 2017) as the
``pbt:`` section says, vectorised in one process (:mod:`metaopt.pbt`).

The optimizer and space come from ``pbt.optimizer`` / ``pbt.space`` (and ``pbt.schedule``), or,
where absent, from the experiment's ``search:`` section, else the task's default optimizer
with its shipped space. Writes ``runs/<name>/``: ``population.pt`` (the whole population,
written atomically after every interval), ``summary.json`` (``best``: the best member at the
end, ``schedule``: its discovered schedule), ``best.yaml`` (a ``metaopt train`` experiment
replaying it), ``lineage.json``, ``lineage.png``, ``hparams.png`` and ``report.md``. The same
command again resumes a killed run from its last interval; an experiment changed since fails
naming the key.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from metaopt import experiment, runs
from metaopt.experiment import ExperimentError

# Fingerprint keys (metaopt.pbt.PBT.fingerprint) that live in the pbt: section.
SECTION_KEYS = ("population", "interval", "quantile", "resample", "perturb", "exploit",
                "deterministic")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiment", help="experiment YAML file with a pbt: section")
    parser.add_argument("--out", default=None, help="run directory (default runs/<name>)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)


def sources(exp: experiment.Experiment, section: dict[str, Any], task: Any
            ) -> tuple[str, Any, Any, dict[str, str]]:
    """``(optimizer, space, schedule, keys)``: where each comes from, and the experiment key
    naming each (for errors and for a resume that finds them changed)."""
    search = exp.sections.get("search")
    optimizer, keys = section["optimizer"], {"optimizer": "pbt.optimizer"}
    if optimizer is None and search is not None:
        optimizer, keys["optimizer"] = search["optimizer"], "search.optimizer"
    if optimizer is None:
        optimizer, keys["optimizer"] = task.default_optimizer, "task"
    if isinstance(optimizer, list):
        if len(optimizer) != 1:
            raise ExperimentError(exp.file, keys["optimizer"], "one optimizer for metaopt pbt "
                                  "(its members train as one stacked population; name one in "
                                  "pbt.optimizer)", optimizer)
        optimizer = optimizer[0]
    from_search = search is not None and keys["optimizer"] != "task" and (
        search["optimizer"] in (optimizer, [optimizer]))
    space, keys["space"] = section["space"], "pbt.space"
    if space is None and from_search:
        space, keys["space"] = search["space"], "search.space"
    schedule, keys["schedule"] = section["schedule"], "pbt.schedule"
    if schedule is None and from_search and section["space"] is None:
        schedule, keys["schedule"] = search["schedule"], "search.schedule"
    keys["options"] = keys["space"]
    keys.update({"task": "task", "steps": "steps", "seed": "seed"})
    keys.update({k: f"pbt.{k}" for k in SECTION_KEYS})
    return optimizer, space, schedule, keys


def run(args: argparse.Namespace) -> int:
    started = time.time()
    exp = experiment.load(args.experiment)
    section = exp.section("pbt")
    if section["backend"] == "ray":
        raise ExperimentError(exp.file, "pbt.backend", "local (the ray backend is not "
                              "available yet)", "ray")
    task = exp.load_task()
    steps = exp.steps or task.steps
    optimizer, space_spec, schedule, keys = sources(exp, section, task)

    from metaopt.pbt import checkpoint as ckpt
    from metaopt.pbt.local import PBT
    from metaopt.pbt.report import write_outputs
    from metaopt.search.space import load_space

    space = load_space(space_spec, optimizer, file=exp.file, key=keys["space"],
                       schedule=schedule, schedule_key=keys["schedule"])
    directory = Path(args.out) if args.out is not None else Path("runs") / exp.name
    torch.set_flush_denormal(True)
    try:
        pbt = PBT(task, space=space, population=section["population"],
                  interval=section["interval"], steps=steps, quantile=section["quantile"],
                  resample=section["resample"], perturb=section["perturb"],
                  exploit=section["exploit"], seed=exp.seed, device=exp.device,
                  deterministic=section["deterministic"],
                  checkpoint=directory / ckpt.FILE, progress=args.progress)
    except ExperimentError:
        raise
    except ckpt.ResumeMismatch as err:
        raise ExperimentError(exp.file, keys[err.key], f"the {err.key} the run in {directory} "
                              f"was started with", str(err)) from None
    except ckpt.CheckpointError as err:
        raise ExperimentError(directory / ckpt.FILE, "(checkpoint)", "a PBT checkpoint to "
                              "resume (or another --out)", str(err)) from None
    except (ValueError, TypeError) as err:
        raise ExperimentError(exp.file, keys["optimizer"], "an optimizer and space a stacked "
                              "population can train", str(err)) from None
    resumed = pbt.step
    directory = runs.run_dir(exp.name, args.out)
    result = pbt.run()
    write_outputs(directory, result, name=exp.name, task=exp.task, steps=steps,
                  started=started, device=exp.device, interval=section["interval"],
                  exploit=section["exploit"], resumed_from=resumed)
    best = result.best
    print(f"metaopt pbt: {result.lineage.members} members x {result.steps} steps, "
          f"{result.exploits} exploits; " + (
              f"best member {best.member}: val loss {best.value:.4g}" if best else
              "every member diverged"))
    print(f"wrote {directory}/summary.json, best.yaml, lineage.json, report.md")
    return 0
