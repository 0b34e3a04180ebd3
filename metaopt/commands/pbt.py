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

``pbt.backend: ray`` runs the same experiment through Ray Tune's ``PopulationBasedTraining``
(:mod:`metaopt.pbt.ray_tune`): ``pbt.ray_address`` joins a cluster (``pbt.storage_path``, shared
storage, is then required), else a local one is started; the same files are written (no
``population.pt``: Ray keeps the members' checkpoints, and a Ray run starts over), with the
nodes and each member's placements in ``summary.json``. An address that does not answer fails
naming it, before anything is written.
"""

from __future__ import annotations

import argparse
import builtins
import sys
import threading
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


class ImportClock:
    """Seconds the main thread spends in ``import`` statements while installed (outermost
    imports only): a run's lazy imports (its task's dataset library, matplotlib, Ray) are
    start-up, not the run, and ``summary.json`` says how long they took (``timings``)."""

    def __init__(self) -> None:
        self.seconds, self._depth, self._original = 0.0, 0, None

    def install(self) -> ImportClock:
        self._original = builtins.__import__
        builtins.__import__ = self._import
        return self

    def remove(self) -> None:
        if self._original is not None:
            builtins.__import__ = self._original
            self._original = None

    def _import(self, *args: Any, **kwargs: Any) -> Any:
        original = self._original or builtins.__import__
        if self._depth or threading.current_thread() is not threading.main_thread():
            return original(*args, **kwargs)
        self._depth += 1
        begun = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - begun
            self._depth -= 1


def run(args: argparse.Namespace) -> int:
    clock = ImportClock().install()
    try:
        return _run(args, clock)
    finally:
        clock.remove()


def _run(args: argparse.Namespace, clock: ImportClock) -> int:
    started = time.time()
    exp = experiment.load(args.experiment)
    section = exp.section("pbt")
    task = exp.load_task()
    steps = exp.steps or task.steps
    optimizer, space_spec, schedule, keys = sources(exp, section, task)

    from metaopt.pbt import checkpoint as ckpt
    from metaopt.pbt.local import PBT
    from metaopt.pbt.report import write_outputs
    from metaopt.search.space import load_space

    space = load_space(space_spec, optimizer, file=exp.file, key=keys["space"],
                       schedule=schedule, schedule_key=keys["schedule"])
    if section["backend"] == "ray":
        return _run_ray(args, exp, section, task, steps, space, keys, started, clock)
    if section["ray_address"] is not None or section["storage_path"] is not None:
        key = "pbt.ray_address" if section["ray_address"] is not None else "pbt.storage_path"
        raise ExperimentError(exp.file, key, "it only with backend: ray", section["backend"])
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
    _figure_modules()
    write_outputs(directory, result, name=exp.name, task=exp.task, steps=steps,
                  started=started, device=exp.device, interval=section["interval"],
                  exploit=section["exploit"], resumed_from=resumed, backend="local",
                  checkpoint_seconds=result.checkpoint_seconds,
                  timings={"imports": clock.seconds,
                           "checkpoint": result.checkpoint_seconds})
    _print(result, directory)
    return 0


def _run_ray(args: argparse.Namespace, exp: experiment.Experiment, section: dict[str, Any],
             task: Any, steps: int, space: Any, keys: dict[str, str], started: float,
             clock: ImportClock) -> int:
    """The ``backend: ray`` run (:mod:`metaopt.pbt.ray_tune`): checked, connected (an address
    that does not answer fails naming it), then the run directory and the same files."""
    import importlib.util

    from metaopt.pbt import ray_tune
    from metaopt.pbt.report import write_outputs

    if importlib.util.find_spec("ray") is None:
        raise ExperimentError(exp.file, "pbt.backend", "local, or Ray Tune installed for "
                              "backend: ray (pip install 'metaopt[ray]')", "ray")
    address = section["ray_address"]
    if section["exploit"] == "tournament":
        raise ExperimentError(exp.file, "pbt.exploit", "truncation or none with backend: ray "
                              "(Ray Tune's PBT has no tournament)", "tournament")
    if address is not None:
        try:
            ray_tune.parse_address(address)
        except ValueError:
            raise ExperimentError(exp.file, "pbt.ray_address", "host:port, ray://host:port "
                                  "or auto", address) from None
        if section["storage_path"] is None:
            raise ExperimentError(exp.file, "pbt.storage_path", "storage every node sees "
                                  "(required with pbt.ray_address: Ray does not sync "
                                  "checkpoints between nodes)")
    try:
        pbt = ray_tune.RayPBT(exp.task, space=space,
                              population=section["population"], interval=section["interval"],
                              steps=steps, quantile=section["quantile"],
                              resample=section["resample"], perturb=section["perturb"],
                              exploit=section["exploit"], seed=exp.seed, device=exp.device,
                              address=address, storage_path=section["storage_path"],
                              name=exp.name, progress=args.progress)
    except (ValueError, TypeError) as err:
        raise ExperimentError(exp.file, keys["optimizer"], "an optimizer and space Ray Tune "
                              "can train", str(err)) from None
    if section["deterministic"]:
        pbt.notes.append("deterministic: the ray backend's members are separate processes; "
                         "it fixes nothing there")
    try:
        pbt.connect()
    except ray_tune.ClusterUnreachable as err:
        raise ExperimentError(exp.file, "pbt.ray_address", "a Ray cluster that answers",
                              f"{err.address} ({err.why})") from None
    try:
        directory = runs.run_dir(exp.name, args.out)
        result = pbt.run(close=False)
        ray = pbt.summary()
        _figure_modules()
        write_outputs(directory, result, name=exp.name, task=exp.task, steps=steps,
                      started=started, device=exp.device, interval=section["interval"],
                      exploit=section["exploit"], resumed_from=0, backend="ray",
                      checkpoint_seconds=result.checkpoint_seconds, ray=ray,
                      timings={"imports": clock.seconds,
                               "ray_init": ray["timings"].get("ray_init"),
                               "fit": ray["timings"].get("fit"),
                               "checkpoint": result.checkpoint_seconds})
    except ray_tune.TrialsFailed as err:
        print(f"metaopt pbt: error: {err}", file=sys.stderr)
        return 1
    finally:
        pbt.close()  # after summary.json: Ray's shutdown is not part of the run's time
    _print(result, directory)
    return 0


def _figure_modules() -> None:
    """Import what the figures need before ``summary.json``'s timings are taken, so the
    import clock counts it."""
    import matplotlib.cm  # noqa: F401
    import matplotlib.collections  # noqa: F401
    import matplotlib.colors  # noqa: F401

    import metaopt.plots  # noqa: F401


def _print(result: Any, directory: Path) -> None:
    best = result.best
    print(f"metaopt pbt: {result.lineage.members} members x {result.steps} steps, "
          f"{result.exploits} exploits; " + (
              f"best member {best.member}: val loss {best.value:.4g}" if best else
              "every member diverged"))
    print(f"wrote {directory}/summary.json, best.yaml, lineage.json, report.md")
