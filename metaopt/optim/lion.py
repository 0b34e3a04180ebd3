"""Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms").

The update is the sign of an interpolation between the momentum and the gradient, so every
coordinate moves by exactly lr: it needs a smaller lr (3-10x) and a larger weight decay than
AdamW, and keeps one buffer instead of two.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from metaopt.optim.adam import BETAS
from metaopt.optim.hyperparams import Hyper
from metaopt.optim.members import per_member
from metaopt.optim.optimizer import MetaOptimizer, State


def init(param: Tensor, hp: Mapping[str, Tensor], opts: Mapping[str, Any]) -> State:
    return {"exp_avg": torch.zeros_like(param, memory_format=torch.preserve_format)}


def rule(params: list[Tensor], grads: list[Tensor], states: list[State],
         hp: Mapping[str, Tensor], opts: Mapping[str, Any]) -> None:
    """u = sign(β1 m + (1-β1) g); p ← p(1 - lr·wd) - lr·u; m ← β2 m + (1-β2) g."""
    lr, beta1, beta2 = hp["lr"], hp["beta1"], hp["beta2"]
    for p, g, s in zip(params, grads, states):
        exp_avg = s["exp_avg"]
        update = exp_avg.lerp(g, per_member(1 - beta1, p)).sign_()
        p.mul_(per_member(1 - lr * hp["weight_decay"], p))
        p.sub_(per_member(lr, p) * update)
        exp_avg.lerp_(g, per_member(1 - beta2, p))


class Lion(MetaOptimizer):
    """Lion with the authors' defaults (lr=1e-4, betas=(0.9, 0.99), decoupled weight decay)."""

    hypers = (Hyper("lr"), BETAS, Hyper("weight_decay"))
    init = staticmethod(init)
    rule = staticmethod(rule)

    def __init__(self, params, lr: float | Tensor = 1e-4,
                 betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.99),
                 weight_decay: float | Tensor = 0.0, *, maximize: bool = False,
                 population: int | None = None) -> None:
        defaults = dict(lr=lr, betas=betas, weight_decay=weight_decay, maximize=maximize)
        super().__init__(params, defaults, population=population)
