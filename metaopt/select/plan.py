"""How a selection spends its budget: probes, successive-halving rounds, then a short tune.

Budgets count gradient evaluations (forward + backward passes). Round ``r`` trains each of its
candidates at ``lrs`` learning rates for ``steps`` steps (``steps`` is the run's length over
``ETA`` to the power of the rounds left); the best ``1/ETA`` of the candidates go on to the
next round, three times longer. What the rounds leave pays for full-length trials of a short
tune of the winner (the trials are counted from what is actually left, so the tune also gets
what the first round's edge extensions did not use). :func:`make_plan` fits the rounds to the
budget: when the whole schedule does not fit, the first round probes only the candidates
first in order (the warm start's order) and later rounds are dropped, longest last.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

ETA = 3  # keep the best third, train three times longer (Jamieson & Talwalkar 2016)
ROUNDS = 3  # steps/9, steps/3, steps
COLD_LRS = 5  # learning rates per candidate in the first round, nothing known
WARM_LRS = 3  # ... when the results store says where to look
LATER_LRS = 3  # around the best one so far, in later rounds
EXTEND = 2  # first round: learning rates added beyond the grid's edge when the best is on it
DEFAULT_RUNS = 24  # the default budget: 24 full-length trainings' worth of evaluations
MIN_TUNE_TRIALS = 3  # fewer full trials than this are not worth a tune


@dataclass(frozen=True)
class Round:
    candidates: int  # how many candidates train in this round
    lrs: int  # learning rates each
    steps: int

    def cost(self, per_step: int) -> int:
        return self.candidates * self.lrs * self.steps * per_step


@dataclass(frozen=True)
class Plan:
    rounds: tuple[Round, ...]
    tune_trials: int
    features_cost: int
    steps: int
    per_step: int

    def cost(self) -> int:
        return (self.features_cost + sum(r.cost(self.per_step) for r in self.rounds)
                + self.tune_trials * self.steps * self.per_step)


class BudgetTooSmall(ValueError):
    """The budget does not pay for one probe."""


def default_budget(steps: int, per_step: int, features_cost: int = 0) -> int:
    return DEFAULT_RUNS * steps * per_step + features_cost


def round_steps(steps: int) -> list[int]:
    """The rounds' lengths: steps/9, steps/3, steps (fewer when the run is too short)."""
    return sorted({max(1, math.ceil(steps / ETA ** (ROUNDS - 1 - r))) for r in range(ROUNDS)})


def min_budget(steps: int, per_step: int, warm: bool, features_cost: int) -> int:
    """One probe: one candidate's first round (its edge extension included)."""
    return features_cost + Round(1, (WARM_LRS if warm else COLD_LRS) + EXTEND,
                                 round_steps(steps)[0]).cost(per_step)


def make_plan(candidates: int, steps: int, per_step: int, budget: int, *, warm: bool,
              features_cost: int, tune: bool = True) -> Plan:
    """The rounds and tune trials that ``budget`` pays for (see the module docstring)."""
    if budget < min_budget(steps, per_step, warm, features_cost):
        raise BudgetTooSmall(f"a budget of {budget} gradient evaluations does not pay for one "
                             f"probe ({min_budget(steps, per_step, warm, features_cost)})")
    lengths = round_steps(steps)
    left = budget - features_cost
    first_lrs = WARM_LRS if warm else COLD_LRS
    per_candidate = Round(1, first_lrs + EXTEND, lengths[0]).cost(per_step)
    rounds = [Round(min(candidates, left // per_candidate), first_lrs, lengths[0])]
    left -= rounds[0].candidates * per_candidate  # extensions reserved; unspent: the tune's
    alive = rounds[0].candidates
    for length in lengths[1:]:
        keep = max(1, math.ceil(alive / ETA)) if length != lengths[-1] else min(alive, 2)
        while keep and Round(keep, LATER_LRS, length).cost(per_step) > left:
            keep -= 1
        if not keep:
            break
        rounds.append(Round(keep, LATER_LRS, length))
        left -= rounds[-1].cost(per_step)
        alive = keep
    trials = left // (steps * per_step) if tune and rounds[-1].steps == steps else 0
    trials = trials if trials >= MIN_TUNE_TRIALS else 0
    return Plan(tuple(rounds), int(trials), features_cost, steps, per_step)
