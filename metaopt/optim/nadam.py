"""NAdam (Dozat 2016): Adam with Nesterov momentum and a momentum-decay schedule."""

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
    step = new_step(param, opts["population"])
    return {"step": step, "mu_product": torch.ones_like(step),
            "exp_avg": torch.zeros_like(param, memory_format=torch.preserve_format),
            "exp_avg_sq": torch.zeros_like(param, memory_format=torch.preserve_format)}


def coefficients(hp: Mapping[str, Tensor], counters: dict, opts: Mapping[str, Any]) -> dict:
    """μₜ = β1 (1 - ½·0.96^(t·ψ)); the product of the μ's is kept in float32, as torch does."""
    lr, beta1, beta2 = hp["lr"], hp["beta1"], hp["beta2"]
    step = counters["step"].add_(1)
    mu = beta1 * (1.0 - 0.5 * 0.96 ** (step * hp["momentum_decay"]))
    mu_next = beta1 * (1.0 - 0.5 * 0.96 ** ((step + 1) * hp["momentum_decay"]))
    mu_product = counters["mu_product"]
    mu_product.mul_(mu.to(mu_product.dtype))
    product = mu_product.to(mu.dtype)
    return {**decay_coefficients(hp, opts["decoupled_weight_decay"]), **moment_coefficients(hp),
            "bias_correction2": 1 - beta2**step,
            "grad_weight": -lr * (1.0 - mu) / (1.0 - product),
            "avg_weight": -lr * mu_next / (1.0 - product * mu_next)}


def update(p: Tensor, g: Tensor, s: State, c: Mapping[str, Tensor],
           opts: Mapping[str, Any]) -> None:
    """Adam's moments; the step mixes the gradient and the momentum with weights μₜ, μₜ₊₁."""
    g = apply_weight_decay(p, g, c)
    update_moments(g, s, c)
    denom = torch.div(s["exp_avg_sq"], c["bias_correction2"]).sqrt_().add_(c["eps"])
    p.addcmul_(torch.div(g, denom), c["grad_weight"])
    p.addcmul_(torch.div(s["exp_avg"], denom, out=denom), c["avg_weight"])


class NAdam(MetaOptimizer):
    """NAdam with torch.optim.NAdam's arguments, defaults and trajectory."""

    hypers = (Hyper("lr"), BETAS, Hyper("eps"), Hyper("weight_decay"),
              Hyper("momentum_decay"))
    init = staticmethod(init)
    coefficients = staticmethod(coefficients)
    update = staticmethod(update)
    rule = staticmethod(per_parameter(coefficients, update))
    flat_ok = True

    def __init__(self, params, lr: float | Tensor = 2e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0, momentum_decay: float = 4e-3,
                 decoupled_weight_decay: bool = False, *, foreach: bool | None = None,
                 maximize: bool = False, capturable: bool = False,
                 differentiable: bool = False,
                 population: int | None = None, backend: str = "auto") -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        momentum_decay=momentum_decay,
                        decoupled_weight_decay=decoupled_weight_decay, maximize=maximize,
                        foreach=foreach, capturable=capturable, differentiable=differentiable)
        super().__init__(params, defaults, population=population, backend=backend)

    def adopt_state(self, param, state, group) -> None:
        super().adopt_state(param, state, group)
        shape = state["step"].shape
        state["mu_product"] = torch.as_tensor(state["mu_product"]).to(
            dtype=state["step"].dtype, device=param.device).expand(shape).clone()
