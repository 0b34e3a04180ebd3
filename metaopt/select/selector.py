"""``metaopt.select(task, budget=None, candidates=None)``: the best optimizer for a task.

    choice = metaopt.select("digits_mlp")
    print(choice.ranking)                     # candidate, lr, validation loss, evaluations
    choice.best.optimizer, choice.best.hparams, choice.best.schedule, choice.best.value

The steps (budget accounting in :mod:`metaopt.select.plan`):

1. measure the task's meta-features and warm-start from the most similar tasks in the results
   store (:mod:`metaopt.select.store`): they order the candidates and centre each one's
   learning-rate probes;
2. probe: each candidate trains a few learning rates together, as one stacked population,
   for a ninth of the run;
3. successive halving: the best third go on, three times longer, their learning rates refined
   around the best so far, until two train the full run;
4. tune: what is left of the budget pays for full-length trials of the winner through the
   search layer (its shipped search space, the learning rate narrowed around the best probe).

Every training is seeded alike (the same initialisation and batches), so results compare
configurations, not luck. With ``journal`` (a file) every finished unit of work is recorded
and a rerun skips it: a killed selection resumes where it stopped.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from metaopt import runs, tasks
from metaopt.monitor import progress_bar
from metaopt.population import Population
from metaopt.report import format_value
from metaopt.select import features as meta
from metaopt.select import plan as plans
from metaopt.select import store as stores
from metaopt.select.portfolio import Candidate, check_pairing, default_portfolio, lr_grid, resolve

REFINE = (0.3, 0.25)  # decades either side of the best lr in rounds 2 and 3


@dataclass
class Probe:
    """One training of a candidate at one learning rate in one round."""

    candidate: str
    lr: float
    round: int
    steps: int
    value: float
    status: str = "ok"
    reason: str | None = None


@dataclass
class Entry:
    """A candidate's standing: its best configuration at the furthest round it reached."""

    candidate: str
    optimizer: str
    hparams: dict[str, Any]
    schedule: dict[str, Any] | None
    value: float
    evaluations: int
    rung: int
    steps: int
    status: str = "ok"
    reason: str | None = None


class Ranking(list):
    """The entries best first; ``str()`` is a table."""

    def __str__(self) -> str:
        rows = ["rank  candidate            lr          val loss    round (steps)  evaluations",
                "----  -------------------  ----------  ----------  -------------  -----------"]
        for i, e in enumerate(self, start=1):
            lr = format_value(e.hparams.get("lr")) if "lr" in e.hparams else "-"
            value = format_value(e.value) if e.status == "ok" else e.status
            rows.append(f"{i:<4}  {e.candidate:<19}  {lr:<10}  {value:<10}  "
                        f"{e.rung + 1} ({e.steps}){'':<7}  {e.evaluations:>11}"
                        + (f"  {e.reason}" if e.reason else ""))
        return "\n".join(rows)


@dataclass
class Best:
    optimizer: str
    hparams: dict[str, Any]
    schedule: dict[str, Any] | None
    value: float
    candidate: str


@dataclass
class Selection:
    task: str
    ranking: Ranking
    best: Best | None
    evaluations: int
    budget: int
    plan: plans.Plan
    probes: list[Probe]
    features: dict[str, float]
    warm_start: list[tuple[str, float]]  # (earlier task, distance) the order came from
    order: list[str]
    seconds: float
    tune: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    def experiment(self, name: str, steps: int, seed: int) -> dict[str, Any]:
        """A ``metaopt train`` experiment reproducing the best configuration."""
        train = {"optimizer": self.best.optimizer, "hparams": self.best.hparams}
        if self.best.schedule is not None:
            train["schedule"] = self.best.schedule
        return {"name": name, "task": self.task, "steps": steps, "seed": seed, "train": train}


