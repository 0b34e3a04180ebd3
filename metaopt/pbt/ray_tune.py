"""PBT through Ray Tune's ``PopulationBasedTraining``: the same run as :mod:`metaopt.pbt.local`,
one Ray trial (an actor process) per member, for clusters.

    result = metaopt.pbt("digits_mlp", "adamw", "adamw", population=16, backend="ray",
                         ray_address="10.0.0.1:6379", storage_path="/shared/ray")

Each trial is :func:`member`: it builds the member's model from the task (seed ``seed + i``
for member ``i``, as the local backend does), steps metaopt's optimizer for one interval,
evaluates, and reports the validation loss with a checkpoint (weights, optimizer state, step,
the member that wrote it; :func:`metaopt.pbt.checkpoint.save`, atomic). Ray's scheduler runs
synchronously (``synch=True``): every member reaches an interval's end, then the bottom
``quantile`` restore a top member's checkpoint, so the run has the same intervals, lineage
and member-steps as a local one. Explore is metaopt's (``custom_explore_fn``: the same
perturbations, bounds, log scales, grids and resampling as :func:`metaopt.pbt.policy.explore`);
which member a trial clones is Ray's choice (seeded). ``reuse_actors=True``: a paused member
resumes in a live actor.

Ray's truncation takes ``ceil(P * quantile)`` members (at most half); the local backend
``max(1, int(P * quantile))``: equal for 16 members and 0.25. Ray has no binary tournament.
A diverged member reports an infinite loss, so it ranks last and is exploited.

On a cluster, ``ray_address`` joins it and ``storage_path`` (required then: Ray does not sync
checkpoints between nodes) is shared storage every node sees; a task given as
``package.module:attribute`` that is not installed is shipped to the workers in the job's
``runtime_env`` (``py_modules``). Every node needs metaopt and torch installed.
"""

from __future__ import annotations

import importlib
import math
import os
import random
import shutil
import socket
import sys
import sysconfig
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from metaopt.pbt import checkpoint as ckpt
from metaopt.pbt import policy
from metaopt.pbt.lineage import Interval, Lineage, discovered
from metaopt.pbt.local import Best, PBTResult, _positive, explore_move, initial_values
from metaopt.pbt.space import MemberSpace, member_space

MEMBER_FILE = "member.pt"
CONNECT_TIMEOUT = 4.0  # seconds for the address to accept a TCP connection, then to answer gRPC
GCS_WAIT = 6  # seconds ray.init may then spend reaching the cluster's GCS


class ClusterUnreachable(ConnectionError):
    """``address`` does not answer as a Ray cluster."""

    def __init__(self, address: str, why: str) -> None:
        super().__init__(f"no Ray cluster answers at {address} ({why})")
        self.address, self.why = address, why


class TrialsFailed(RuntimeError):
    """Ray trials ended with errors (the first one's text)."""


