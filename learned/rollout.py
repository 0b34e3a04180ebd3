"""Running an optimizer on ``B`` problems of a family at once: validation and benchmarks.

The optimizer is any ``torch.optim.Optimizer`` over the stacked ``[B, ...]`` parameters that
steps every problem independently: a metaopt optimizer with ``population=B`` (one
hyperparameter value per problem), or :class:`learned.LSTMOptimizer` with ``population=B``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from learned.problems import Family

MakeOptimizer = Callable[[list[Tensor], int], torch.optim.Optimizer]


@dataclass
class Rollout:
    """``final``: ``[B]`` whole-training-set losses at the end (NaN where a problem diverged);
    ``curve``: ``[steps, B]`` the minibatch loss at each step, before its update."""

    final: Tensor
    curve: Tensor

    def scores(self, group: int) -> Tensor:
        """log10 of the mean final loss of each group of ``group`` problems (the paper's
        metric for the quadratic batches of 128); NaN for a group with a divergence."""
        return torch.log10(self.final.reshape(-1, group).mean(dim=1))


def rollout(family: Family, seeds: Tensor, make_optimizer: MakeOptimizer, steps: int,
            dtype: torch.dtype = torch.float32) -> Rollout:
    """Train ``family``'s problems for ``seeds`` for ``steps`` steps with one optimizer."""
    problems = family.sample(seeds)
    params = [p.to(dtype).clone().requires_grad_(True) for p in problems.params]
    optimizer = make_optimizer(params, len(seeds))
    curve = torch.empty(steps, len(seeds))
    for t in range(steps):
        step = torch.full_like(problems.seeds, t)
        with torch.enable_grad():
            loss = family.loss(params, problems.data, problems.seeds, step)
            grads = torch.autograd.grad(loss.sum(), params)
        for p, g in zip(params, grads):
            p.grad = g
        optimizer.step()
        curve[t] = loss.detach()
    with torch.no_grad():
        final = family.final_loss([p.detach() for p in params], problems.data)
        bad = ~torch.stack([p.reshape(len(seeds), -1).isfinite().all(1) for p in params]).all(0)
        final = torch.where(bad | ~final.isfinite(), math.nan, final)
    return Rollout(final.float(), curve)
