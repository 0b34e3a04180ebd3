"""Adamax (Kingma & Ba 2015, section 7.1): Adam with an infinity-norm second moment."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from metaopt.optim.adam import BETAS
from metaopt.optim.hyperparams import Hyper
from metaopt.optim.members import new_step, per_member
from metaopt.optim.optimizer import MetaOptimizer, State


def init(param: Tensor, hp: Mapping[str, Tensor], opts: Mapping[str, Any]) -> State:
    return {"step": new_step(param, opts["population"]),
            "exp_avg": torch.zeros_like(param, memory_format=torch.preserve_format),
            "exp_inf": torch.zeros_like(param, memory_format=torch.preserve_format)}


def rule(params: list[Tensor], grads: list[Tensor], states: list[State],
         hp: Mapping[str, Tensor], opts: Mapping[str, Any]) -> None:
    """m = β1 m + (1-β1) g; u = max(β2 u, |g| + eps); p -= lr/(1-β1ᵗ) · m / u."""
    beta1, beta2 = hp["beta1"], hp["beta2"]
    for p, g, s in zip(params, grads, states):
        step = s["step"].add_(1)
        g = g + per_member(hp["weight_decay"], p) * p
        s["exp_avg"].lerp_(g, per_member(1 - beta1, p))
        exp_inf = s["exp_inf"]
        torch.maximum(exp_inf.mul_(per_member(beta2, p)),
                      g.abs().add_(per_member(hp["eps"], p)), out=exp_inf)
        clr = hp["lr"] / (1 - beta1**step)
        p.sub_(per_member(clr, p) * (s["exp_avg"] / exp_inf))


class Adamax(MetaOptimizer):
    """Adamax with torch.optim.Adamax's arguments, defaults and trajectory."""

    hypers = (Hyper("lr"), BETAS, Hyper("eps"), Hyper("weight_decay"))
    init = staticmethod(init)
    rule = staticmethod(rule)
    elementwise = True

    def __init__(self, params, lr: float | Tensor = 2e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0, foreach: bool | None = None, *,
                 maximize: bool = False, differentiable: bool = False,
                 capturable: bool = False,
                 population: int | None = None, backend: str = "auto") -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        foreach=foreach, maximize=maximize, differentiable=differentiable,
                        capturable=capturable)
        super().__init__(params, defaults, population=population, backend=backend)
