"""LAMB (You et al. 2020, "Large Batch Optimization for Deep Learning: Training BERT in 76
minutes"): Adam's direction, rescaled per tensor by a trust ratio ||p|| / ||update||.

The trust ratio makes each layer's step proportional to its weight norm, which keeps very large
batches (large lr) stable. For a population the ratio is computed per member.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from metaopt.optim.adam import BETAS
from metaopt.optim.hyperparams import Hyper
from metaopt.optim.members import member_norm, new_step, per_member
from metaopt.optim.optimizer import MetaOptimizer, State


def init(param: Tensor, hp: Mapping[str, Tensor], opts: Mapping[str, Any]) -> State:
    return {"step": new_step(param, opts["population"]),
            "exp_avg": torch.zeros_like(param, memory_format=torch.preserve_format),
            "exp_avg_sq": torch.zeros_like(param, memory_format=torch.preserve_format)}


def trust_ratio(p: Tensor, update: Tensor, population: bool) -> Tensor:
    """||p|| / ||update|| per member, 1 where either norm is 0 (a zero-initialised layer
    still moves, and a zero update stays zero)."""
    weight_norm, update_norm = member_norm(p, population), member_norm(update, population)
    return torch.where((weight_norm > 0) & (update_norm > 0), weight_norm / update_norm, 1.0)


def rule(params: list[Tensor], grads: list[Tensor], states: list[State],
         hp: Mapping[str, Tensor], opts: Mapping[str, Any]) -> None:
    """m = β1 m + (1-β1) g; v = β2 v + (1-β2) g²; r = m̂ / (√v̂ + eps) with m̂ = m/(1-β1ᵗ),
    v̂ = v/(1-β2ᵗ) (or m, v without bias correction); u = r + wd·p; p -= lr · ||p||/||u|| · u."""
    population = opts["population"] is not None
    beta1, beta2 = hp["beta1"], hp["beta2"]
    for p, g, s in zip(params, grads, states):
        step = s["step"].add_(1)
        exp_avg, exp_avg_sq = s["exp_avg"], s["exp_avg_sq"]
        exp_avg.lerp_(g, per_member(1 - beta1, p))
        exp_avg_sq.mul_(per_member(beta2, p)).add_(per_member(1 - beta2, p) * g * g)
        if opts["bias_correction"]:
            m_hat = exp_avg / per_member(1 - beta1**step, p)
            v_hat = exp_avg_sq / per_member(1 - beta2**step, p)
        else:
            m_hat, v_hat = exp_avg, exp_avg_sq
        update = m_hat / (v_hat.sqrt() + per_member(hp["eps"], p))
        update.add_(per_member(hp["weight_decay"], p) * p)
        ratio = trust_ratio(p, update, population)
        p.sub_(per_member(hp["lr"] * ratio, p) * update)


class LAMB(MetaOptimizer):
    """LAMB with the paper's algorithm: Adam moments (bias-corrected unless
    ``bias_correction=False``), weight decay added to the update, per-tensor trust ratio."""

    hypers = (Hyper("lr"), BETAS, Hyper("eps"), Hyper("weight_decay"))
    init = staticmethod(init)
    rule = staticmethod(rule)

    def __init__(self, params, lr: float | Tensor = 1e-3,
                 betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
                 eps: float | Tensor = 1e-6, weight_decay: float | Tensor = 0.0,
                 bias_correction: bool = True, *, maximize: bool = False,
                 population: int | None = None, backend: str = "auto") -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        bias_correction=bias_correction, maximize=maximize)
        super().__init__(params, defaults, population=population, backend=backend)