class Journal:
    """Finished units of work by key, in a JSON file rewritten atomically after each (or only
    in memory without a path)."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path is not None else None
        self.data: dict[str, Any] = {}
        if self.path is not None and self.path.exists():
            self.data = json.loads(self.path.read_text())

    def get(self, key: str) -> Any:
        return self.data.get(key)

    def put(self, key: str, value: Any) -> Any:
        self.data[key] = runs.plain(value)
        if self.path is not None:
            runs.write_json(self.path, self.data)
        return value


class SelectionMismatch(ValueError):
    """A resumed selection was started with another ``key``."""

    def __init__(self, key: str, was: Any, now: Any) -> None:
        super().__init__(f"the selection was started with another {key} ({was!r}); this run "
                         f"has {now!r}: use another --out to start anew")
        self.key = key


def candidates_of(names: Sequence[str | Candidate] | None) -> list[Candidate]:
    """Candidates by name (see :func:`metaopt.select.portfolio.resolve`), or the default
    portfolio; ValueError for an unknown name or a schedule-free one given a schedule."""
    found = default_portfolio() if names is None else [
        c if isinstance(c, Candidate) else resolve(c) for c in names]
    if not found:
        raise ValueError("no candidates to select from")
    if len({c.name for c in found}) != len(found):
        raise ValueError("each candidate once")
    for c in found:
        check_pairing(c)
    return found


def select(task: Any, budget: int | None = None,
           candidates: Sequence[str | Candidate] | None = None, *, steps: int | None = None,
           seed: int = 0, store: str | Path | list | bool | None = None,
           exclude: Sequence[str] = (), tune: bool = True, device: str = "cpu",
           progress: bool | None = None, journal: str | Path | None = None,
           storage: Any = None) -> Selection:
    """Choose the best (optimizer, hyperparameters, schedule) for ``task`` within ``budget``.

    Args:
        task: a Task or a built-in task's name.
        budget: gradient evaluations to spend in all (features, probes, rounds, tune); default
            :data:`~metaopt.select.plan.DEFAULT_RUNS` (24) full-length trainings' worth.
        candidates: names (``adam``, ``sgd_momentum``, ``lstm``, ``prodigy``, any registry
            optimizer) or :class:`Candidate` objects; default the portfolio of
            :mod:`metaopt.select.portfolio`.
        steps: the run length candidates are judged at (default ``task.steps``).
        store: the results store folder, a list of records, or False for no warm start
            (default: the shipped store); ``exclude``: tasks to leave out of it.
        tune: spend what the rounds leave on a short tune of the winner.
        journal: a JSON file recording finished work, so the same call resumes.
        storage: the tune's Optuna storage (default in memory).
    """
    return Selector(task, budget, candidates, steps=steps, seed=seed, store=store,
                    exclude=exclude, tune=tune, device=device, progress=progress,
                    journal=journal, storage=storage).run()


class Selector:
    def __init__(self, task: Any, budget: int | None, candidates: Any, *, steps: int | None,
                 seed: int, store: Any, exclude: Sequence[str], tune: bool, device: str,
                 progress: bool | None, journal: Any, storage: Any) -> None:
        self.task = tasks.get(task) if isinstance(task, str) else task
        self.candidates = {c.name: c for c in candidates_of(candidates)}
        self.steps = int(steps or self.task.steps)
        self.per_step = int(self.task.grad_evals_per_step)
        self.seed, self.device, self.tune_on, self.storage = seed, device, tune, storage
        self.records = self._records(store, tuple(exclude))
        self.budget = int(budget) if budget is not None else plans.default_budget(
            self.steps, self.per_step, meta.COST)
        if self.budget <= 0:
            raise plans.BudgetTooSmall(f"budget must be a positive number of gradient "
                                       f"evaluations, got {self.budget}")
        plans.make_plan(1, self.steps, self.per_step, self.budget,
                        warm=bool(self.records), features_cost=meta.COST)  # fails early
        self.journal = Journal(journal)
        self.fingerprint = {"task": self.task.name, "candidates": list(self.candidates),
                            "budget": self.budget, "steps": self.steps, "seed": seed}
        self.check_resume()  # before any work, and before anything is written
        self.progress = progress
        self.spent = 0
        self.probes: list[Probe] = []
        self.notes: list[str] = []

    def _records(self, store: Any, exclude: tuple[str, ...]) -> list[stores.Record]:
        if store is False:
            return []
        if isinstance(store, list):
            return [r for r in store if r.task not in exclude]
        return stores.load(store, exclude=exclude)

    def check_resume(self) -> None:
        """SelectionMismatch when the journal was started with another task, candidates,
        budget, steps or seed."""
        saved = self.journal.get("fingerprint")
        for key, value in runs.plain(self.fingerprint).items():
            if saved is not None and saved.get(key) != value:
                raise SelectionMismatch(key, saved.get(key), value)

    # -- the run ----------------------------------------------------------------------------
    def run(self) -> Selection:
        started = time.perf_counter()
        torch.set_flush_denormal(True)
        if self.journal.get("fingerprint") is None:
            self.journal.put("fingerprint", self.fingerprint)
        self.bar = progress_bar(self.progress, self.budget, f"select {self.task.name}")
        features = self._features()
        order, centres, sources = self._warm_start(features)
        plan = plans.make_plan(len(order), self.steps, self.per_step, self.budget,
                               warm=bool(sources), features_cost=meta.COST, tune=self.tune_on)
        standings = self._rounds(plan, order, centres)
        trials = (self.budget - self.spent) // (self.steps * self.per_step)
        tune = (self._tune(trials, standings) if self.tune_on and trials >= plans.MIN_TUNE_TRIALS
                else None)
        ranking = self._ranking(standings, order, tune)
        if self.bar is not None:
            self.bar.close()
        best = self._best(ranking)
        return Selection(self.task.name, ranking, best, self.spent, self.budget, plan,
                         self.probes, features, sources, order,
                         time.perf_counter() - started, tune, self.notes)

    def _charge(self, evaluations: int) -> None:
        self.spent += int(evaluations)
        if self.bar is not None:
            self.bar.update(int(evaluations))

    def _features(self) -> dict[str, float]:
        saved = self.journal.get("features")
        if saved is None:
            saved = self.journal.put("features", meta.measure(self.task, self.seed))
        self._charge(meta.COST)
        return {k: math.nan if v is None else float(v) for k, v in saved.items()}

    def _warm_start(self, features: dict[str, float]
                    ) -> tuple[list[str], dict[str, float], list[tuple[str, float]]]:
        names = list(self.candidates)
        warm = stores.warm_start(features, names, self.records) if self.records else None
        if warm is None:
            return names, {n: self.candidates[n].lr for n in names}, []
        centres = {n: warm.lrs.get(n, self.candidates[n].lr) for n in names}
        return warm.order, centres, warm.sources

    # -- probes and halving -----------------------------------------------------------------
    def _rounds(self, plan: plans.Plan, order: list[str], centres: dict[str, float]
                ) -> dict[str, list[Probe]]:
        """Every round of the plan; returns each probed candidate's probes of its last round."""
        standings: dict[str, list[Probe]] = {}
        alive = order[:plan.rounds[0].candidates]
        for r, rnd in enumerate(plan.rounds):
            for name in alive[:rnd.candidates]:
                lrs = self._lrs(r, rnd, name, centres, standings)
                standings[name] = self._probe(self.candidates[name], lrs, rnd.steps, r)
                if r == 0:
                    standings[name] += self._extend(self.candidates[name], standings[name],
                                                    rnd.steps)
            ranked = sorted((n for n in alive[:rnd.candidates] if _best(standings[n])),
                            key=lambda n: _best(standings[n]).value)
            alive = ranked
        return standings

    def _lrs(self, r: int, rnd: plans.Round, name: str, centres: dict[str, float],
             standings: dict[str, list[Probe]]) -> list[float]:
        c = self.candidates[name]
        if r == 0:
            spread = c.spread if rnd.lrs == plans.COLD_LRS else c.spread / 2
            return lr_grid(centres[name], rnd.lrs, spread)
        return lr_grid(_best(standings[name]).lr, rnd.lrs, REFINE[min(r, 2) - 1])

    def _extend(self, c: Candidate, probes: list[Probe], steps: int) -> list[Probe]:
        """When the best learning rate is the grid's highest or lowest, probe
        :data:`~metaopt.select.plan.EXTEND` more beyond that edge, at the grid's spacing."""
        best = _best(probes)
        lrs = sorted(p.lr for p in probes)
        if best is None or len(lrs) < 2 or best.lr not in (lrs[0], lrs[-1]):
            return []
        ratio = lrs[1] / lrs[0] if best.lr == lrs[-1] else lrs[0] / lrs[1]
        beyond = [best.lr * ratio ** (i + 1) for i in range(plans.EXTEND)]
        return self._probe(c, beyond, steps, 0)

    def _probe(self, c: Candidate, lrs: list[float], steps: int, r: int) -> list[Probe]:
        """Train ``c`` at each of ``lrs`` for ``steps`` steps, together as one population."""
        key = f"probe:{c.name}:{r}:{steps}:{','.join(f'{lr:.6g}' for lr in lrs)}"
        saved = self.journal.get(key)
        if saved is None:
            saved = self.journal.put(key, self._train(c, lrs, steps))
        self._charge(len(lrs) * steps * self.per_step)
        probes = [Probe(c.name, lr, r, steps, math.nan if v is None else v, s, why)
                  for lr, (v, s, why) in zip(lrs, saved)]
        self.probes.extend(probes)
        return probes

    def _train(self, c: Candidate, lrs: list[float], steps: int) -> list[tuple]:
        from metaopt.search.study import loop_only

        hparams = [{**c.hparams, "lr": lr} for lr in lrs]
        try:
            pop = Population(self.task, c.optimizer, hparams, seeds=[self.seed] * len(lrs),
                             schedule=c.schedule_for(steps), device=self.device,
                             engine="loop" if loop_only(c.optimizer) else "auto")
            result = pop.run(steps, progress=False)
        except (ValueError, TypeError, RuntimeError) as err:
            why = f"could not train: {type(err).__name__}: {err}"
            return [(None, "failed", why)] * len(lrs)
        out = []
        for m in result.members:
            ok = m.status == "ok" and math.isfinite(m.value)
            out.append((m.value if ok else None, "ok" if ok else "diverged",
                        None if ok else m.reason or f"validation loss {m.value}"))
        return out

    # -- the tune ---------------------------------------------------------------------------
    def _tune(self, trials: int, standings: dict[str, list[Probe]]) -> dict | None:
        """A short tune of the best full-length candidate (:mod:`metaopt.select.tune`)."""
        from metaopt.select.tune import tune_winner

        full = [n for n, ps in standings.items() if ps[0].steps == self.steps and _best(ps)]
        if not full:
            return None
        name = min(full, key=lambda n: _best(standings[n]).value)
        probes = [p for p in standings[name] if p.status == "ok"]
        result = tune_winner(self.task, self.candidates[name], probes, trials,
                             steps=self.steps, seed=self.seed, storage=self.storage,
                             device=self.device)
        self._charge(trials * self.steps * self.per_step)
        self.notes.extend(result.notes)
        best = result.best
        return {"candidate": name, "trials": trials, "evaluations": result.evaluations,
                "best": None if best is None else {
                    "hparams": dict(best.hparams), "schedule": best.schedule,
                    "value": best.value}}

    # -- the ranking ------------------------------------------------------------------------
    def _ranking(self, standings: dict[str, list[Probe]], order: list[str],
                 tune: dict | None) -> Ranking:
        spent = {n: 0 for n in order}
        for p in self.probes:
            spent[p.candidate] += p.steps * self.per_step
        entries = []
        for name in order:
            c = self.candidates[name]
            if name not in standings:
                entries.append(Entry(name, c.optimizer, dict(c.hparams), None, math.nan, 0, -1,
                                     0, "not probed", "the budget did not reach it"))
                continue
            probes = standings[name]
            best = _best(probes)
            rnd = probes[0].round
            if best is None:
                why = next((p.reason for p in probes if p.reason), None)
                entries.append(Entry(name, c.optimizer, {**c.hparams, "lr": probes[0].lr},
                                     c.schedule_for(self.steps), math.nan, spent[name], rnd,
                                     probes[0].steps, probes[0].status, why))
                continue
            entry = Entry(name, c.optimizer, {**c.hparams, "lr": best.lr},
                          c.schedule_for(self.steps), best.value, spent[name], rnd, best.steps)
            tuned = (tune or {}).get("best")
            if tune and tune["candidate"] == name:
                entry.evaluations += tune["evaluations"]
                if tuned and tuned["value"] < entry.value:
                    entry.hparams, entry.schedule = tuned["hparams"], tuned["schedule"]
                    entry.value = tuned["value"]
                    entry.reason = f"tuned ({tune['trials']} trials)"
            entries.append(entry)
        status_order = {"ok": 0, "not probed": 1, "failed": 2, "diverged": 3}
        entries.sort(key=lambda e: (status_order[e.status], -e.rung,
                                    e.value if math.isfinite(e.value) else math.inf))
        return Ranking(entries)

    def _best(self, ranking: Ranking) -> Best | None:
        top = ranking[0] if ranking and ranking[0].status == "ok" else None
        if top is None:
            return None
        if top.steps < self.steps:
            self.notes.append(f"the budget did not reach a full-length run: {top.candidate} "
                              f"was judged after {top.steps} of {self.steps} steps")
        return Best(top.optimizer, dict(top.hparams), top.schedule, top.value, top.candidate)


def _best(probes: list[Probe]) -> Probe | None:
    ok = [p for p in probes if p.status == "ok"]
    return min(ok, key=lambda p: p.value) if ok else None
