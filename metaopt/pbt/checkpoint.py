"""A PBT population's whole state in one file, written atomically at every interval, so that the
same command resumes a killed run and ends bit-identical to an uninterrupted one (Jaderberg et
al. 2017 checkpoint every member at each exploit; here the population is one stacked state).

What the file holds (``torch.load(..., weights_only=True)`` reads it):

- the stacked parameters and buffers (or each member's module, for the loop engine), the
  optimizer's ``state_dict`` (moments, step counts, the ``[P]`` hyperparameters);
- the population's records (hyperparameters, seeds, steps done, active flags, first losses,
  each member's result so far), PBT's own (the lineage, each member's values, the policy's
  ``random.Random`` state) and torch's global RNG state;
- each member's data position: the number of batches drawn from its iterator since it was
  (re)created. Iterators keep their own position (an epoch's permutation), so, as
  :mod:`metaopt.train` does, resuming replays that many batches rather than saving a generator;
- the choices the engine made by timing: the stacked engine's forward (vmap or member by
  member, timed at its first steps) and each optimizer group's backend runner (eager, or
  compiled after its ski rental). They are saved and put back; with ``deterministic=True``
  :func:`fix_choices` makes them by rule instead, so no choice depends on a clock.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from metaopt.optim import backends
from metaopt.population import MemberResult, Population
from metaopt.population_engines import StackedEngine, build_member
from metaopt.tasks.datasets import Minibatches

VERSION = 1
FILE = "population.pt"


class CheckpointError(ValueError):
    """A file that is not a readable PBT checkpoint."""


class ResumeMismatch(ValueError):
    """The checkpoint was written by a run with another ``key`` (task, space, interval...)."""

    def __init__(self, key: str, was: Any, now: Any) -> None:
        super().__init__(f"the run was started with another {key} ({was!r}); this run has "
                         f"{now!r}: use another name or --out to start anew")
        self.key, self.was, self.now = key, was, now


# -- the file ---------------------------------------------------------------------------------
def save(path: str | os.PathLike, state: Mapping[str, Any]) -> Path:
    """Write ``state`` to ``path`` through a temporary file in the same folder and a rename:
    a reader (or a resumed run) sees the old checkpoint or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"version": VERSION, **state}, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load(path: str | os.PathLike) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path}: not a readable PBT checkpoint ({type(err).__name__}: "
                              f"{err})") from None
    if not isinstance(state, dict) or state.get("version") != VERSION:
        raise CheckpointError(f"{path}: not a PBT checkpoint of version {VERSION}")
    return state


def check_fingerprint(saved: Mapping[str, str], mine: Mapping[str, str]) -> None:
    """ResumeMismatch naming the first key whose value differs."""
    for key, value in mine.items():
        if saved.get(key) != value:
            raise ResumeMismatch(key, saved.get(key), value)


# -- the population ------------------------------------------------------------------------------
def population_state(pop: Population, drawn: Sequence[int]) -> dict[str, Any]:
    """Everything needed to continue ``pop`` exactly (see the module docstring)."""
    engine = pop.engine
    out: dict[str, Any] = {
        "mode": engine.mode, "hparams": [dict(h) for h in pop.hparams],
        "seeds": list(pop.seeds), "steps_done": pop.steps_done.clone(),
        "first_loss": pop.first_loss.clone(), "active": pop.active.clone(),
        "evaluations": pop.evaluations, "note": pop.note, "drawn": [int(n) for n in drawn],
        "members": [_member_state(m) for m in pop.members],
    }
    if isinstance(engine, StackedEngine):
        out["params"] = {k: v.detach().clone() for k, v in engine.params.items()}
        out["buffers"] = {k: v.detach().clone() for k, v in engine.buffers.items()}
        out["optimizers"] = [engine.optimizer.state_dict()]
        out["forward"] = {"forward": engine.forward, "tune": engine._tune,
                          "steps": engine._steps, "trial": dict(engine._trial),
                          "check": engine._check}
    else:
        out["modules"] = [m.state_dict() for m in engine.modules]
        out["optimizers"] = [o.state_dict() for o in engine.optimizers]
        out["engine_hparams"] = [dict(h) for h in engine.hparams]
        out["engine_active"] = list(engine.active)
    out["runners"] = [_runner_states(o) for o in _optimizers(pop)]
    return out


