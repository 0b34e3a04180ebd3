"""RAdam (Liu et al. 2020): Adam whose adaptive step is rectified while its variance is large."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from metaopt.optim.adam import BETAS, apply_weight_decay
from metaopt.optim.hyperparams import Hyper
from metaopt.optim.members import new_step, per_member
from metaopt.optim.optimizer import MetaOptimizer, State


def init(param: Tensor, hp: Mapping[str, Tensor], opts: Mapping[str, Any]) -> State:
    return {"step": new_step(param, opts["population"]),
            "exp_avg": torch.zeros_like(param, memory_format=torch.preserve_format),
            "exp_avg_sq": torch.zeros_like(param, memory_format=torch.preserve_format)}


def rule(params: list[Tensor], grads: list[Tensor], states: list[State],
         hp: Mapping[str, Tensor], opts: Mapping[str, Any]) -> None:
    """While ρₜ ≤ 5 the step is SGD with momentum; after, Adam's step times the rectifier rₜ."""
    lr, beta1, beta2 = hp["lr"], hp["beta1"], hp["beta2"]
    for p, g, s in zip(params, grads, states):
        step = s["step"].add_(1)
        g = apply_weight_decay(p, g, hp, opts["decoupled_weight_decay"])
        exp_avg, exp_avg_sq = s["exp_avg"], s["exp_avg_sq"]
        exp_avg.lerp_(g, per_member(1 - beta1, p))
        exp_avg_sq.mul_(per_member(beta2, p)).add_(per_member(1 - beta2, p) * g * g)
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        corrected = exp_avg / per_member(bias_correction1, p) * per_member(lr, p)
        rho_inf = 2 / (1 - beta2) - 1
        rho_t = rho_inf - 2 * step * (beta2**step) / bias_correction2
        rect = ((rho_t - 4) * (rho_t - 2) * rho_inf
                / ((rho_inf - 4) * (rho_inf - 2) * rho_t)).sqrt()
        adaptive = per_member(bias_correction2.sqrt(), p) / (
            exp_avg_sq.sqrt().add_(per_member(hp["eps"], p)))
        rectified = corrected * adaptive * per_member(rect, p)
        p.sub_(torch.where(per_member(rho_t > 5.0, p), rectified, corrected))


class RAdam(MetaOptimizer):
    """RAdam with torch.optim.RAdam's arguments, defaults and trajectory."""

    hypers = (Hyper("lr"), BETAS, Hyper("eps"), Hyper("weight_decay"))
    init = staticmethod(init)
    rule = staticmethod(rule)
    elementwise = True

    def __init__(self, params, lr: float | Tensor = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0, decoupled_weight_decay: bool = False, *,
                 foreach: bool | None = None, maximize: bool = False,
                 capturable: bool = False, differentiable: bool = False,
                 population: int | None = None, backend: str = "auto") -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        maximize=maximize, foreach=foreach, capturable=capturable,
                        decoupled_weight_decay=decoupled_weight_decay,
                        differentiable=differentiable)
        super().__init__(params, defaults, population=population, backend=backend)
