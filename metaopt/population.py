"""Train P copies of a task's model at once, each with its own hyperparameters.

    result = metaopt.train_population("digits_mlp", "adamw",
                                      [{"lr": lr} for lr in (1e-3, 3e-3, 1e-2, 3e-2)],
                                      steps=300)

Member ``i`` trains exactly as ``metaopt.train(task, optimizer, hparams[i], seed=seeds[i])``
would (same initial weights, same batches), but all members run as one stacked, vmapped
program stepped by one metaopt optimizer with ``population=P``. A member whose loss or weights
stop being finite is reported diverged and frozen without touching the others. Members can be
re-initialised (a search refilling a slot with a new trial) or overwritten from another member
(PBT's exploit) mid-run. Tasks vmap can't serve run member by member, and the result says so.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from metaopt import divergence, optim, population_trial, schedules
from metaopt.monitor import progress_bar
from metaopt.population_engines import (
    LoopEngine,
    StackedEngine,
    build_member,
    set_member_hparams,
)
from metaopt.tasks import Task
from metaopt.tasks import get as get_task

ENGINES = ("auto", "stacked", "loop")


@dataclass
class MemberResult:
    """One member's outcome: what ``metaopt.train`` returns for a single run."""

    seed: int
    hparams: dict[str, Any]
    value: float = math.nan
    status: str = "ok"
    reason: str | None = None
    diverged_at: int | None = None
    steps: int = 0
    curve: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class PopulationResult:
    members: list[MemberResult]
    engine: str
    note: str
    seconds: float
    evaluations: int

    @property
    def best(self) -> MemberResult:
        ok = [m for m in self.members if m.status == "ok" and math.isfinite(m.value)]
        if not ok:
            raise ValueError("every member diverged")
        return min(ok, key=lambda m: m.value)