def restore_population(pop: Population, state: Mapping[str, Any]) -> None:
    """Put ``state`` (from :func:`population_state`) into ``pop``, a population freshly built
    the same way (same task, optimizer, initial hyperparameters, seeds and engine)."""
    engine = pop.engine
    if engine.mode != state["mode"]:
        raise CheckpointError(f"the checkpoint holds a {state['mode']} population, this one "
                              f"is {engine.mode}")
    if isinstance(engine, StackedEngine):
        with torch.no_grad():
            for name, value in state["params"].items():
                engine.params[name].copy_(value)
            for name, value in state["buffers"].items():
                engine.buffers[name].copy_(value)
        engine.optimizer.load_state_dict(state["optimizers"][0])
        forward = state["forward"]
        engine.forward, engine._tune = forward["forward"], forward["tune"]
        engine._steps, engine._trial = forward["steps"], dict(forward["trial"])
        engine._check = forward.get("check", False)
    else:
        for module, saved in zip(engine.modules, state["modules"]):
            module.load_state_dict(saved)
        for opt, saved in zip(engine.optimizers, state["optimizers"]):
            opt.load_state_dict(saved)
        engine.hparams = [dict(h) for h in state["engine_hparams"]]
        engine.active = list(state["engine_active"])
    for opt, saved in zip(_optimizers(pop), state["runners"]):
        _restore_runners(opt, saved)
    pop.hparams = [dict(h) for h in state["hparams"]]
    pop.seeds = list(state["seeds"])
    pop.steps_done.copy_(state["steps_done"])
    pop.first_loss.copy_(state["first_loss"])
    pop.active.copy_(state["active"])
    pop.evaluations, pop.note = int(state["evaluations"]), state["note"]
    pop.members = [_member(m) for m in state["members"]]
    replay(engine.iters, state["drawn"])


def _member_state(m: MemberResult) -> dict[str, Any]:
    """A member's record; its curve as one ``[n, 2]`` float64 tensor (steps are exact)."""
    out = {f.name: getattr(m, f.name) for f in dataclasses.fields(m)}
    out["hparams"] = dict(m.hparams)
    out["curve"] = torch.tensor(m.curve, dtype=torch.float64).reshape(-1, 2)
    return out


def _member(state: Mapping[str, Any]) -> MemberResult:
    curve = [(int(k), float(v)) for k, v in state["curve"].tolist()]
    return MemberResult(**{**state, "curve": curve})


def replay(iterators: Sequence[Any], counts: Sequence[int]) -> None:
    """Advance each member's data iterator by the batches it had drawn (row indices only,
    for the built-in datasets: no batch is materialised)."""
    for it, n in zip(iterators, counts):
        advance = it.next_indices if isinstance(it, Minibatches) else it.__next__
        for _ in range(int(n)):
            advance()


# -- choices made by timing --------------------------------------------------------------------
def _optimizers(pop: Population) -> list[Any]:
    engine = pop.engine
    return [engine.optimizer] if isinstance(engine, StackedEngine) else list(engine.optimizers)


def _runner_states(opt: Any) -> list[dict[str, Any] | None]:
    """Each group's backend runner (metaopt optimizers build one per group on first use)."""
    runners = getattr(opt, "_runners", None)
    if runners is None:
        return []
    out = []
    for group in opt.param_groups:
        r = runners.get(id(group))
        out.append(None if r is None else {"backend": r.backend, "mode": r.mode, "rent": r.rent,
                                           "eager_seconds": float(r.eager_seconds)})
    return out


def _restore_runners(opt: Any, saved: Sequence[Mapping[str, Any] | None]) -> None:
    runners = getattr(opt, "_runners", None)
    if runners is None:
        return
    for group, s in zip(opt.param_groups, saved):
        if s is not None:
            runner = backends.Runner(s["backend"], rent=s.get("rent", False))
            runner.mode, runner.eager_seconds = s["mode"], s["eager_seconds"]
            runners[id(group)] = runner


def forward_rule(task: Any, seed: int, device: str) -> str:
    """The stacked forward without timing: member by member for members as large as the
    engine would time (compute-bound), else ``auto``, which for such small members times
    nothing (batched where the model allows it and its losses check out, else vmap)."""
    numel = sum(p.numel() for p in build_member(task, seed, device).parameters())
    return "members" if numel >= StackedEngine.TRIAL_MIN_NUMEL else "auto"


def fix_choices(pop: Population) -> None:
    """Make the optimizers' backend choice by rule: a group left on ``auto`` runs eager (its
    ski rental would switch to compiled after a time that depends on the machine)."""
    for opt in _optimizers(pop):
        runners = getattr(opt, "_runners", None)
        if runners is None:
            continue
        for group in opt.param_groups:
            if group.get("backend") == "auto":
                runners[id(group)] = backends.Runner("eager")
