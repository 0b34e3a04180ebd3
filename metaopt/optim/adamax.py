"""Adamax (Kingma & Ba 2015, section 7.1): Adam with an infinity-norm second moment."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from metaopt.optim.adam import BETAS
from metaopt.optim.elementwise import nonzero, per_parameter
from metaopt.optim.hyperparams import Hyper
from metaopt.optim.members import new_step
from metaopt.optim.optimizer import MetaOptimizer, State


def init(param: Tensor, hp: Mapping[str, Tensor], opts: Mapping[str, Any]) -> State:
    return {"step": new_step(param, opts["population"]),
            "exp_avg": torch.zeros_like(param, memory_format=torch.preserve_format),
            "exp_inf": torch.zeros_like(param, memory_format=torch.preserve_format)}


def coefficients(hp: Mapping[str, Tensor], counters: dict, opts: Mapping[str, Any]) -> dict:
    step = counters["step"].add_(1)
    return {"weight_decay": hp["weight_decay"], "decays": nonzero(hp["weight_decay"]),
            "one_minus_beta1": 1 - hp["beta1"],
            "beta2": hp["beta2"], "eps": hp["eps"],
            "neg_clr": -(hp["lr"] / (1 - hp["beta1"] ** step))}


def update(p: Tensor, g: Tensor, s: State, c: Mapping[str, Tensor],
           opts: Mapping[str, Any]) -> None:
    """m = β1 m + (1-β1) g; u = max(β2 u, |g| + eps); p -= lr/(1-β1ᵗ) · m / u."""
    if c["decays"]:
        g = torch.addcmul(g, p, c["weight_decay"])
    s["exp_avg"].lerp_(g, c["one_minus_beta1"])
    exp_inf = s["exp_inf"]
    bound = torch.abs(g).add_(c["eps"])
    torch.maximum(exp_inf.mul_(c["beta2"]), bound, out=exp_inf)
    p.addcmul_(torch.div(s["exp_avg"], exp_inf, out=bound), c["neg_clr"])


class Adamax(MetaOptimizer):
    """Adamax with torch.optim.Adamax's arguments, defaults and trajectory."""

    hypers = (Hyper("lr"), BETAS, Hyper("eps"), Hyper("weight_decay"))
    init = staticmethod(init)
    coefficients = staticmethod(coefficients)
    update = staticmethod(update)
    rule = staticmethod(per_parameter(coefficients, update))
    flat_ok = True

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
