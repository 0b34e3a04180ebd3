"""The training loop for one model: ``metaopt.train(task, optimizer, ...)``.

It builds the task's model and the optimizer, drives hyperparameters with schedules, steps
with a closure (so L-BFGS and line searches work) or the task's own ``train_step``, watches
the run with a :class:`~metaopt.monitor.Monitor` (divergence stops training; it never raises),
evaluates, logs, checkpoints and resumes exactly.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from metaopt import optim, tasks
from metaopt import schedules as sched
from metaopt.monitor import Monitor, progress_bar
from metaopt.optim import hyperparams
from metaopt.schedules import ReduceOnPlateau, Schedule
from metaopt.tasks.task import take_step

OptimizerFactory = Callable[..., torch.optim.Optimizer]
ScheduleSpec = Mapping[str, Any] | Schedule | ReduceOnPlateau | str
CHECKPOINT_VERSION = 1


@dataclass
class TrainResult:
    """What one training run produced.

    ``curve`` holds ``(k, loss)`` for every step: the training loss of batch ``k`` at the
    weights after ``k`` updates (measured by the step's first loss evaluation). ``val_curve``
    holds ``(n, validation loss)`` after ``n`` updates. ``diagnostics`` are the monitor's records
    (one dict per logged step: ``step``, ``loss``, ``grad_norm``, ``update_ratio``,
    ``effective_lr``, the hyperparameters ...). ``evaluations`` counts gradient evaluations
    (forward + backward passes): closure calls, or the task's ``grad_evals_per_step`` for
    each call of its own ``train_step``. ``path`` holds flattened parameter snapshots when
    ``record_path_every`` was given (the first is the initial weights, the last the final
    ones).
    """

    value: float
    status: str
    reason: str | None
    diverged_at: int | None
    steps: int
    evaluations: int
    curve: list[tuple[int, float]]
    val_curve: list[tuple[int, float]]
    diagnostics: list[dict[str, float]]
    warnings: list[str]
    seconds: float
    final_hparams: dict[str, float]
    task: str = ""
    optimizer: str = ""
    path: list[Tensor] = field(default_factory=list, repr=False)
    module: nn.Module | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def train(
    task: Any,
    optimizer: str | OptimizerFactory | None,
    hparams: Mapping[str, Any] | None = None,
    schedule: ScheduleSpec | Mapping[str, ScheduleSpec] | None = None,
    steps: int | None = None,
    seed: int = 0,
    *,
    transforms: Iterable[Any] = (),
    eval_every: int | None = None,
    log_every: int = 1,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    progress: bool | None = None,
    writers: Sequence[Any] = (),
    device: str | torch.device = "cpu",
    record_path_every: int | None = None,
    monitor: Monitor | None = None,
) -> TrainResult:
    """Train ``task``'s model with ``optimizer`` for ``steps`` steps; never raises on divergence.

    Args:
        task: a :class:`~metaopt.tasks.Task` (or any object with its attributes) or a name for
            :func:`metaopt.tasks.get`.
        optimizer: a registry name (``metaopt.optim.create(name, params, **hparams)``), a
            callable ``(params, **hparams) -> Optimizer`` (any torch optimizer class works), or
            None for the task's default optimizer.
        hparams: keyword arguments of the optimizer. None: the task's ``default_hparams`` when
            ``optimizer`` is the task's default optimizer, else none.
        schedule: a schedule spec dict, a :class:`~metaopt.schedules.Schedule` or a
            ``ReduceOnPlateau`` driving ``lr``; or ``{hyperparameter: spec}`` driving several
            (``lr``, ``momentum``, ``weight_decay``, ``beta1``, ``beta2``, ...). A spec dict
            without ``base_lr`` starts from the optimizer's initial value of that
            hyperparameter (as torch's schedulers do). Before step ``k`` (0-based) the value
            ``s(k)`` is written into the optimizer; a ``reduce_on_plateau`` schedule is stepped
            with the validation loss at each evaluation.
        steps: number of optimizer steps (default ``task.steps``); with ``resume``, the total.
        seed: the run's seed (see Reproducibility).
        transforms: gradient transforms, each added with ``optimizer.add_transform``.
        eval_every: evaluate every this many steps and at the end (default ``steps // 10``).
        log_every: the monitor's full record (and the writers' rows) every this many steps.
        checkpoint: file to save the run to (atomically: temp file + ``os.replace``).
        checkpoint_every: save every this many steps (default: at each evaluation), and always
            at the end or on divergence.
        resume: continue from ``checkpoint`` when the file exists (else start afresh). The
            result is identical to an uninterrupted run's.
        progress: a tqdm bar (step, loss, val loss); None: only when stderr is a terminal.
        writers: objects with ``write(step, scalars)`` (e.g. :class:`~metaopt.monitor.CSVWriter`,
            :class:`~metaopt.monitor.TensorBoardWriter`); they get each logged record and each
            validation loss (``val_loss``, at the number of updates done). They are flushed,
            not closed.
        device: where the model and batches live.
        record_path_every: keep a flattened copy of the parameters every this many steps (for
            :func:`metaopt.landscape.loss_landscape`); in ``result.path``.
        monitor: a configured :class:`~metaopt.monitor.Monitor` (default
            ``Monitor(every=log_every)``).

    Reproducibility: a run is determined by its seed. The model is built as
    ``torch.manual_seed(seed); module = task.model()`` and the batches come from
    ``task.data(torch.Generator().manual_seed(seed))``; a population trainer reproduces this
    run as member ``i`` by building that member the same way with ``seed`` set to the member's
    seed. Anything the training step draws from torch's global RNG (dropout) continues from
    the state ``task.model()`` left.

    Optimizers with a train / eval weight switch (Schedule-Free, :mod:`metaopt.optim.modes`)
    step in train mode and are evaluated in eval mode; ``result.module`` is left at the
    evaluation weights (call the optimizer's ``train()`` to train on).
    """
    torch.set_flush_denormal(True)
    started = time.perf_counter()
    task = tasks.get(task) if isinstance(task, str) else task
    steps = task.steps if steps is None else int(steps)
    eval_every = eval_every or max(1, steps // 10)
    monitor = monitor or Monitor(every=log_every)
    device = torch.device(device)

    torch.manual_seed(seed)
    module = task.model().to(device)
    opt, opt_name = _build_optimizer(task, optimizer, hparams, module)
    for transform in transforms:
        if not hasattr(opt, "add_transform"):
            raise TypeError(f"gradient transforms need a metaopt optimizer, got "
                            f"{type(opt).__name__}")
        opt.add_transform(transform)
    drivers = sched.drivers(schedule, lambda key: _initial(opt, key))
    generator = torch.Generator().manual_seed(seed)
    batches = task.data(generator)
    run = _Run(monitor=monitor)
    params = list(module.parameters())

    checkpoint = Path(checkpoint) if checkpoint is not None else None
    if resume and checkpoint is not None and checkpoint.exists():
        run.restore(checkpoint, task, seed, module, opt, drivers, generator, batches, device)
    elif record_path_every:
        run.path.append(_flat(params))
        run.path_step = 0

    optim.train_mode(opt)  # optimizers with a weight switch (Schedule-Free) step in train mode
    bar = progress_bar(progress, steps, f"train {task.name}", unit="step", initial=run.step)
    try:
        while run.step < steps and monitor.diverged is None:
            k = run.step
            for key, driver in drivers.items():
                hyperparams.write(opt, key, driver(k))
            batch = _to_device(next(batches), device)
            monitor.before_step(k, params)
            loss, spent = take_step(task, module, opt, batch)
            loss = float(loss)
            run.evaluations += spent
            run.step = n = k + 1
            run.curve.append((k, loss))
            monitor.after_step(k, loss, params, opt)
            if monitor.records and monitor.records[-1]["step"] == k:
                _write(writers, k, {key: v for key, v in monitor.records[-1].items()
                                    if key != "step"})
            if record_path_every and (n % record_path_every == 0 or n == steps):
                run.path.append(_flat(params))
                run.path_step = n
            if monitor.diverged is None and (n % eval_every == 0 or n == steps):
                run.evaluate(task, module, n, drivers, opt)
                _write(writers, n, {"val_loss": run.val_curve[-1][1]})
            if bar is not None:
                bar.update(1)
                if monitor.due(k) or n == steps:
                    val = run.val_curve[-1][1] if run.val_curve else math.nan
                    bar.set_postfix(loss=f"{loss:.4g}", val=f"{val:.4g}", refresh=False)
            ends = n == steps or monitor.diverged is not None
            every = checkpoint_every or eval_every
            if checkpoint is not None and (ends or n % every == 0):
                run.seconds_before += time.perf_counter() - started
                started = time.perf_counter()
                run.save(checkpoint, task, seed, module, opt, drivers, generator, device)
    finally:
        if bar is not None:
            bar.close()
        for writer in writers:
            if hasattr(writer, "flush"):
                writer.flush()

    if monitor.diverged is None:
        monitor.check_params(max(run.step - 1, 0), params)
    value = math.nan
    if monitor.diverged is None:
        if run.val_curve and run.val_curve[-1][0] == run.step:
            value = run.val_curve[-1][1]
        else:
            with optim.evaluating(opt):
                value = float(task.evaluate(module))
        if not math.isfinite(value):
            monitor.diverged = f"validation loss is {value} after {run.step} steps"
            monitor.diverged_at = run.step
            value = math.nan
    if record_path_every and run.path_step != run.step:
        run.path.append(_flat(params))
    optim.eval_mode(opt)  # the returned module holds the weights that were evaluated
    diverged = monitor.diverged is not None
    return TrainResult(
        value=math.nan if diverged else value,
        status="diverged" if diverged else "ok",
        reason=monitor.diverged,
        diverged_at=monitor.diverged_at,
        steps=run.step,
        evaluations=run.evaluations,
        curve=run.curve,
        val_curve=run.val_curve,
        diagnostics=monitor.records,
        warnings=run.warnings + monitor.warnings,
        seconds=run.seconds_before + time.perf_counter() - started,
        final_hparams=hyperparams.values(opt),
        task=task.name,
        optimizer=opt_name,
        path=run.path,
        module=module,
    )


# -- building -------------------------------------------------------------------------------
def _build_optimizer(task: Any, optimizer: str | OptimizerFactory | None,
                     hparams: Mapping[str, Any] | None,
                     module: nn.Module) -> tuple[torch.optim.Optimizer, str]:
    if optimizer is None:
        optimizer = task.default_optimizer
    if hparams is None:
        same = isinstance(optimizer, str) and optimizer.lower() == getattr(
            task, "default_optimizer", None)
        hparams = dict(task.default_hparams) if same else {}
    if not isinstance(optimizer, str) and not callable(optimizer):
        raise TypeError(f"optimizer must be a registry name or a callable "
                        f"(params, **hparams) -> Optimizer, got {optimizer!r}")
    name = optimizer.lower() if isinstance(optimizer, str) else getattr(
        optimizer, "__name__", type(optimizer).__name__)
    return optim.factory(optimizer)(module.parameters(), **hparams), name


def _initial(opt: torch.optim.Optimizer, key: str) -> float | None:
    value = hyperparams.read(opt, key)
    return None if value is None else float(value)


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, Tensor):
        return batch.to(device)
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to_device(b, device) for b in batch)
    return batch


def _flat(params: Sequence[Tensor]) -> Tensor:
    return torch.cat([p.detach().reshape(-1) for p in params]).cpu().clone()


def _write(writers: Sequence[Any], step: int, scalars: dict[str, float]) -> None:
    for writer in writers:
        writer.write(step, scalars)


# -- the run's state, its evaluations and checkpoints --------------------------------------
@dataclass
class _Run:
    monitor: Monitor
    step: int = 0
    evaluations: int = 0
    curve: list[tuple[int, float]] = field(default_factory=list)
    val_curve: list[tuple[int, float]] = field(default_factory=list)
    path: list[Tensor] = field(default_factory=list)
    path_step: int = -1
    seconds_before: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def evaluate(self, task: Any, module: nn.Module, n: int, drivers: Mapping[str, Any],
                 opt: torch.optim.Optimizer) -> None:
        with optim.evaluating(opt):  # at the evaluation weights (Schedule-Free: the average)
            value = float(task.evaluate(module))
        self.val_curve.append((n, value))
        if not math.isfinite(value):
            self.monitor.diverged = f"validation loss is {value} after {n} steps"
            self.monitor.diverged_at = n
            return
        for key, driver in drivers.items():
            if isinstance(driver, ReduceOnPlateau):
                driver.step(value)
                hyperparams.write(opt, key, driver(n))  # the optimizer shows it at once

    def save(self, path: Path, task: Any, seed: int, module: nn.Module,
             opt: torch.optim.Optimizer, drivers: Mapping[str, Any],
             generator: torch.Generator, device: torch.device) -> None:
        state = {
            "version": CHECKPOINT_VERSION, "task": task.name, "seed": seed, "step": self.step,
            "module": module.state_dict(), "optimizer": opt.state_dict(),
            "generator": generator.get_state(), "rng": torch.get_rng_state(),
            "cuda_rng": (torch.cuda.get_rng_state(device) if device.type == "cuda"
                         else torch.zeros(0, dtype=torch.uint8)),
            "curve": self.curve, "val_curve": self.val_curve,
            "evaluations": self.evaluations, "seconds": self.seconds_before,
            "schedules": {key: d.state_dict() for key, d in drivers.items()
                          if isinstance(d, ReduceOnPlateau)},
            "monitor": self.monitor.state_dict(), "path": self.path,
            "path_step": self.path_step, "warnings": self.warnings,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)

    def restore(self, path: Path, task: Any, seed: int, module: nn.Module,
                opt: torch.optim.Optimizer, drivers: Mapping[str, Any],
                generator: torch.Generator, batches: Iterator[Any], device: torch.device) -> None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"{path}: not a metaopt.train checkpoint (version "
                             f"{state.get('version')!r}, expected {CHECKPOINT_VERSION})")
        if (state["task"], state["seed"]) != (task.name, seed):
            raise ValueError(f"{path}: checkpoint of task {state['task']!r} seed "
                             f"{state['seed']}, cannot resume task {task.name!r} seed {seed}")
        module.load_state_dict(state["module"])
        opt.load_state_dict(state["optimizer"])
        for key, saved in state["schedules"].items():
            drivers[key].load_state_dict(saved)
        self.monitor.load_state_dict(state["monitor"])
        self.step, self.evaluations = state["step"], state["evaluations"]
        self.curve = [tuple(c) for c in state["curve"]]
        self.val_curve = [tuple(c) for c in state["val_curve"]]
        self.path, self.path_step = list(state["path"]), state["path_step"]
        self.seconds_before, self.warnings = state["seconds"], list(state["warnings"])
        # Data iterators keep their own position (an epoch's permutation), so the generator
        # state alone cannot restore them: replay the batches, then check against it.
        for _ in range(self.step):
            next(batches)
        if not torch.equal(generator.get_state(), state["generator"]):
            self.warnings.append(
                f"resume: replaying {self.step} batches did not reproduce the checkpoint's data "
                f"generator state (the task's data is not a function of the generator); "
                f"batches after resuming may differ from an uninterrupted run")
            generator.set_state(state["generator"])
        torch.set_rng_state(state["rng"])
        if device.type == "cuda" and state["cuda_rng"].numel():
            torch.cuda.set_rng_state(state["cuda_rng"], device)
