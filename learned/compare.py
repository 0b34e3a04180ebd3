"""Learned optimizer vs hand-designed ones with tuned learning rates, on held-out problems.

The protocol of Andrychowicz et al. (2016) made honest: each baseline's learning rate is
chosen per horizon from ``{10^(k/2) : k = −8…0}`` on *validation* seeds, then every optimizer
runs on the same *test* seeds (same initial weights, same minibatches). All learning rates and
seeds of one baseline run together as one metaopt population (``lr`` is a ``[P]`` tensor).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from learned.optimizer import Checkpoint, LSTMOptimizer
from learned.problems import Family
from learned.rollout import Rollout, rollout
from metaopt import optim

GRID = tuple(10 ** (k / 2) for k in range(-8, 1))
VAL_SEEDS = 200_000  # learning-rate selection
TEST_SEEDS = 300_000  # the reported comparisons

Factory = Callable[[list[Tensor], Tensor, int], torch.optim.Optimizer]
BASELINES: dict[str, Factory] = {
    "sgd": lambda ps, lr, n: optim.SGD(ps, lr=lr, population=n),
    "momentum": lambda ps, lr, n: optim.SGD(ps, lr=lr, momentum=0.9, population=n),
    "rmsprop": lambda ps, lr, n: optim.RMSprop(ps, lr=lr, population=n),
    "adam": lambda ps, lr, n: optim.Adam(ps, lr=lr, population=n),
}


@dataclass
class Tuned:
    """A baseline's chosen learning rate and the validation score of every grid value."""

    name: str
    lr: float
    scores: dict[float, float]


def seeds(start: int, count: int, family: Family) -> Tensor:
    """``count`` scored seeds (each ``family.group`` problems) from ``start`` on."""
    return torch.arange(count * family.group, dtype=torch.int64) + start


def tune(family: Family, name: str, horizon: int, n_val: int = 10,
         start: int = VAL_SEEDS) -> Tuned:
    """Pick ``name``'s learning rate for ``horizon`` steps: the grid value with the lowest
    mean validation score (log10 mean final loss); diverged runs score +inf."""
    val = seeds(start, n_val, family)
    lrs = torch.tensor(GRID, dtype=torch.float32).repeat_interleave(len(val))
    run = rollout(family, val.repeat(len(GRID)),
                  lambda ps, n: BASELINES[name](ps, lrs, n), horizon)
    per_lr = run.scores(family.group).reshape(len(GRID), -1)
    scores = {}
    for lr, row in zip(GRID, per_lr):
        scores[lr] = float(row.mean()) if bool(row.isfinite().all()) else math.inf
    best = min(scores, key=lambda lr: scores[lr])
    return Tuned(name, best, scores)


def test_baseline(family: Family, tuned: Tuned, horizon: int, n_test: int) -> Rollout:
    """``tuned``'s optimizer at its chosen learning rate on the test seeds."""
    test = seeds(TEST_SEEDS, n_test, family)
    lr = torch.full((len(test),), tuned.lr)
    return rollout(family, test, lambda ps, n: BASELINES[tuned.name](ps, lr, n), horizon)


def test_learned(family: Family, checkpoint: Checkpoint, horizon: int, n_test: int,
                 backend: str = "eager") -> Rollout:
    """The learned optimizer (no tuning: ``lr=1``) on the test seeds."""
    test = seeds(TEST_SEEDS, n_test, family)
    return rollout(family, test, lambda ps, n: LSTMOptimizer(
        ps, checkpoint=checkpoint, population=n, backend=backend), horizon)
