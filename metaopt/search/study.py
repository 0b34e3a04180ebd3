"""Optuna studies trained as populations: ask trials, train them together, tell results.

Optuna is the engine (samplers, pruners, storage); metaopt decides which trials train
together. Trials are asked (ask-and-tell) and put in the slots of one stacked
:class:`~metaopt.population.Population` of their *structure* (the optimizer and its non-tensor
options: trials that differ only in tensor values share one program). Every ``eval_every``
steps each member's validation loss is reported to its trial, and a pruned, finished or
diverged member's slot is refilled at once with a newly asked trial (continuous batching: the
population stays full until the budget is spent). Trials whose structure differs from the
running population's wait for their own. A trial that repeats a running trial's parameters is
not trained again: it gets its twin's result. Diverged trials are told ``FAIL`` with their
reason in the user attribute ``reason``; nothing a trial does crashes the study.

What metaopt records costs three storage writes per trial (SQLite commits are what a study pays
for): the user attribute ``config`` (``worker`` as soon as the trial is asked, then with
``optimizer``, ``hparams``, ``schedule``) and ``run`` (``slot``, ``entered``, ``left``,
``evaluations``) when it ends, plus ``reason`` for failed ones. Several processes may work on
one study (``workers``): each one records its liveness in the study (``worker:<id>`` user
attributes, refreshed as it works), so that a later run finds the trials a killed process left
``RUNNING``, fails them (``reason: lost``) and enqueues their parameters again. The budget
counts finished trials (complete, pruned, diverged) across all workers, so together they end
with exactly ``trials``.
"""

from __future__ import annotations

import math
import os
import socket
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from metaopt import optim, schedules
from metaopt.monitor import progress_bar
from metaopt.population import Population
from metaopt.search.space import Config, Space, suggest
from metaopt.search.storage import count_trials

LOST_AFTER = 120.0  # seconds without a heartbeat before another worker's trial counts as lost
BEAT_EVERY = 5.0
RECOUNT_EVERY = 2.0  # seconds between reads of the shared trial count
UNCOUNTED = ("lost", "surplus")  # FAIL reasons that don't spend the budget


@dataclass
class Best:
    optimizer: str
    hparams: dict[str, Any]
    schedule: dict[str, Any] | None
    value: float
    trial: int


@dataclass
class SearchResult:
    """``study`` (the Optuna study), ``best`` (its best configuration), ``evaluations``
    (gradient evaluations this process spent), ``notes`` (how populations ran)."""

    study: optuna.Study
    best: Best | None
    evaluations: int
    seconds: float
    notes: list[str] = field(default_factory=list)


# -- samplers and pruners ---------------------------------------------------------------------
SAMPLERS = ("tpe", "cmaes", "gp", "random", "auto")
PRUNERS = ("hyperband", "median", "none")


def auto_sampler(space: Space, trials: int, population: int) -> str:
    """``auto``, metaopt's rule: Gaussian-process BO (``gp``) for a small budget of one-at-a-time
    trials over continuous parameters, where each trial is expensive and a model pays;
    multivariate TPE otherwise (it handles categorical and conditional parameters, and with a
    constant liar it spreads a population's simultaneous asks)."""
    continuous = len(space.optimizers) == 1 and space.schedule is None and all(
        type(p).__name__ in ("FloatParam", "IntParam", "Fixed")
        for params in space.optimizers.values() for p in params.values())
    return "gp" if continuous and population == 1 and trials <= 100 else "tpe"


def make_sampler(name: str | optuna.samplers.BaseSampler, seed: int, space: Space, trials: int,
                 population: int) -> optuna.samplers.BaseSampler:
    if isinstance(name, optuna.samplers.BaseSampler):
        return name  # a caller's own, configured sampler
    if name == "auto":
        name = auto_sampler(space, trials, population)
    with warnings.catch_warnings():  # multivariate/group TPE and GP are "experimental"
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "tpe":
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True,
                                              constant_liar=True)
        if name == "gp":
            return optuna.samplers.GPSampler(seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {name!r}")


def make_pruner(name: str, steps: int, eval_every: int) -> optuna.pruners.BasePruner:
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=eval_every, max_resource=steps,
                                              reduction_factor=3)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=eval_every)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"pruner must be one of {', '.join(PRUNERS)}, got {name!r}")


# -- one trial in a slot ----------------------------------------------------------------------
@dataclass
class _Slot:
    trial: optuna.Trial
    config: Config
    slot: tuple[int, int] = (-1, 0)  # (member index, population step it entered at)

    @property
    def key(self) -> tuple:
        return _key(self.config)


