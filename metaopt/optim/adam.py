"""Adam (Kingma & Ba 2015) and AdamW (Loshchilov & Hutter 2019), torch.optim's algorithms."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from metaopt.optim.hyperparams import Hyper
from metaopt.optim.members import new_step, per_member
from metaopt.optim.optimizer import MetaOptimizer, State

BETAS = Hyper("betas", low=0.0, high=1.0, high_open=True, parts=("beta1", "beta2"))


def init(param: Tensor, hp: Mapping[str, Tensor], opts: Mapping[str, Any]) -> State:
    def zeros() -> Tensor:
        return torch.zeros_like(param, memory_format=torch.preserve_format)

    state = {"step": new_step(param, opts["population"]), "exp_avg": zeros(),
             "exp_avg_sq": zeros()}
    if opts["amsgrad"]:
        state["max_exp_avg_sq"] = zeros()
    return state


def apply_weight_decay(p: Tensor, g: Tensor, hp: Mapping[str, Tensor], decoupled: bool) -> Tensor:
    """Decoupled: shrink p by lr·wd; coupled (L2): add wd·p to the gradient."""
    if decoupled:
        p.mul_(per_member(1 - hp["lr"] * hp["weight_decay"], p))
        return g
    return g + per_member(hp["weight_decay"], p) * p


def rule(params: list[Tensor], grads: list[Tensor], states: list[State],
         hp: Mapping[str, Tensor], opts: Mapping[str, Any]) -> None:
    """m = β1 m + (1-β1) g; v = β2 v + (1-β2) g²; p -= lr/(1-β1ᵗ) · m / (√(v/(1-β2ᵗ)) + eps)."""
    beta1, beta2 = hp["beta1"], hp["beta2"]
    for p, g, s in zip(params, grads, states):
        step = s["step"].add_(1)
        g = apply_weight_decay(p, g, hp, opts["decoupled_weight_decay"])
        exp_avg, exp_avg_sq = s["exp_avg"], s["exp_avg_sq"]
        exp_avg.lerp_(g, per_member(1 - beta1, p))
        exp_avg_sq.mul_(per_member(beta2, p)).add_(per_member(1 - beta2, p) * g * g)
        step_size = hp["lr"] / (1 - beta1**step)
        bias_correction2_sqrt = (1 - beta2**step).sqrt()
        if opts["amsgrad"]:
            second = torch.maximum(s["max_exp_avg_sq"], exp_avg_sq, out=s["max_exp_avg_sq"])
        else:
            second = exp_avg_sq
        denom = (second.sqrt() / per_member(bias_correction2_sqrt, p)).add_(
            per_member(hp["eps"], p))
        p.sub_(per_member(step_size, p) * (exp_avg / denom))


class Adam(MetaOptimizer):
    """Adam with torch.optim.Adam's arguments, defaults and trajectory."""

    hypers = (Hyper("lr"), BETAS, Hyper("eps"), Hyper("weight_decay"))
    init = staticmethod(init)
    rule = staticmethod(rule)
    elementwise = True

    def __init__(self, params, lr: float | Tensor = 1e-3,
                 betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0, amsgrad: bool = False, *, foreach: bool | None = None,
                 maximize: bool = False, capturable: bool = False, differentiable: bool = False,
                 fused: bool | None = None, decoupled_weight_decay: bool = False,
                 population: int | None = None, backend: str = "auto") -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        maximize=maximize, foreach=foreach, capturable=capturable,
                        differentiable=differentiable, fused=fused,
                        decoupled_weight_decay=decoupled_weight_decay)
        super().__init__(params, defaults, population=population, backend=backend)


class AdamW(Adam):
    """AdamW (decoupled weight decay) with torch.optim.AdamW's arguments and defaults."""

    def __init__(self, params, lr: float | Tensor = 1e-3,
                 betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False, *, maximize: bool = False,
                 foreach: bool | None = None, capturable: bool = False,
                 differentiable: bool = False, fused: bool | None = None,
                 population: int | None = None, backend: str = "auto") -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach,
                         maximize=maximize, capturable=capturable,
                         differentiable=differentiable, fused=fused,
                         decoupled_weight_decay=True, population=population,
                         backend=backend)
