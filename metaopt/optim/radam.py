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
    """ρₜ and the rectifier rₜ; ``rectify`` says whether ρₜ > 5 (the adaptive step is on)."""
    beta1, beta2 = hp["beta1"], hp["beta2"]
    step = counters["step"].add_(1)
    bias_correction2 = 1 - beta2**step
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * step * (beta2**step) / bias_correction2
    rect = ((rho_t - 4) * (rho_t - 2) * rho_inf
            / ((rho_inf - 4) * (rho_inf - 2) * rho_t)).sqrt()
    return {**decay_coefficients(hp, opts["decoupled_weight_decay"]), **moment_coefficients(hp),
            "lr": hp["lr"], "bias_correction1": 1 - beta1**step,
            "bias_correction2_sqrt": bias_correction2.sqrt(), "rect": rect,
            "rectify": rho_t > 5.0}


def update(p: Tensor, g: Tensor, s: State, c: Mapping[str, Tensor],
           opts: Mapping[str, Any]) -> None:
    """While ρₜ ≤ 5 the step is SGD with momentum; after, Adam's step times the rectifier rₜ."""
    g = apply_weight_decay(p, g, c)
    update_moments(g, s, c)
    corrected = s["exp_avg"] / c["bias_correction1"] * c["lr"]
    adaptive = c["bias_correction2_sqrt"] / s["exp_avg_sq"].sqrt().add_(c["eps"])
    rectified = corrected * adaptive * c["rect"]
    p.sub_(torch.where(c["rectify"], rectified, corrected))


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
