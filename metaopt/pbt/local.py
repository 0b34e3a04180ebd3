"""Population-based training in one process, vectorised: ``metaopt.pbt(task, ...)``.

    result = metaopt.pbt("digits_mlp", "adamw", "adamw", population=16, interval=25)
    result.best.hparams, result.best.schedule, result.best.value, result.lineage

PBT (Jaderberg et al. 2017, "Population Based Training of Neural Networks", arXiv:1711.09846)
trains a population and, every ``interval`` steps, lets the worst members take the weights,
optimizer state and hyperparameters of better ones (exploit) and perturb them (explore): one
training's time finds a hyperparameter *schedule*. Here the population is one stacked
:class:`~metaopt.population.Population`: exploit is :meth:`~Population.copy_member`, explore
:meth:`~Population.set_hparams` writing into the optimizer's ``[P]`` hyperparameter tensors,
and the policy a pure function (:func:`metaopt.pbt.policy.choose`). Members start from values
sampled from the space (seeded) and from their own initial weights and data
(``seed + i``, as in any population). A member that diverges is frozen by the population and
replaced by exploit at the next interval; nothing a member does stops the run.

With ``checkpoint``, the whole state is written atomically after every interval and a run
given the same file resumes from it, ending bit-identical to an uninterrupted run
(:mod:`metaopt.pbt.checkpoint`).
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from metaopt import tasks
from metaopt.monitor import progress_bar
from metaopt.pbt import checkpoint as ckpt
from metaopt.pbt import policy
from metaopt.pbt.lineage import Lineage, discovered
from metaopt.pbt.space import MemberSpace, member_space
from metaopt.population import MemberResult, Population
from metaopt.search.space import Space, load_space
from metaopt.search.study import loop_only

SAMPLE_TRIES = 100  # draws for a member whose schedule values make no valid schedule


@dataclass
class Best:
    """The best member at the end: ``hparams`` and ``schedule`` replay its discovered schedule
    with ``metaopt.train(task, optimizer, hparams, schedule, seed=seed)`` (``seed``: its
    ancestor's, so the replay starts from the same initial weights)."""

    optimizer: str
    hparams: dict[str, Any]
    schedule: dict[str, Any] | None
    value: float
    member: int
    seed: int


@dataclass
class PBTResult:
    """``values``/``hparams``: each member's final validation loss (``nan``: diverged) and
    values; ``lineage``: every interval's parents, values and hyperparameters;
    ``exploits``: moves applied; ``population``: the trained population itself."""

    best: Best | None
    values: list[float]
    hparams: list[dict[str, Any]]
    lineage: Lineage
    members: list[MemberResult]
    evaluations: int
    seconds: float
    steps: int
    exploits: int
    engine: str
    note: str
    notes: list[str] = field(default_factory=list)
    space: MemberSpace | None = field(default=None, repr=False)
    population: Population | None = field(default=None, repr=False, compare=False)
    checkpoint_seconds: float = 0.0


class _MemberSchedules:
    """Each member's lr schedule at its own step, ``[P]``: members explore schedule values."""

    def __init__(self, space: MemberSpace, configs: Sequence[Mapping[str, Any]], steps: int):
        self.space, self.steps = space, steps
        self.members = [space.schedule_of(c, steps) for c in configs]

    def set(self, i: int, config: Mapping[str, Any]) -> None:
        self.members[i] = self.space.schedule_of(config, self.steps)

    def __call__(self, k: torch.Tensor) -> torch.Tensor:
        return torch.tensor([float(s(int(step))) for s, step in zip(self.members, k.tolist())],
                            dtype=torch.float64)


class PBT:
    """One PBT run (Jaderberg et al. 2017): building it checks everything (and a checkpoint
    to resume), :meth:`run` trains; see the module docstring.

    Args:
        task: a Task or a built-in task's name.
        optimizer: a registry name (default: the task's default optimizer).
        space: the searched hyperparameters: a space file or name
            (``search_spaces/<name>.yaml``), an inline mapping, a loaded
            :class:`~metaopt.search.Space` (one optimizer), or None for the optimizer's
            shipped space. ``schedule``: a schedule space; each member's lr then follows its
            own schedule, whose parameters are explored too.
        population: members, trained as one stacked population; ``interval``: steps between
            exploit/explore rounds; ``steps``: the run's length (default ``task.steps``).
        quantile: truncation's bottom/top fraction, in (0, 0.5]; ``resample``: probability
            that explore draws a value afresh from the space instead of perturbing it by a
            factor from ``perturb``.
        exploit: ``truncation`` | ``tournament`` | ``none`` (False: no exploit and no explore,
            a plain population).
        seed: sampling of the initial values and the policy's draws; member ``i`` is built
            and fed from ``seed + i``.
        initial: each member's starting values (missing ones sampled).
        deterministic: make the engine's timing-based choices by rule.
        checkpoint: file written atomically after every interval; an existing one is resumed
            (``resume=False``: started over) and must come from the same configuration
            (:class:`~metaopt.pbt.checkpoint.ResumeMismatch` names the key that differs).
    """

    def __init__(self, task: Any, optimizer: str | None = None,
                 space: str | Mapping[str, Any] | Space | None = None, *,
                 schedule: str | Mapping[str, Any] | None = None, population: int = 16,
                 interval: int = 25, steps: int | None = None, quantile: float = 0.25,
                 resample: float = 0.25, perturb: Sequence[float] = policy.PERTURB,
                 exploit: str | bool = "truncation", seed: int = 0,
                 initial: Sequence[Mapping[str, Any]] | None = None, device: str = "cpu",
                 engine: str = "auto", deterministic: bool = False,
                 checkpoint: str | Path | None = None, resume: bool = True,
                 progress: bool | None = None) -> None:
        self.task = tasks.get(task) if isinstance(task, str) else task
        if not isinstance(space, Space):
            space = load_space(space, optimizer or self.task.default_optimizer,
                               schedule=schedule)
        self.space = member_space(space)
        self.P, self.interval = _positive("population", population), _positive("interval",
                                                                               interval)
        self.steps = _positive("steps", steps or self.task.steps)
        self.exploit = {True: "truncation", False: "none", None: "none"}.get(exploit, exploit)
        if self.exploit not in (*policy.EXPLOITS, "none"):
            raise ValueError(f"exploit must be truncation, tournament or none, got {exploit!r}")
        self.quantile, self.resample = float(quantile), float(resample)
        self.perturb = tuple(float(f) for f in perturb)
        policy.check(quantile=self.quantile, resample=self.resample, perturb=self.perturb)
        self.seed, self.device, self.progress = int(seed), device, progress
        self.deterministic = bool(deterministic)
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.notes = list(self.space.notes)
        saved = None
        if self.checkpoint is not None and resume and self.checkpoint.exists():
            saved = ckpt.load(self.checkpoint)
            ckpt.check_fingerprint(saved["fingerprint"], self.fingerprint())
        self.rng = random.Random(self.seed)
        if saved is not None:
            self.initial = [dict(c) for c in saved["initial"]]
        else:
            self.initial = self._initial(initial)
        self.configs = [dict(c) for c in self.initial]
        self.pop = self._build(engine if saved is None else saved["population"]["mode"])
        self.schedules = None
        if self.space.schedule is not None:
            self.schedules = _MemberSchedules(self.space, self.configs, self.steps)
            self.pop.schedules = {"lr": self.schedules}
        self.lineage = Lineage(self.P)
        self.step, self.drawn, self.exploits, self.seconds_before = 0, [0] * self.P, 0, 0.0
        self.checkpoint_seconds = 0.0  # spent writing checkpoints (this process and before)
        if saved is not None:
            self._restore(saved)
        else:
            self.lineage.open(0, min(self.interval, self.steps), self.configs, [None] * self.P)

    # -- building -----------------------------------------------------------------------
    def fingerprint(self) -> dict[str, str]:
        """What a resumed run must share with the run that wrote the checkpoint, by key."""
        return {"task": self.task.name, "optimizer": self.space.optimizer,
                "space": repr(sorted(self.space.params.items())),
                "options": repr(sorted(self.space.options.items())),
                "schedule": repr(self.space.schedule), "population": str(self.P),
                "interval": str(self.interval), "steps": str(self.steps),
                "quantile": repr(self.quantile), "resample": repr(self.resample),
                "perturb": repr(self.perturb), "exploit": self.exploit, "seed": str(self.seed),
                "deterministic": str(self.deterministic)}

    def _initial(self, given: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
        return initial_values(self.space, self.P, self.steps, self.rng, given)

    def _valid(self, config: Mapping[str, Any]) -> bool:
        return valid(self.space, config, self.steps)

    def _build(self, engine: str) -> Population:
        forward = ckpt.forward_rule(self.task, self.seed, self.device) \
            if self.deterministic else "auto"
        if engine == "auto" and loop_only(self.space.optimizer):
            engine = "loop"
        pop = Population(self.task, self.space.optimizer,
                         [self.space.optimizer_hparams(c) for c in self.configs],
                         seed=self.seed, device=self.device, engine=engine, forward=forward)
        if self.deterministic:
            ckpt.fix_choices(pop)
        return pop

    # -- training -----------------------------------------------------------------------
    def run(self) -> PBTResult:
        """Train to ``steps`` (from the checkpoint's interval when resuming)."""
        torch.set_flush_denormal(True)
        started = time.perf_counter()
        bar = progress_bar(self.progress, self.steps, f"pbt {self.task.name}: {self.P} members",
                           unit="step", initial=self.step)
        try:
            while self.step < self.steps:
                self._interval(bar)
                self.seconds_before += time.perf_counter() - started
                started = time.perf_counter()
                if self.checkpoint is not None:
                    writing = time.perf_counter()
                    self.save()
                    self.checkpoint_seconds += time.perf_counter() - writing
        finally:
            if bar is not None:
                bar.close()
        self.seconds_before += time.perf_counter() - started
        return self.result()

    def _interval(self, bar: Any) -> None:
        current = self.lineage.intervals[-1]
        for _ in range(current.end - self.step):
            was = self.pop.active.clone()
            self.pop.step()
            # a member the stacked engine froze was re-initialised: its iterator starts over
            reset = (was & ~self.pop.active).tolist() if self.pop.engine.mode == "stacked" \
                else [False] * self.P
            self.drawn = [0 if r else n + 1 for n, r in zip(self.drawn, reset)]
            if bar is not None:
                bar.update(1)
        self.step = current.end
        values = self.pop.evaluate()
        self.lineage.close(values)
        if bar is not None:
            bar.set_postfix(_postfix(values), refresh=False)
        if self.step >= self.steps:
            return
        parents: list[int | None] = list(range(self.P))
        if self.exploit != "none":
            for move in policy.choose(values, self.configs, self.space.params, rng=self.rng,
                                      quantile=self.quantile, resample=self.resample,
                                      perturb=self.perturb, exploit=self.exploit):
                self.apply(move)
                parents[move.dst] = move.src
        self.lineage.open(self.step, min(self.step + self.interval, self.steps), self.configs,
                          parents)

    def apply(self, move: policy.Move) -> None:
        """Exploit then explore: ``dst`` takes ``src``'s weights, optimizer state and
        hyperparameters, then ``move.hparams`` (``src``'s own schedule values where the new
        ones make no valid schedule). A diverged ``dst`` is brought back first."""
        dst, src = move.dst, move.src
        if not bool(self.pop.active[dst]):
            self.pop.reinit(dst)
            self.drawn[dst] = 0
        self.pop.copy_member(src, dst)
        config = dict(move.hparams)
        if not self._valid(config):
            config.update({k: v for k, v in self.configs[src].items()
                           if k.startswith("schedule.")})
        self.pop.set_hparams(dst, self.space.tensor_hparams(config))
        self.pop.first_loss[dst] = self.pop.first_loss[src]  # the divergence reference
        self.configs[dst] = config
        if self.schedules is not None:
            self.schedules.set(dst, config)
        self.exploits += 1

    # -- checkpoints ----------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The run's state for :func:`metaopt.pbt.checkpoint.save`."""
        return {"fingerprint": self.fingerprint(), "initial": self.initial,
                "configs": self.configs, "step": self.step, "lineage": self.lineage.as_dict(),
                "rng": self.rng.getstate(), "torch_rng": torch.get_rng_state(),
                "population": ckpt.population_state(self.pop, self.drawn),
                "exploits": self.exploits, "seconds": self.seconds_before,
                "checkpoint_seconds": self.checkpoint_seconds}

    def save(self) -> Path:
        assert self.checkpoint is not None
        return ckpt.save(self.checkpoint, self.state())

    def _restore(self, saved: Mapping[str, Any]) -> None:
        ckpt.restore_population(self.pop, saved["population"])
        self.configs = [dict(c) for c in saved["configs"]]
        if self.schedules is not None:
            for i, config in enumerate(self.configs):
                self.schedules.set(i, config)
        self.step, self.exploits = int(saved["step"]), int(saved["exploits"])
        self.lineage = Lineage.from_dict(saved["lineage"])
        self.drawn = list(saved["population"]["drawn"])
        self.seconds_before = float(saved["seconds"])
        self.checkpoint_seconds = float(saved.get("checkpoint_seconds", 0.0))
        version, internal, gauss = saved["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        torch.set_rng_state(saved["torch_rng"])

    # -- the outcome ----------------------------------------------------------------------
    def result(self) -> PBTResult:
        last = self.lineage.intervals[-1]
        values = list(last.values) if last.values else self.pop.evaluate()
        for m, value in zip(self.pop.members, values):
            if m.status == "ok":
                m.value = value
        finite = [i for i, v in enumerate(values) if math.isfinite(v)]
        best = None
        if finite:
            i = min(finite, key=lambda j: (values[j], j))
            hparams, schedule = discovered(self.lineage, i, self.space, self.steps)
            root = self.lineage.ancestry(i)[0]
            best = Best(self.space.optimizer, hparams, schedule, values[i], i,
                        self.pop.seeds[root])
        return PBTResult(best, values, [dict(c) for c in self.configs], self.lineage,
                         self.pop.members, self.pop.evaluations, self.seconds_before,
                         self.step, self.exploits, self.pop.engine.mode, self.pop.note,
                         self.notes, self.space, self.pop, self.checkpoint_seconds)


def valid(space: MemberSpace, config: Mapping[str, Any], steps: int) -> bool:
    """Whether ``config``'s schedule values make a valid schedule (always, without one)."""
    try:
        space.schedule_of(config, steps)
    except ValueError:
        return False
    return True


def initial_values(space: MemberSpace, population: int, steps: int, rng: random.Random,
                   given: Sequence[Mapping[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Each member's starting values, drawn from ``space`` with ``rng`` (``given`` ones kept;
    a draw whose schedule values make no valid schedule is drawn again)."""
    if given is not None and len(given) != population:
        raise ValueError(f"initial: {len(given)} members' values for population={population}")
    out = []
    for i in range(population):
        for _ in range(SAMPLE_TRIES):
            config = {**policy.sample(space.params, rng),
                      **(dict(given[i]) if given is not None else {})}
            if valid(space, config, steps):
                break
        else:
            raise ValueError(f"member {i}: no valid schedule in {SAMPLE_TRIES} draws")
        out.append(config)
    return out


def explore_move(space: MemberSpace, config: Mapping[str, Any], steps: int,
                 rng: random.Random, *, resample: float, perturb: Sequence[float]
                 ) -> dict[str, Any]:
    """Explore from a source member's values (:func:`metaopt.pbt.policy.explore`), keeping
    the source's own schedule values where the new ones make no valid schedule."""
    new = policy.explore(config, space.params, rng, resample=resample, perturb=perturb)
    if not valid(space, new, steps):
        new.update({k: v for k, v in config.items() if k.startswith("schedule.")})
    return new


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _postfix(values: Sequence[float]) -> dict[str, Any]:
    finite = [v for v in values if math.isfinite(v)]
    return {"best": f"{min(finite):.4g}" if finite else "nan",
            "median": f"{statistics.median(finite):.4g}" if finite else "nan",
            "diverged": len(values) - len(finite)}


def run_pbt(task: Any, *args: Any, backend: str = "local", **kwargs: Any) -> PBTResult:
    """Population-based training of ``task``: ``PBT(task, ...).run()`` (see :class:`PBT` for
    the arguments and the module docstring for the method); ``backend="ray"``: through Ray
    Tune, ``RayPBT(task, ...).run()`` (:mod:`metaopt.pbt.ray_tune`: ``address``,
    ``storage_path``, ``cpus_per_member``)."""
    if backend == "ray":
        from metaopt.pbt.ray_tune import RayPBT

        return RayPBT(task, *args, **kwargs).run()
    if backend != "local":
        raise ValueError(f"backend must be local or ray, got {backend!r}")
    return PBT(task, *args, **kwargs).run()