def _key(config: Config) -> tuple:
    return (config.structure, tuple(sorted(config.hparams.items())), repr(config.schedule))


class _PerMember:
    """Each member's own schedule, evaluated at its own step: what a population of trials
    with different schedule parameters needs (one value per member, ``[P]``)."""

    def __init__(self, size: int) -> None:
        self.members: list[Callable | None] = [None] * size

    def __call__(self, k: torch.Tensor) -> torch.Tensor:
        return torch.tensor([0.0 if s is None else float(s(int(step)))
                             for s, step in zip(self.members, k.tolist())], dtype=torch.float64)


class Search:
    """One worker's search loop over ``study``; see the module docstring."""

    def __init__(self, study: optuna.Study, task: Any, space: Space, *, trials: int,
                 population: int, steps: int, seed: int = 0, eval_every: int | None = None,
                 device: str = "cpu", progress: bool | None = None) -> None:
        self.study, self.task, self.space = study, task, space
        self.trials, self.P, self.steps, self.seed = trials, population, steps, seed
        self.eval_every = eval_every or max(1, steps // 10)
        self.device = device
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{time.time():.0f}"
        self.waiting: dict[tuple, list[tuple[optuna.Trial, Config]]] = defaultdict(list)
        self.twins: dict[tuple, list[optuna.Trial]] = defaultdict(list)
        self.running: dict[tuple, int] = defaultdict(int)
        self.evaluations, self.notes = 0, []
        self._beat, self._step = 0.0, 0
        self._failed = (0, 0)  # (failed trials seen, of which uncounted)
        self._count = (0, 0, -math.inf)  # (storage count, own asks since, when counted)
        self._alone = False  # no other live worker on the study (then counting is local)
        self.told: dict[str, int] = defaultdict(int)  # this worker's finished trials by state
        self.best_value = math.inf
        self._bar = progress_bar(progress, trials, f"tune {task.name}", unit="trial")

    # -- the budget, shared by every worker --------------------------------------------------
    def counted(self) -> int:
        """Trials that spend the budget: finished (complete, pruned, diverged), running or
        waiting; not the ones lost with a killed worker, nor surplus asks. The storage is
        read every ``RECOUNT_EVERY`` seconds, which also tells whether other workers are
        live, and at every ask while they are; a worker alone adds its own asks to the last
        count in between (each read costs milliseconds on an RDB storage)."""
        now = time.monotonic()
        due = now - self._count[2] >= RECOUNT_EVERY
        if due or not self._alone:
            self._count = (self._storage_count(), 0, now)
            if due:
                self._alone = not self._other_workers()
        return self._count[0] + self._count[1]

    def _other_workers(self) -> bool:
        now = time.time()
        return any(k != f"worker:{self.worker}" and isinstance(v, float)
                   and now - v < LOST_AFTER for k, v in self.study.user_attrs.items()
                   if k.startswith("worker:"))

    def _storage_count(self) -> int:
        storage, sid = self.study._storage, self.study._study_id
        counts = count_trials(storage, sid)
        n_failed = counts.get(TrialState.FAIL, 0)
        if n_failed != self._failed[0]:  # failed trials read again only when more failed
            failed = storage.get_all_trials(sid, deepcopy=False, states=(TrialState.FAIL,))
            self._failed = (n_failed, sum(t.user_attrs.get("reason") in UNCOUNTED
                                          for t in failed))
        return sum(counts.values()) - self._failed[1]

    def _surplus(self, trial: optuna.Trial) -> bool:
        """Whether ``trial`` (just asked) lies beyond the budget: counted trials numbered
        before it already fill it (exact under concurrent asks: numbers are unique)."""
        if self.counted() <= self.trials:
            return False
        before = [t for t in self.study.get_trials(deepcopy=False) if t.number < trial.number
                  and (t.state != TrialState.FAIL or t.user_attrs.get("reason") not in UNCOUNTED)]
        return len(before) >= self.trials

    def ask(self) -> tuple[optuna.Trial, Config] | None:
        """A new trial and its configuration, or None when the budget is spent."""
        while self.counted() < self.trials:
            trial = self.study.ask()
            trial.set_user_attr("config", {"worker": self.worker})  # at once: see recover_lost
            self._count = (self._count[0], self._count[1] + 1, self._count[2])
            if self._surplus(trial):
                self._tell(trial, TrialState.FAIL, reason="surplus")
                return None
            try:
                config = suggest(trial, self.space, steps=self.steps)
            except ValueError as err:
                self._tell(trial, TrialState.FAIL, reason=f"invalid configuration: {err}")
                continue
            trial.set_user_attr("config", {"worker": self.worker, "optimizer": config.optimizer,
                                           "hparams": config.hparams,
                                           "schedule": config.schedule})
            self.heartbeat()
            return trial, config
        return None

    def heartbeat(self, force: bool = False) -> None:
        now = time.time()
        if force or now - self._beat >= BEAT_EVERY:
            self.study.set_user_attr(f"worker:{self.worker}", now)
            self._beat = now

    def _tell(self, trial: optuna.Trial, state: TrialState, value: float | None = None,
              reason: str | None = None, twin_of: int | None = None,
              run: dict | None = None) -> None:
        if reason is not None:
            trial.set_user_attr("reason", reason)
        if run is not None or twin_of is not None:
            trial.set_user_attr("run", {**(run or {}), **({} if twin_of is None else
                                                           {"duplicate_of": twin_of})})
        self.study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
        self.heartbeat()
        if reason in UNCOUNTED:
            return
        self.told[state.name.lower()] += 1
        if state == TrialState.COMPLETE and not value >= self.best_value:
            self.best_value = value
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(done=self.told["complete"], pruned=self.told["pruned"],
                                  failed=self.told["fail"], best=f"{self.best_value:.4g}",
                                  refresh=False)

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> None:
        recover_lost(self.study)
        self.heartbeat(force=True)
        try:
            while True:
                batch = self._next_batch()
                if not batch:
                    break
                self._train(batch)
        finally:
            if self._bar is not None:
                self._bar.close()

    def _next(self, structure: tuple | None) -> tuple[optuna.Trial, Config] | None:
        """The next trial to train (of ``structure``, if given): a waiting one, else newly
        asked ones until one fits (the others wait for their own population); twins of a
        running trial are set aside."""
        for s in ([structure] if structure is not None else list(self.waiting)):
            if self.waiting.get(s):
                return self.waiting[s].pop(0)
        for _ in range(max(1, self.P)):
            asked = self.ask()
            if asked is None:
                return None
            trial, config = asked
            if self.running[_key(config)]:
                self.twins[_key(config)].append(trial)
                continue
            if structure is None or config.structure == structure:
                return asked
            self.waiting[config.structure].append(asked)
        return None

    def _next_batch(self) -> list[_Slot]:
        first = self._next(None)
        if first is None:
            return []
        batch = [_Slot(*first)]
        self.running[batch[0].key] += 1
        while len(batch) < self.P:
            more = self._next(first[1].structure)
            if more is None:
                break
            batch.append(_Slot(*more))
            self.running[batch[-1].key] += 1
        return batch

    def _train(self, slots: list[_Slot | None]) -> None:
        optimizer = slots[0].config.optimizer
        try:
            pop = Population(self.task, optimizer, [s.config.hparams for s in slots],
                             seeds=[self.seed] * len(slots), device=self.device,
                             engine="loop" if loop_only(optimizer) else "auto")
        except (ValueError, TypeError, RuntimeError) as err:
            for s in slots:
                self._finish(s, TrialState.FAIL, reason=f"could not build the population: {err}")
            return
        note = f"{optimizer}: {pop.note}"
        if note not in self.notes:
            self.notes.append(note)
        member_schedules = _PerMember(len(slots))
        self._step = 0  # population steps taken: when each trial entered and left its slot
        for i, s in enumerate(slots):
            member_schedules.members[i] = _schedule(s.config)
            s.slot = (i, 0)
        if any(m is not None for m in member_schedules.members):
            pop.schedules = {"lr": member_schedules}
        while any(s is not None for s in slots):
            pop.step()
            self._step += 1
            done = pop.steps_done.tolist()
            due = [i for i, s in enumerate(slots) if s is not None and (
                pop.members[i].status == "diverged" or done[i] % self.eval_every == 0
                or done[i] >= self.steps)]
            live = [i for i in due if pop.members[i].status != "diverged"]
            values = dict(zip(live, pop.evaluate(live)))
            for i in due:
                if self._judge(pop, i, slots[i], values.get(i, math.nan), int(done[i])):
                    slots[i] = self._refill(pop, i, slots[i].config.structure, member_schedules)
        self.evaluations += pop.evaluations

    def _judge(self, pop: Population, i: int, slot: _Slot, value: float, step: int) -> bool:
        """Report member ``i``'s validation loss; True when its trial has ended."""
        member = pop.members[i]
        if member.status == "diverged" or not math.isfinite(value):
            self._finish(slot, TrialState.FAIL, reason=member.reason or
                         f"validation loss is {value} after {step} steps", step=step)
            return True
        slot.trial.report(value, step)
        if step >= self.steps:
            self._finish(slot, TrialState.COMPLETE, value, step=step)
            return True
        if slot.trial.should_prune():
            self._finish(slot, TrialState.PRUNED, step=step)
            return True
        return False

    def _finish(self, slot: _Slot, state: TrialState, value: float | None = None,
                reason: str | None = None, step: int = 0) -> None:
        run = {"slot": slot.slot[0], "entered": slot.slot[1], "left": self._step,
               "evaluations": step * self.task.grad_evals_per_step}
        self._tell(slot.trial, state, value, reason, run=run)
        key = slot.key
        self.running[key] -= 1
        for twin in self.twins.pop(key, []) if not self.running[key] else []:
            self._tell(twin, state, value, reason, twin_of=slot.trial.number)

    def _refill(self, pop: Population, i: int, structure: tuple,
                member_schedules: _PerMember) -> _Slot | None:
        nxt = self._next(structure)
        if nxt is None:
            member_schedules.members[i] = None
            pop.retire(i)
            return None
        slot = _Slot(*nxt)
        self.running[slot.key] += 1
        member_schedules.members[i] = _schedule(slot.config)
        pop.reinit(i, seed=self.seed, hparams=slot.config.hparams)
        slot.slot = (i, self._step)
        return slot


def loop_only(optimizer: str) -> bool:
    cls = optim.lookup(optimizer)
    return bool(getattr(cls, "needs_closure", False) or getattr(cls, "needs_model", False)
                or not getattr(cls, "supports_population", True))


def _schedule(config: Config) -> Callable | None:
    """The trial's lr schedule, starting from its own lr (as ``metaopt.train`` builds it)."""
    if config.schedule is None:
        return None
    drivers = schedules.drivers(config.schedule, lambda key: _lr(config))
    return drivers["lr"]


def _lr(config: Config) -> float:
    if "lr" in config.hparams:
        return float(config.hparams["lr"])
    return optim.hyperparameters(config.optimizer)["lr"].default


# -- workers that died ------------------------------------------------------------------------
def _alive(worker: str, beat: float | None, now: float) -> bool:
    host, pid, _ = (worker.split(":") + ["", "", ""])[:3]
    if host == socket.gethostname() and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
    return beat is not None and now - beat < LOST_AFTER


UNRECORDED_GRACE = 2.0  # a worker records its trial right after asking it: older = orphaned


def recover_lost(study: optuna.Study) -> list[int]:
    """Fail the trials that dead workers left running (``reason: lost``) and enqueue their
    parameters again; returns the lost trials' numbers. A running trial whose worker is not
    recorded was asked by a worker that died before its very next write (or is just asking
    it, when it is younger than ``UNRECORDED_GRACE`` seconds)."""
    beats: Mapping[str, float] = {k[len("worker:"):]: v for k, v in study.user_attrs.items()
                                  if k.startswith("worker:")}
    now, lost = time.time(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = config_of(t).get("worker")
        if worker is None:
            started = t.datetime_start.timestamp() if t.datetime_start else 0.0
            if now - started < UNRECORDED_GRACE:
                continue
        elif _alive(worker, beats.get(worker), now):
            continue
        study._storage.set_trial_user_attr(t._trial_id, "reason", "lost")
        study.tell(t.number, state=TrialState.FAIL)
        if t.params:
            study.enqueue_trial(t.params, user_attrs={"requeued_from": t.number})
        lost.append(t.number)
    return lost


def config_of(t: Any) -> dict[str, Any]:
    """What metaopt recorded of a trial's configuration (``worker``, ``optimizer``,
    ``hparams``, ``schedule``); empty for a trial metaopt did not ask."""
    return t.user_attrs.get("config") or {}


def run_of(t: Any) -> dict[str, Any]:
    """How a trial ran (``slot``, ``entered``, ``left``, ``evaluations``, ``duplicate_of``)."""
    return t.user_attrs.get("run") or {}


def best_of(study: optuna.Study) -> Best | None:
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.value is not None and math.isfinite(t.value)]
    if not done:
        return None
    t = min(done, key=lambda t: t.value)
    config = config_of(t)
    return Best(config.get("optimizer", ""), dict(config.get("hparams", {})),
                config.get("schedule"), float(t.value), t.number)