class Population:
    """P members of one task trained together; see the module docstring.

    ``engine``: ``"stacked"`` (one optimizer with ``population=P`` over stacked parameters),
    ``"loop"`` (a module and an optimizer per member, stepped in turn) or ``"auto"`` (stacked
    unless the task can't be or there is one member, which the result's ``note`` says; for
    large members whichever of the two steps faster, see :mod:`metaopt.population_trial`).
    ``forward``: how the stacked members' losses are computed: ``"batched"`` (MLP layers as
    batched matmuls), ``"vmap"`` (the loss vmapped over members), ``"members"`` (member by
    member on views of the stacked parameters) or ``"auto"`` (batched where the model allows
    it, else vmap; for large members the first steps time that against members and keep the
    faster); see :class:`~metaopt.population_engines.StackedEngine`.
    """

    def __init__(self, task: Task | str, optimizer: str | Callable,
                 hparams: Sequence[Mapping[str, Any]], *, seeds: Sequence[int] | None = None,
                 seed: int = 0, schedule: Mapping[str, Any] | None = None,
                 device: str = "cpu", engine: str = "auto", forward: str = "auto") -> None:
        self.task = get_task(task) if isinstance(task, str) else task
        self.hparams = [dict(h) for h in hparams]
        self.P = len(self.hparams)
        if self.P < 1:
            raise ValueError("a population needs at least one member")
        self.seeds = list(seeds) if seeds is not None else [seed + i for i in range(self.P)]
        if len(self.seeds) != self.P:
            raise ValueError(f"{len(self.seeds)} seeds for {self.P} members")
        self.make_optimizer = optim.factory(optimizer)
        self.forward = forward
        self.engine, self.note = self._build(engine, device)
        self.members = [MemberResult(s, dict(h)) for s, h in zip(self.seeds, self.hparams)]
        self.steps_done = torch.zeros(self.P, dtype=torch.float64)
        self.first_loss = torch.full((self.P,), math.nan, dtype=torch.float64)
        self.active = torch.ones(self.P, dtype=torch.bool)
        self.evaluations = 0
        self.schedules = schedules.drivers(
            schedule, lambda key: self.engine.read_hparam(key).double().clone())

    # -- construction -------------------------------------------------------------------
    def _build(self, engine: str, device: str):
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
        why = self._loop_reason()
        if engine == "auto" and not why and self.P == 1 and self.forward == "auto":
            why = "one member: a plain training loop (nothing to batch)"
        if engine == "loop" or (engine == "auto" and why):
            return LoopEngine(self.task, self.make_optimizer, self.hparams, self.seeds,
                              device), why or "loop requested"
        try:
            if engine == "auto" and self.forward == "auto" and self._large(device):
                return self._tried(device)
            built = StackedEngine(self.task, self.make_optimizer, self.hparams, self.seeds,
                                  device, forward=self.forward)
            return built, f"{self.P} members stacked"
        except Exception as err:
            if engine == "stacked" or self.forward != "auto":  # asked for: say why not
                raise
            return (LoopEngine(self.task, self.make_optimizer, self.hparams, self.seeds, device),
                    f"member-by-member loop: stacking failed ({type(err).__name__}: {err})")

    def _large(self, device: str) -> bool:
        member = build_member(self.task, self.seeds[0], device)
        return sum(p.numel() for p in member.parameters()) >= StackedEngine.TRIAL_MIN_NUMEL

    def _tried(self, device: str):
        """Large members: stacked or a loop, whichever steps faster (see
        :mod:`metaopt.population_trial`), built for every member."""
        k = min(self.P, population_trial.MEMBERS)
        few = StackedEngine(self.task, self.make_optimizer, self.hparams[:k], self.seeds[:k],
                            device)
        one = LoopEngine(self.task, self.make_optimizer, self.hparams[:1], self.seeds[:1],
                         device)
        choice, forward, seconds = population_trial.fastest(few, one, self.P)
        timing = ", ".join(f"{way} {s * 1e3:.0f} ms" for way, s in seconds.items())
        if choice == "loop":
            return (LoopEngine(self.task, self.make_optimizer, self.hparams, self.seeds, device),
                    f"member-by-member loop: faster than stacking these large members "
                    f"(a step, estimated: {timing})")
        return (StackedEngine(self.task, self.make_optimizer, self.hparams, self.seeds, device,
                              forward=forward),
                f"{self.P} members stacked (a step, estimated: {timing})")

    def _loop_reason(self) -> str | None:
        if self.task.train_step is not None and not getattr(self.task.train_step, "phases",
                                                            None):
            return "member-by-member loop: the task has its own train_step (not phased)"
        if not self.task.vmap_ok:
            return "member-by-member loop: the task's model can't be vmapped"
        return None

    # -- stepping -----------------------------------------------------------------------
    def step(self) -> Tensor:
        """One step of every member; returns the ``[P]`` training losses."""
        self._apply_schedules()
        if self.engine.mode == "stacked" and self.evaluations == 0:
            losses = self._first_vmap_step()
        else:
            losses = self.engine.step()
        self.evaluations += self.task.grad_evals_per_step * sum(self.active.tolist())
        self._record(losses)
        return losses

    def _first_vmap_step(self) -> Tensor:
        try:
            return self.engine.step()
        except Exception as err:  # an op vmap has no rule for: fall back, say so
            self.note = f"member-by-member loop: vmap failed ({type(err).__name__}: {err})"
            self.engine = LoopEngine(self.task, self.make_optimizer, self.hparams, self.seeds,
                                     self.engine.device)
            self._apply_schedules()
            return self.engine.step()

    def _apply_schedules(self) -> None:
        for key, schedule in self.schedules.items():
            values = torch.as_tensor(schedule(self.steps_done), dtype=torch.float64)
            self.engine.write_hparam(key, values.expand(self.P).clone())
        if not bool(self.active.all()):
            lr = self.engine.read_hparam("lr").clone()
            lr[~self.active] = 0.0
            self.engine.write_hparam("lr", lr)

    def _record(self, losses: Tensor) -> None:
        """Each active member's loss into its curve, its first loss kept, the divergence rule
        applied: on Python floats, one transfer of the ``[P]`` losses per step."""
        values = losses.detach().double().cpu().tolist()
        active, steps = self.active.tolist(), self.steps_done.tolist()
        first = self.first_loss.tolist()
        diverged = []
        for i, (m, live, step, loss) in enumerate(zip(self.members, active, steps, values)):
            if not live:
                continue
            if math.isnan(first[i]):
                first[i] = loss
                self.first_loss[i] = loss
            m.curve.append((int(step), loss))
            m.steps += 1
            verdict = divergence.verdict(loss, 0.0 if math.isnan(first[i]) else first[i])
            if verdict:
                diverged.append((i, divergence.reason(verdict, loss, int(step)), int(step)))
        for i, reason, step in diverged:
            self.freeze(i, reason, step)
        self.steps_done.add_(self.active)  # a member frozen just now does not advance

    def freeze(self, i: int, reason: str, at: int) -> None:
        """Mark member ``i`` diverged: its learning rate is held at zero and its weights
        restored to finite values (its initial ones), so it can't disturb anything."""
        m = self.members[i]
        m.status, m.reason, m.diverged_at, m.value = "diverged", reason, at, math.nan
        self.retire(i)

    def retire(self, i: int) -> None:
        """Stop training member ``i`` (a finished trial whose slot has no successor): its
        learning rate is held at zero until :meth:`reinit` gives the slot a new run."""
        self.active[i] = False
        if isinstance(self.engine, LoopEngine):
            self.engine.active[i] = False
        else:
            self.engine.reinit(i, self.seeds[i])
        self._apply_schedules()

    # -- members ------------------------------------------------------------------------
    def reinit(self, i: int, *, seed: int | None = None,
               hparams: Mapping[str, Any] | None = None) -> None:
        """Start member ``i`` over as a new run: fresh weights (from ``seed``), fresh optimizer
        state and data, optionally new hyperparameters; its record restarts too."""
        seed = self.seeds[i] if seed is None else seed
        if hparams is not None:
            set_member_hparams(self.engine, i, hparams)
            self.hparams[i] = {**self.hparams[i], **hparams}
        self.seeds[i] = seed
        self.engine.reinit(i, seed)
        if isinstance(self.engine, LoopEngine):
            self.engine.active[i] = True
        self.active[i] = True
        self.steps_done[i] = 0
        self.first_loss[i] = math.nan
        self.members[i] = MemberResult(seed, dict(self.hparams[i]))
        self._apply_schedules()

    def copy_member(self, src: int, dst: int, *, hparams: bool = True) -> None:
        """Member ``dst`` takes ``src``'s weights and optimizer state (step count included)
        and, unless ``hparams=False``, its hyperparameters (PBT's exploit)."""
        self.engine.copy_member(src, dst, hparams=hparams)
        if hparams:
            self.hparams[dst] = dict(self.hparams[src])
            self.members[dst].hparams = dict(self.hparams[src])
        self.steps_done[dst] = self.steps_done[src]

    def set_hparams(self, i: int, hparams: Mapping[str, Any]) -> None:
        """Change member ``i``'s hyperparameters in place (PBT's explore)."""
        set_member_hparams(self.engine, i, hparams)
        self.hparams[i] = {**self.hparams[i], **hparams}
        self.members[i].hparams = dict(self.hparams[i])

    def evaluate(self, members: Sequence[int] | None = None) -> list[float]:
        """Validation loss of each member (``nan`` for diverged ones)."""
        members = range(self.P) if members is None else members
        live = [i for i in members if self.active[i]]
        values = dict(zip(live, self.engine.evaluate(live)))
        return [values.get(i, math.nan) for i in members]

    # -- a whole run --------------------------------------------------------------------
    def run(self, steps: int, *, progress: bool | None = None,
            eval_every: int | None = None) -> PopulationResult:
        """Train every member ``steps`` steps, evaluate, and return the result."""
        start = time.perf_counter()
        bar = progress_bar(progress, steps, f"{self.task.name}: {self.P} members")
        for k in range(steps):
            losses = self.step()
            if eval_every and (k + 1) % eval_every == 0 and k + 1 < steps:
                self._plateau(self.evaluate())
            if bar is not None:
                live = losses[self.active]
                bar.set_postfix(best=f"{float(live.min()) if len(live) else math.nan:.4g}",
                                diverged=int((~self.active).sum()))
                bar.update()
        if bar is not None:
            bar.close()
        return self.result(time.perf_counter() - start)

    def _plateau(self, values: list[float]) -> None:
        for schedule in self.schedules.values():
            if isinstance(schedule, schedules.ReduceOnPlateau):
                schedule.step(torch.tensor(values, dtype=torch.float64))

    def result(self, seconds: float = math.nan) -> PopulationResult:
        for m, value in zip(self.members, self.evaluate()):
            if m.status == "ok":
                m.value = value
        note = self.note
        engine = self.engine
        if isinstance(engine, StackedEngine) and engine.forward == "members":
            note = (f"{self.P} members stacked; losses computed member by member (large, "
                    f"compute-bound members: faster than a batched program here)")
        elif isinstance(engine, StackedEngine) and engine.forward == "batched":
            note = f"{self.P} members stacked; layers batched by hand"
        elif isinstance(engine, StackedEngine) and engine.why_not_batched:
            note = f"{self.P} members stacked; vmapped (not batched by hand: " \
                   f"{engine.why_not_batched})"
        return PopulationResult(self.members, self.engine.mode, note, seconds,
                                self.evaluations)


def train_population(task: Task | str, optimizer: str | Callable,
                     hparams: Sequence[Mapping[str, Any]], steps: int | None = None, *,
                     seeds: Sequence[int] | None = None, seed: int = 0,
                     schedule: Mapping[str, Any] | None = None, device: str = "cpu",
                     engine: str = "auto", progress: bool | None = None) -> PopulationResult:
    """Train ``len(hparams)`` members of ``task`` together (see :class:`Population`)."""
    pop = Population(task, optimizer, hparams, seeds=seeds, seed=seed, schedule=schedule,
                     device=device, engine=engine)
    return pop.run(steps or pop.task.steps, progress=progress)
