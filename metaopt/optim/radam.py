"""RAdam (Liu et al. 2020): Adam whose adaptive step is rectified while its variance is large."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from metaopt.optim.adam import (
    BETAS,
    apply_weight_decay,
    decay_coefficients,
    moment_coefficients,
    update_moments,
)
from metaopt.optim.elementwise import per_parameter
from metaopt.optim.hyperparams import Hyper
from metaopt.optim.members import new_step
from metaopt.optim.optimizer import MetaOptimizer, State


def init(param: Tensor, hp: Mapping[str, Tensor], opts: Mapping[str, Any]) -> State:
    return {"step": new_step(param, opts["population"]),
            "exp_avg": torch.zeros_like(param, memory_format=torch.preserve_format),
            "exp_avg_sq": torch.zeros_like(param, memory_format=torch.preserve_format)}


def coefficients(hp: Mapping[str, Tensor], counters: dict, opts: Mapping[str, Any]) -> dict:
    """ρₜ and the rectifier rₜ, folded into the update's two weights: the adaptive one while
    ρₜ > 5, the plain (momentum SGD) one before; the other is 0."""
    beta1, beta2 = hp["beta1"], hp["beta2"]
    step = counters["step"].add_(1)
    bias_correction2 = 1 - beta2**step
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * step * (beta2**step) / bias_correction2
    rect = ((rho_t - 4) * (rho_t - 2) * rho_inf
            / ((rho_inf - 4) * (rho_inf - 2) * rho_t)).sqrt()
    rectify = rho_t > 5.0
    neg_step = -hp["lr"] / (1 - beta1**step)
    return {**decay_coefficients(hp, opts["decoupled_weight_decay"]), **moment_coefficients(hp),
            "adaptive_weight": torch.where(rectify, bias_correction2.sqrt() * rect * neg_step,
                                           0.0),
            "plain_weight": torch.where(rectify, 0.0, neg_step)}


def update(p: Tensor, g: Tensor, s: State, c: Mapping[str, Tensor],
           opts: Mapping[str, Any]) -> None:
    """While ρₜ ≤ 5 the step is SGD with momentum, -lr/(1-β1ᵗ)·m; after, Adam's step times the
    rectifier rₜ: -lr/(1-β1ᵗ)·rₜ·√(1-β2ᵗ)/(√v + eps)·m. One expression serves both:
    m · (adaptive_weight / (√v + eps) + plain_weight), one of the two weights being 0."""
    g = apply_weight_decay(p, g, c)
    update_moments(g, s, c)
    factor = s["exp_avg_sq"].sqrt().add_(c["eps"])
    factor = torch.div(c["adaptive_weight"], factor, out=factor).add_(c["plain_weight"])
    p.addcmul_(s["exp_avg"], factor)


class RAdam(MetaOptimizer):
    """RAdam with torch.optim.RAdam's arguments, defaults and trajectory."""

    hypers = (Hyper("lr"), BETAS, Hyper("eps"), Hyper("weight_decay"))
    init = staticmethod(init)
    coefficients = staticmethod(coefficients)
    update = staticmethod(update)
    rule = staticmethod(per_parameter(coefficients, update))
    flat_ok = True

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
