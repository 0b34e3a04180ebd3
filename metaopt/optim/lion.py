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
from metaopt.optim.elementwise import nonzero, per_parameter
from metaopt.optim.hyperparams import Hyper
from metaopt.optim.optimizer import MetaOptimizer, State


def init(param: Tensor, hp: Mapping[str, Tensor], opts: Mapping[str, Any]) -> State:
    return {"exp_avg": torch.zeros_like(param, memory_format=torch.preserve_format)}


def coefficients(hp: Mapping[str, Tensor], counters: dict, opts: Mapping[str, Any]) -> dict:
    return {"neg_lr": -hp["lr"], "decay": 1 - hp["lr"] * hp["weight_decay"],
            "decays": nonzero(hp["weight_decay"]),
            "one_minus_beta1": 1 - hp["beta1"], "one_minus_beta2": 1 - hp["beta2"]}


def update(p: Tensor, g: Tensor, s: State, c: Mapping[str, Tensor],
           opts: Mapping[str, Any]) -> None:
    """u = sign(β1 m + (1-β1) g); p ← p(1 - lr·wd) - lr·u; m ← β2 m + (1-β2) g."""
    exp_avg = s["exp_avg"]
    direction = torch.lerp(exp_avg, g, c["one_minus_beta1"]).sign_()
    if c["decays"]:
        p.mul_(c["decay"])
    p.addcmul_(direction, c["neg_lr"])
    exp_avg.lerp_(g, c["one_minus_beta2"])


class Lion(MetaOptimizer):
    """Lion with the authors' defaults (lr=1e-4, betas=(0.9, 0.99), decoupled weight decay)."""

    hypers = (Hyper("lr"), BETAS, Hyper("weight_decay"))
    init = staticmethod(init)
    coefficients = staticmethod(coefficients)
    update = staticmethod(update)
    rule = staticmethod(per_parameter(coefficients, update))
    flat_ok = True

    def __init__(self, params, lr: float | Tensor = 1e-4,
                 betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.99),
                 weight_decay: float | Tensor = 0.0, *, maximize: bool = False,
                 population: int | None = None, backend: str = "auto") -> None:
        defaults = dict(lr=lr, betas=betas, weight_decay=weight_decay, maximize=maximize)
        super().__init__(params, defaults, population=population, backend=backend)
