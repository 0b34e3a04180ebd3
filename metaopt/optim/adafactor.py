"""Adafactor (Shazeer & Stern 2018) as torch.optim.Adafactor implements it.

Matrices keep factored second moments (a row and a column vector per matrix, per member);
vectors keep a full one. Relative step sizes use each member's parameter RMS.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from metaopt.optim.hyperparams import Hyper
from metaopt.optim.members import member_ndim, member_norm, member_numel, new_step, per_member
from metaopt.optim.optimizer import MetaOptimizer, State


def _factored(param: Tensor, population: bool) -> bool:
    return member_ndim(param, population) > 1


def init(param: Tensor, hp: Mapping[str, Tensor], opts: Mapping[str, Any]) -> State:
    state = {"step": new_step(param, opts["population"])}
    if _factored(param, opts["population"] is not None):
        row_shape, col_shape = list(param.shape), list(param.shape)
        row_shape[-1], col_shape[-2] = 1, 1
        state["row_var"] = param.new_zeros(row_shape)
        state["col_var"] = param.new_zeros(col_shape)
    else:
        state["variance"] = torch.zeros_like(param, memory_format=torch.preserve_format)
    return state


def rule(params: list[Tensor], grads: list[Tensor], states: list[State],
         hp: Mapping[str, Tensor], opts: Mapping[str, Any]) -> None:
    """p -= max(eps2, RMS(p)) ρₜ · U / max(1, RMS(U)/d), with U = g / √V̂ and ρₜ = min(lr, 1/√t)."""
    population = opts["population"] is not None
    lr = hp["lr"]
    for p, g, s in zip(params, grads, states):
        eps1 = hp["eps1"] if hp["eps1"] is not None else torch.finfo(p.dtype).eps
        step = s["step"].add_(1).to(lr.dtype)
        one_minus_beta2 = per_member(step ** hp["beta2_decay"], p)
        rho = torch.minimum(lr, 1 / step**0.5)
        numel = member_numel(p, population)
        rms = member_norm(p, population) / numel**0.5
        alpha = torch.clamp(rms, min=hp["eps2"]) * rho
        p.mul_(per_member(1 - lr * hp["weight_decay"], p))
        if "row_var" in s:
            row_var, col_var = s["row_var"], s["col_var"]
            row_mean = torch.linalg.vector_norm(g, dim=-1, keepdim=True).square_() / g.size(-1)
            row_var.lerp_(row_mean, one_minus_beta2)
            col_mean = torch.linalg.vector_norm(g, dim=-2, keepdim=True).square_() / g.size(-2)
            col_var.lerp_(col_mean, one_minus_beta2)
            var_estimate = row_var @ col_var
            var_estimate.div_(row_var.mean(dim=-2, keepdim=True).clamp_(min=eps1))
        else:
            var_estimate = s["variance"].lerp_(g * g, one_minus_beta2).clone()
        update = var_estimate.clamp_(min=eps1 * eps1).rsqrt_().mul_(g)
        denom = torch.clamp(member_norm(update, population) / (numel**0.5 * hp["d"]), min=1.0)
        p.sub_(per_member(alpha / denom, p) * update)


class Adafactor(MetaOptimizer):
    """Adafactor with torch.optim.Adafactor's arguments, defaults and trajectory."""

    hypers = (Hyper("lr"), Hyper("beta2_decay", low=-float("inf"), high=0.0),
              Hyper("eps", parts=("eps1", "eps2"), optional=("eps1",)),
              Hyper("d", low=1.0), Hyper("weight_decay"))
    init = staticmethod(init)
    rule = staticmethod(rule)

    def __init__(self, params, lr: float | Tensor = 1e-2, beta2_decay: float = -0.8,
                 eps: tuple[float | None, float] = (None, 1e-3), d: float = 1.0,
                 weight_decay: float = 0.0, *, foreach: bool | None = None,
                 maximize: bool = False,
                 population: int | None = None, backend: str = "auto") -> None:
        defaults = dict(lr=lr, beta2_decay=beta2_decay, eps=eps, d=d,
                        weight_decay=weight_decay, foreach=foreach, maximize=maximize)
        super().__init__(params, defaults, population=population, backend=backend)
