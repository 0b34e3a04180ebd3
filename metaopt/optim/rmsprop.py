"""RMSprop (Hinton's lecture 6e; centered variant of Graves 2013), torch.optim.RMSprop's."""

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
    def zeros() -> Tensor:
        return torch.zeros_like(param, memory_format=torch.preserve_format)

    state = {"step": new_step(param, opts["population"]), "square_avg": zeros()}
    if opts["uses_momentum"]:
        state["momentum_buffer"] = zeros()
    if opts["centered"]:
        state["grad_avg"] = zeros()
    return state


def coefficients(hp: Mapping[str, Tensor], counters: dict, opts: Mapping[str, Any]) -> dict:
    counters["step"].add_(1)
    return {"neg_lr": -hp["lr"], "weight_decay": hp["weight_decay"],
            "decays": nonzero(hp["weight_decay"]), "alpha": hp["alpha"],
            "one_minus_alpha": 1 - hp["alpha"], "eps": hp["eps"], "momentum": hp["momentum"]}


def update(p: Tensor, g: Tensor, s: State, c: Mapping[str, Tensor],
           opts: Mapping[str, Any]) -> None:
    """v = α v + (1 - α) g²; p -= lr * g / (√(v - ḡ²) + eps), optionally through momentum."""
    if c["decays"]:
        g = torch.addcmul(g, p, c["weight_decay"])
    square_avg = s["square_avg"]
    square_avg.mul_(c["alpha"]).addcmul_(torch.mul(g, c["one_minus_alpha"]), g)
    if opts["centered"]:
        grad_avg = s["grad_avg"].lerp_(g, c["one_minus_alpha"])
        avg = torch.addcmul(square_avg, grad_avg, grad_avg, value=-1).sqrt_()
    else:
        avg = square_avg.sqrt()
    avg = avg.add_(c["eps"])
    if "momentum_buffer" in s:
        buf = s["momentum_buffer"]
        buf.mul_(c["momentum"]).addcdiv_(g, avg)
        p.addcmul_(buf, c["neg_lr"])
    else:
        p.addcmul_(torch.div(g, avg, out=avg), c["neg_lr"])


class RMSprop(MetaOptimizer):
    """RMSprop with torch.optim.RMSprop's arguments, defaults and trajectory.

    As in torch, a momentum buffer exists only if ``momentum`` > 0 (for some member) when the
    state is created.
    """

    hypers = (Hyper("lr"), Hyper("alpha"), Hyper("eps"), Hyper("weight_decay"),
              Hyper("momentum"))
    init = staticmethod(init)
    coefficients = staticmethod(coefficients)
    update = staticmethod(update)
    rule = staticmethod(per_parameter(coefficients, update))
    flat_ok = True

    def __init__(self, params, lr: float | Tensor = 1e-2, alpha: float = 0.99,
                 eps: float = 1e-8, weight_decay: float = 0, momentum: float = 0,
                 centered: bool = False, capturable: bool = False,
                 foreach: bool | None = None, maximize: bool = False,
                 differentiable: bool = False, *,
                 population: int | None = None, backend: str = "auto") -> None:
        defaults = dict(lr=lr, momentum=momentum, alpha=alpha, eps=eps, centered=centered,
                        weight_decay=weight_decay, capturable=capturable, foreach=foreach,
                        maximize=maximize, differentiable=differentiable)
        super().__init__(params, defaults, population=population, backend=backend)

    def check_group(self, group) -> None:
        uses = bool((group.hparams["momentum"] > 0).any())
        group["uses_momentum"] = group.get("uses_momentum") or uses
