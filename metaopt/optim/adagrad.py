"""Adagrad (Duchi et al. 2011), torch.optim.Adagrad's algorithm."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from metaopt.optim.elementwise import counter, nonzero, per_parameter, row, torch_fused
from metaopt.optim.hyperparams import Hyper
from metaopt.optim.members import new_step, per_member
from metaopt.optim.optimizer import MetaOptimizer, State


def init(param: Tensor, hp: Mapping[str, Tensor], opts: Mapping[str, Any]) -> State:
    start = per_member(hp["initial_accumulator_value"], param)
    return {"step": new_step(param, opts["population"]),
            "sum": torch.zeros_like(param, memory_format=torch.preserve_format).add_(start)}


def coefficients(hp: Mapping[str, Tensor], counters: dict, opts: Mapping[str, Any]) -> dict:
    step = counters["step"].add_(1)
    return {"weight_decay": hp["weight_decay"], "decays": nonzero(hp["weight_decay"]),
            "eps": hp["eps"],
            "neg_clr": -(hp["lr"] / (1 + (step - 1) * hp["lr_decay"]))}


def update(p: Tensor, g: Tensor, s: State, c: Mapping[str, Tensor],
           opts: Mapping[str, Any]) -> None:
    """sum += g²; p -= lr / (1 + (t - 1) lr_decay) * g / (√sum + eps)."""
    if c["decays"]:
        g = torch.addcmul(g, p, c["weight_decay"])
    s["sum"].addcmul_(g, g)
    std = s["sum"].sqrt().add_(c["eps"])
    p.addcmul_(torch.div(g, std, out=std), c["neg_clr"])


def fused_rows(bucket: Any, grad: Tensor, hp: Mapping[str, Tensor],
               opts: Mapping[str, Any]) -> bool:
    """The eager backend's fast path on CPU: torch's fused Adagrad kernel over the flat
    buffer (per member row for a population of large members; see :func:`torch_fused`)."""
    calls = torch_fused(bucket, hp, ("lr", "lr_decay", "weight_decay", "eps"))
    if calls is None:
        return False
    bucket.state["step"].add_(1)  # every parameter's counter row advances together
    for i, v in calls:
        torch._fused_adagrad_([row(bucket.param, i)], [row(grad, i)],
                              [row(bucket.state["sum"], i)], [counter(bucket, "step", i)],
                              lr=v["lr"], lr_decay=v["lr_decay"],
                              weight_decay=v["weight_decay"], eps=v["eps"],
                              maximize=opts.get("maximize", False))
    return True


class Adagrad(MetaOptimizer):
    """Adagrad with torch.optim.Adagrad's arguments, defaults and trajectory."""

    hypers = (Hyper("lr"), Hyper("lr_decay"), Hyper("weight_decay"),
              Hyper("initial_accumulator_value"), Hyper("eps"))
    init = staticmethod(init)
    coefficients = staticmethod(coefficients)
    update = staticmethod(update)
    rule = staticmethod(per_parameter(coefficients, update))
    fused_rows = staticmethod(fused_rows)
    flat_ok = True
    state_at_construction = True  # as torch's Adagrad (its sum starts at a hyperparameter)

    def __init__(self, params, lr: float | Tensor = 1e-2, lr_decay: float = 0,
                 weight_decay: float = 0, initial_accumulator_value: float = 0,
                 eps: float = 1e-10, foreach: bool | None = None, *, maximize: bool = False,
                 differentiable: bool = False, fused: bool | None = None,
                 population: int | None = None, backend: str = "auto") -> None:
        defaults = dict(lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay,
                        initial_accumulator_value=initial_accumulator_value, foreach=foreach,
                        maximize=maximize, differentiable=differentiable, fused=fused)
        super().__init__(params, defaults, population=population, backend=backend)
