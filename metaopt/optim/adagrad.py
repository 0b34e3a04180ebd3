"""Adagrad (Duchi et al. 2011), torch.optim.Adagrad's algorithm."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from metaopt.optim.elementwise import per_parameter
from metaopt.optim.hyperparams import Hyper
from metaopt.optim.members import new_step, per_member
from metaopt.optim.optimizer import MetaOptimizer, State


def init(param: Tensor, hp: Mapping[str, Tensor], opts: Mapping[str, Any]) -> State:
    start = per_member(hp["initial_accumulator_value"], param)
    return {"step": new_step(param, opts["population"]),
            "sum": torch.zeros_like(param, memory_format=torch.preserve_format).add_(start)}


def coefficients(hp: Mapping[str, Tensor], counters: dict, opts: Mapping[str, Any]) -> dict:
    step = counters["step"].add_(1)
    return {"weight_decay": hp["weight_decay"], "eps": hp["eps"],
            "clr": hp["lr"] / (1 + (step - 1) * hp["lr_decay"])}


def update(p: Tensor, g: Tensor, s: State, c: Mapping[str, Tensor],
           opts: Mapping[str, Any]) -> None:
    """sum += g²; p -= lr / (1 + (t - 1) lr_decay) * g / (√sum + eps)."""
    g = g + c["weight_decay"] * p
    s["sum"].addcmul_(g, g)
    std = s["sum"].sqrt().add_(c["eps"])
    p.sub_(c["clr"] * (g / std))


class Adagrad(MetaOptimizer):
    """Adagrad with torch.optim.Adagrad's arguments, defaults and trajectory."""

    hypers = (Hyper("lr"), Hyper("lr_decay"), Hyper("weight_decay"),
              Hyper("initial_accumulator_value"), Hyper("eps"))
    init = staticmethod(init)
    coefficients = staticmethod(coefficients)
    update = staticmethod(update)
    rule = staticmethod(per_parameter(coefficients, update))
    flat_ok = True

    def __init__(self, params, lr: float | Tensor = 1e-2, lr_decay: float = 0,
                 weight_decay: float = 0, initial_accumulator_value: float = 0,
                 eps: float = 1e-10, foreach: bool | None = None, *, maximize: bool = False,
                 differentiable: bool = False, fused: bool | None = None,
                 population: int | None = None, backend: str = "auto") -> None:
        defaults = dict(lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay,
                        initial_accumulator_value=initial_accumulator_value, foreach=foreach,
                        maximize=maximize, differentiable=differentiable, fused=fused)
        super().__init__(params, defaults, population=population, backend=backend)
