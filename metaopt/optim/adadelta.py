"""Adadelta (Zeiler 2012), torch.optim.Adadelta's algorithm."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from metaopt.optim.elementwise import nonzero, per_parameter
from metaopt.optim.hyperparams import Hyper
from metaopt.optim.members import new_step
from metaopt.optim.optimizer import MetaOptimizer, State


def init(param: Tensor, hp: Mapping[str, Tensor], opts: Mapping[str, Any]) -> State:
    return {"step": new_step(param, opts["population"]),
            "square_avg": torch.zeros_like(param, memory_format=torch.preserve_format),
            "acc_delta": torch.zeros_like(param, memory_format=torch.preserve_format)}


def coefficients(hp: Mapping[str, Tensor], counters: dict, opts: Mapping[str, Any]) -> dict:
    counters["step"].add_(1)
    return {"neg_lr": -hp["lr"], "rho": hp["rho"], "one_minus_rho": 1 - hp["rho"], "eps": hp["eps"],
            "weight_decay": hp["weight_decay"], "decays": nonzero(hp["weight_decay"])}


def update(p: Tensor, g: Tensor, s: State, c: Mapping[str, Tensor],
           opts: Mapping[str, Any]) -> None:
    """Δ = √(E[Δ²] + eps) / √(E[g²] + eps) · g; p -= lr Δ."""
    if c["decays"]:
        g = torch.addcmul(g, p, c["weight_decay"])
    square_avg, acc_delta = s["square_avg"], s["acc_delta"]
    square_avg.mul_(c["rho"]).addcmul_(torch.mul(g, c["one_minus_rho"]), g)
    std = torch.add(square_avg, c["eps"]).sqrt_()
    delta = torch.add(acc_delta, c["eps"]).sqrt_().div_(std).mul_(g)
    acc_delta.mul_(c["rho"]).addcmul_(torch.mul(delta, c["one_minus_rho"], out=std), delta)
    p.addcmul_(delta, c["neg_lr"])


class Adadelta(MetaOptimizer):
    """Adadelta with torch.optim.Adadelta's arguments, defaults and trajectory."""

    hypers = (Hyper("lr"), Hyper("rho", high=1.0), Hyper("eps"), Hyper("weight_decay"))
    init = staticmethod(init)
    coefficients = staticmethod(coefficients)
    update = staticmethod(update)
    rule = staticmethod(per_parameter(coefficients, update))
    flat_ok = True

    def __init__(self, params, lr: float | Tensor = 1.0, rho: float = 0.9, eps: float = 1e-6,
                 weight_decay: float = 0, foreach: bool | None = None, *,
                 capturable: bool = False, maximize: bool = False,
                 differentiable: bool = False,
                 population: int | None = None, backend: str = "auto") -> None:
        defaults = dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize,
                        capturable=capturable, foreach=foreach, differentiable=differentiable)
        super().__init__(params, defaults, population=population, backend=backend)