# -- connecting ---------------------------------------------------------------------------------
def parse_address(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of ``host:port`` or ``ray://host:port``; None for ``auto``.
    ValueError for anything else."""
    if address == "auto":
        return None
    rest = address[len("ray://"):] if address.startswith("ray://") else address
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"a Ray address is host:port, ray://host:port or auto, got {address!r}")
    return host.strip("[]"), int(port)


def check_address(address: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """ClusterUnreachable unless a gRPC server (Ray's GCS, or a Ray Client server) answers at
    ``address``: a port nobody listens on fails at once, an unroutable host or a server that
    accepts but does not speak gRPC after ``timeout`` seconds each. ``ray.init`` alone would
    retry for 20 s, or wait on a silent server for minutes."""
    where = parse_address(address)
    if where is None:
        return
    try:
        socket.create_connection(where, timeout=timeout).close()
    except OSError as err:
        raise ClusterUnreachable(address, err.strerror or type(err).__name__) from None
    import grpc

    channel = grpc.insecure_channel(f"{where[0]}:{where[1]}")
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
    except grpc.FutureTimeoutError:
        raise ClusterUnreachable(address, f"it accepts connections but no gRPC answer came in "
                                 f"{timeout:g} s") from None
    finally:
        channel.close()


def runtime_env(task: Any) -> dict[str, Any]:
    """The job's ``runtime_env``: ``py_modules`` shipping the user's task module (a
    ``package.module:attribute`` task whose top-level module is not installed in
    site-packages); empty for built-in tasks and installed packages."""
    if not isinstance(task, str) or ":" not in task:
        return {}
    top = task.partition(":")[0].split(".")[0]
    if top in ("metaopt", "learned"):
        return {}
    module = sys.modules.get(top) or importlib.import_module(top)
    origin = getattr(module, "__file__", None)
    if origin is None:
        return {}
    path = Path(origin).resolve()
    installed = {Path(sysconfig.get_paths()[k]).resolve() for k in ("purelib", "platlib")}
    if any(root in path.parents for root in installed):
        return {}
    return {"py_modules": [str(path.parent if path.name == "__init__.py" else path)]}


# -- the trial -------------------------------------------------------------------------------
_TASKS: dict[str, Any] = {}  # per worker process: a reused actor builds a task once


def _task(ref: Any) -> Any:
    from metaopt import tasks

    if not isinstance(ref, str):
        return ref
    if ref not in _TASKS:
        _TASKS[ref] = tasks.get(ref)
    return _TASKS[ref]


def slot_of(trial_id: str) -> int:
    """The member a trial is: Tune numbers the trials of one run ``<prefix>_00000``, ... in
    the order it creates them, which is the members' order (one grid value each)."""
    return int(trial_id.rsplit("_", 1)[1])


def member(config: Mapping[str, Any], spec: Mapping[str, Any]) -> None:
    """One member's training as a Ray Tune function trainable: from its checkpoint (or its
    own initialisation) to the next interval's end, then a report with a checkpoint, until
    ``steps``. ``spec``: the task, the member space, steps, interval, seed, device,
    threads."""
    import torch
    from ray import tune

    from metaopt import divergence, optim
    from metaopt.optim import hyperparams
    from metaopt.population_engines import build_member, member_data
    from metaopt.tasks.task import take_step

    torch.set_flush_denormal(True)
    torch.set_num_threads(int(spec["threads"]))
    task, space = _task(spec["task"]), spec["space"]
    steps, interval, device = int(spec["steps"]), int(spec["interval"]), spec["device"]
    slot = slot_of(tune.get_context().get_trial_id())
    seed = int(spec["seed"]) + slot
    values = {k: config[k] for k in space.params}
    module = build_member(task, seed, device)
    opt = optim.create(space.optimizer, module.parameters(), **space.optimizer_hparams(values))
    step, parent, first, diverged = 0, None, math.nan, False
    restored = tune.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as directory:
            state = ckpt.load(Path(directory) / MEMBER_FILE)
        module.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        for name, value in hyperparams.flatten(opt, space.tensor_hparams(values)).items():
            hyperparams.write(opt, name, value)  # explore's values on the copied state
        step, parent = int(state["step"]), int(state["slot"])
        first, diverged = float(state["first_loss"]), bool(state["diverged"])
    data = member_data(task, seed)
    ckpt.replay([data], [step])  # this member's own batches continue where it was
    schedule = space.schedule_of(values, steps)
    node = _node()
    while step < steps:
        started, evaluations = time.perf_counter(), 0
        end = min((step // interval + 1) * interval, steps)
        for k in range(step, end):
            batch = next(data)
            if diverged:
                continue
            if schedule is not None:
                hyperparams.write(opt, "lr", float(schedule(k)))
            loss, spent = take_step(task, module, opt, batch)
            loss, evaluations = float(loss), evaluations + spent
            if k == 0:
                first = loss
            diverged = divergence.check(loss, first, k) is not None
        value = math.inf if diverged else float(task.evaluate(module))
        if not math.isfinite(value):
            diverged, value = True, math.inf
        trained = time.perf_counter() - started
        writing = time.perf_counter()
        # one folder per worker process, emptied before each write: a paused trial stops
        # inside tune.report (after Ray has stored the checkpoint) and never cleans up
        directory = os.path.join(tempfile.gettempdir(), f"metaopt_member_{os.getpid()}")
        shutil.rmtree(directory, ignore_errors=True)
        os.makedirs(directory)
        ckpt.save(Path(directory) / MEMBER_FILE, {
            "model": module.state_dict(), "optimizer": opt.state_dict(), "step": end,
            "slot": slot, "first_loss": first, "diverged": diverged})
        written = time.perf_counter() - writing
        result = {"val_loss": value, "step": end, "slot": slot, "parent": parent,
                  "values": dict(values), "evaluations": evaluations, "trained": end - step,
                  "diverged": diverged, "train_seconds": trained, "write_seconds": written,
                  **node}
        tune.report(result, checkpoint=tune.Checkpoint.from_directory(directory))
        shutil.rmtree(directory, ignore_errors=True)
        step, parent = end, slot


def _node() -> dict[str, Any]:
    import ray

    return {"node_id": ray.get_runtime_context().get_node_id(), "host": socket.gethostname(),
            "pid": os.getpid()}


# -- the run -------------------------------------------------------------------------------------
class RayPBT:
    """A PBT run through Ray Tune (see the module docstring); the arguments are
    :class:`~metaopt.pbt.local.PBT`'s, plus:

    Args:
        task: a built-in task's name, ``package.module:attribute`` (shipped to the workers
            when not installed) or a Task (pickled to them).
        address: a Ray cluster to join (``host:port``, ``ray://host:port``, ``auto``); None
            starts a local one with ``cpus`` CPUs (default: all).
        storage_path: where Ray keeps trials and checkpoints (required with ``address``:
            storage every node sees); None: a temporary folder, removed at the end.
        cpus_per_member: CPUs (and torch threads) each trial takes; on a ``cuda`` device
            each also takes ``gpus_per_member`` GPUs (default: the members share one GPU).
    """

    def __init__(self, task: Any, optimizer: str | None = None, space: Any = None, *,
                 schedule: Any = None, population: int = 16, interval: int = 25,
                 steps: int | None = None, quantile: float = 0.25, resample: float = 0.25,
                 perturb: Sequence[float] = policy.PERTURB, exploit: str | bool = "truncation",
                 seed: int = 0, initial: Sequence[Mapping[str, Any]] | None = None,
                 device: str = "cpu", address: str | None = None,
                 storage_path: str | os.PathLike | None = None, cpus: int | None = None,
                 cpus_per_member: int = 1, gpus_per_member: float | None = None,
                 name: str = "pbt",
                 progress: bool | None = None) -> None:
        from metaopt import tasks
        from metaopt.search.space import Space, load_space

        self.task_ref = task
        self.task = tasks.get(task) if isinstance(task, str) else task
        if not isinstance(space, Space):
            space = load_space(space, optimizer or self.task.default_optimizer,
                               schedule=schedule)
        self.space: MemberSpace = member_space(space)
        self.P, self.interval = _positive("population", population), _positive("interval",
                                                                               interval)
        self.steps = _positive("steps", steps or self.task.steps)
        self.exploit = {True: "truncation", False: "none", None: "none"}.get(exploit, exploit)
        if self.exploit not in ("truncation", "none"):
            raise ValueError(f"the ray backend exploits by truncation (or none), got "
                             f"{exploit!r}: Ray Tune has no tournament")
        self.quantile, self.resample = float(quantile), float(resample)
        self.perturb = tuple(float(f) for f in perturb)
        policy.check(quantile=self.quantile, resample=self.resample, perturb=self.perturb)
        if address is not None and storage_path is None:
            raise ValueError("storage_path is required with a Ray address: Ray does not sync "
                             "checkpoints between nodes, so they go to storage every node sees")
        self.seed, self.device, self.progress, self.name = int(seed), device, progress, name
        self.address, self.cpus, self.cpus_per_member = address, cpus, int(cpus_per_member)
        self.resources: dict[str, float] = {"cpu": self.cpus_per_member}
        if not str(device).startswith("cpu"):  # Ray hides GPUs from trials that ask none
            self.resources["gpu"] = gpus_per_member or 1.0 / self.P
        self.storage_path = None if storage_path is None else str(storage_path)
        if self.storage_path is not None and "://" not in self.storage_path:
            self.storage_path = str(Path(self.storage_path).expanduser().resolve())
        self.rng = random.Random(self.seed)
        self.initial = initial_values(self.space, self.P, self.steps, self.rng, initial)
        self.notes = list(self.space.notes)
        self.records: list[dict[str, Any]] = []
        self.timings: dict[str, float] = {}
        self.connected = False

    # -- Ray ----------------------------------------------------------------------------------
    def connect(self) -> None:
        """Join the cluster at ``address`` (ClusterUnreachable within about 15 s when it does
        not answer) or start a local one; imports Ray (timed apart, as ``imports``)."""
        started = time.perf_counter()
        import ray
        import ray.tune  # noqa: F401
        import ray.tune.schedulers  # noqa: F401

        self.timings["imports"] = time.perf_counter() - started
        started = time.perf_counter()
        env = runtime_env(self.task_ref)
        kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": "ERROR",
                                  "include_dashboard": False}
        if env:
            kwargs["runtime_env"] = env
        if self.address is not None:
            check_address(self.address)
            os.environ.setdefault("RAY_gcs_server_port_wait_time_s", str(GCS_WAIT))
            kwargs.pop("include_dashboard")
            try:
                ray.init(address=self.address, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as err:
                raise ClusterUnreachable(self.address, _first_line(err)) from None
        else:
            ray.init(num_cpus=self.cpus, **kwargs)
        self.connected = True
        self.timings["ray_init"] = time.perf_counter() - started

    def close(self) -> None:
        if self.connected:
            import ray

            ray.shutdown()
            self.connected = False

    def _explore(self, config: dict[str, Any]) -> dict[str, Any]:
        """Ray's ``custom_explore_fn``: ``config`` is the cloned member's; explore it as the
        local backend does (its values and schedule values, bounds and scales kept)."""
        values = {k: config[k] for k in self.space.params}
        config.update(explore_move(self.space, values, self.steps, self.rng,
                                   resample=self.resample, perturb=self.perturb))
        return config

    def run(self, close: bool = True) -> PBTResult:
        """Train through Ray Tune to ``steps``; connects first if :meth:`connect` was not
        called, and disconnects at the end (``close=False``: the caller calls :meth:`close`,
        after writing its outputs)."""
        import torch

        torch.set_flush_denormal(True)
        if not self.connected:
            self.connect()
        try:
            return self._fit()
        finally:
            if close:
                self.close()

    def _fit(self) -> PBTResult:
        from ray import tune
        from ray.tune.schedulers import PopulationBasedTraining

        from metaopt.monitor import progress_bar

        random.seed(self.seed)  # Ray's PBT draws which top member a trial clones from random
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # verbose=0 prints nothing then
        initial = self.initial
        param_space: dict[str, Any] = {"slot": tune.grid_search(list(range(self.P)))}
        for key in self.space.params:
            param_space[key] = tune.sample_from(
                lambda spec, key=key: initial[spec.config.slot][key])
        scheduler = None
        if self.exploit != "none":
            scheduler = PopulationBasedTraining(
                time_attr="step", perturbation_interval=self.interval,
                hyperparam_mutations={}, custom_explore_fn=self._explore,
                quantile_fraction=self.quantile, resample_probability=self.resample,
                perturbation_factors=self.perturb, synch=True, log_config=False)
        spec = {"task": self.task_ref, "space": self.space, "steps": self.steps,
                "interval": self.interval, "seed": self.seed, "device": self.device,
                "threads": self.cpus_per_member}
        bar = progress_bar(self.progress, self.P * self.steps,
                           f"pbt {self.task.name} (ray): {self.P} members", unit="step")
        recorder = _Recorder(self.records, bar)
        storage = self.storage_path or tempfile.mkdtemp(prefix="metaopt_ray_")
        started = time.perf_counter()
        try:
            tuner = tune.Tuner(
                tune.with_resources(tune.with_parameters(member, spec=spec), self.resources),
                param_space=param_space,
                tune_config=tune.TuneConfig(
                    metric="val_loss", mode="min", scheduler=scheduler, num_samples=1,
                    reuse_actors=True, trial_dirname_creator=lambda trial: trial.trial_id),
                run_config=tune.RunConfig(
                    name=f"{self.name}-{int(time.time())}", storage_path=storage,
                    stop={"step": self.steps}, callbacks=[recorder], verbose=0))
            grid = tuner.fit()
        finally:
            if bar is not None:
                bar.close()
            if self.storage_path is None:
                shutil.rmtree(storage, ignore_errors=True)
        self.timings["fit"] = time.perf_counter() - started
        if grid.errors:
            raise TrialsFailed(f"{len(grid.errors)} Ray trial(s) failed; the first: "
                               f"{_first_line(grid.errors[0])}")
        return self.result()

    # -- the outcome ----------------------------------------------------------------------
    def lineage(self) -> Lineage:
        """The intervals rebuilt from the trials' reports: member ``i``'s values, parent (the
        member whose checkpoint it continued from) and loss at each interval's end."""
        ends = list(range(self.interval, self.steps, self.interval)) + [self.steps]
        last = {(r["slot"], r["step"]): r for r in self.records}
        out = Lineage(self.P)
        start = 0
        previous = [dict(c) for c in self.initial]
        for j, end in enumerate(ends):
            hparams, parents, values = [], [], []
            for i in range(self.P):
                r = last.get((i, end))
                hparams.append(dict(r["values"]) if r else previous[i])
                parents.append(None if j == 0 else (int(r["parent"]) if r else i))
                values.append(math.nan if r is None or r["diverged"] else float(r["val_loss"]))
            out.intervals.append(Interval(start, end, hparams, parents, values))
            previous, start = hparams, end
        return out

    def placements(self) -> dict[int, list[dict[str, Any]]]:
        """Where each member ran: its distinct ``(node_id, host, pid)``."""
        out: dict[int, list[dict[str, Any]]] = {i: [] for i in range(self.P)}
        for r in self.records:
            where = {"node_id": r["node_id"], "host": r["host"], "pid": r["pid"]}
            if where not in out[r["slot"]]:
                out[r["slot"]].append(where)
        return out

    def result(self) -> PBTResult:
        lineage = self.lineage()
        values = list(lineage.intervals[-1].values)
        finite = [i for i, v in enumerate(values) if math.isfinite(v)]
        best = None
        if finite:
            i = min(finite, key=lambda j: (values[j], j))
            hparams, schedule = discovered(lineage, i, self.space, self.steps)
            root = lineage.ancestry(i)[0]
            best = Best(self.space.optimizer, hparams, schedule, values[i], i,
                        self.seed + root)
        exploits = sum(p is not None and p != i for iv in lineage.intervals
                       for i, p in enumerate(iv.parents))
        nodes = sorted({r["node_id"] for r in self.records})
        note = (f"Ray Tune PopulationBasedTraining (synch, reuse_actors): {self.P} trials on "
                f"{len(nodes)} node(s)")
        checkpoint = sum(r["write_seconds"] for r in self.records)
        return PBTResult(best, values, [dict(h) for h in lineage.intervals[-1].hparams],
                         lineage, [], sum(int(r["evaluations"]) for r in self.records),
                         self.timings.get("fit", math.nan), self.steps, exploits, "ray", note,
                         self.notes, self.space, None, checkpoint)

    def summary(self) -> dict[str, Any]:
        """The Ray part of ``summary.json``: address, nodes, each member's placements,
        timings, the trials' own time in training, checkpoint writes and reports."""
        return {"address": self.address or "local", "storage_path": self.storage_path,
                "nodes": sorted({r["node_id"] for r in self.records}),
                "placements": {str(k): v for k, v in self.placements().items()},
                "reports": len(self.records),
                "train_seconds": sum(r["train_seconds"] for r in self.records),
                "timings": dict(self.timings)}


class _Recorder:
    """A Tune callback (built lazily so this module imports without Ray) keeping every
    member's reports in ``records`` and moving the progress bar."""

    def __new__(cls, records: list[dict[str, Any]], bar: Any) -> Any:
        from ray import tune

        class Recorder(tune.Callback):
            def on_trial_result(self, iteration: int, trials: Any, trial: Any,
                                result: dict[str, Any], **info: Any) -> None:
                keep = ("val_loss", "step", "slot", "parent", "values", "evaluations",
                        "trained", "diverged", "train_seconds", "write_seconds", "node_id",
                        "host", "pid")
                records.append({k: result[k] for k in keep if k in result})
                if bar is not None:
                    bar.update(int(result.get("trained", 0)))

        return Recorder()


def _first_line(err: Any) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
