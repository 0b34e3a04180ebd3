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
from metaopt.optim.elementwise import nonzero, per_parameter_segmented
from metaopt.optim.hyperparams import Hyper
from metaopt.optim.members import new_step
from metaopt.optim.optimizer import MetaOptimizer, State


def init(param: Tensor, hp: Mapping[str, Tensor], opts: Mapping[str, Any]) -> State:
    return {"step": new_step(param, opts["population"]),
            "exp_avg": torch.zeros_like(param, memory_format=torch.preserve_format),
            "exp_avg_sq": torch.zeros_like(param, memory_format=torch.preserve_format)}


def coefficients(hp: Mapping[str, Tensor], counters: dict, opts: Mapping[str, Any]) -> dict:
    """Bias corrections folded into two coefficients: with b1 = 1-β1ᵗ, b2 = 1-β2ᵗ (1 without
    bias correction), m̂ / (√v̂ + eps) = √b2/b1 · m / (√v + eps·√b2)."""
    step = counters["step"].add_(1)
    if opts["bias_correction"]:
        root = (1 - hp["beta2"] ** step).sqrt()
        scale = root / (1 - hp["beta1"] ** step)
    else:
        root = scale = torch.ones_like(hp["lr"])
    return {"lr": hp["lr"], "one_minus_beta1": 1 - hp["beta1"],
            "one_minus_beta2": 1 - hp["beta2"], "eps": hp["eps"] * root, "scale": scale,
            "weight_decay": hp["weight_decay"], "decays": nonzero(hp["weight_decay"])}


def quotient(s: State, c: Mapping[str, Tensor]) -> Tensor:
    """m / (√v + eps·√b2) from the stored moments: a new tensor (Adam's direction is this
    times √b2/b1)."""
    q = s["exp_avg_sq"].sqrt().add_(c["eps"])
    return torch.div(s["exp_avg"], q, out=q)


def measure(p: Tensor, g: Tensor, s: State, c: Mapping[str, Tensor],
            opts: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
    """The moments m = β1 m + (1-β1) g and v = β2 v + (1-β2) g², stored; then the per-block
    sums of p² and u², u = m̂ / (√v̂ + eps) + wd·p (``apply`` recomputes u from the moments)."""
    s["exp_avg"].lerp_(g, c["one_minus_beta1"])
    s["exp_avg_sq"].lerp_(torch.mul(g, g), c["one_minus_beta2"])
    q = quotient(s, c)
    if c["decays"]:
        update_norm = torch.linalg.vector_norm(q.mul_(c["scale"]).addcmul_(p, c["weight_decay"]),
                                               dim=-1)
    else:
        update_norm = (torch.linalg.vector_norm(q, dim=-1, keepdim=True)
                       * c["scale"]).squeeze(-1)
    return torch.linalg.vector_norm(p, dim=-1).square_(), update_norm.square_()


def combine(weight_sq: Tensor, update_sq: Tensor) -> Tensor:
    """The trust ratio ||p|| / ||u|| of each parameter, 1 where either norm is 0."""
    weight_norm, update_norm = weight_sq.sqrt(), update_sq.sqrt()
    return torch.where((weight_norm > 0) & (update_norm > 0), weight_norm / update_norm, 1.0)


def apply(p: Tensor, g: Tensor, s: State, c: Mapping[str, Tensor], opts: Mapping[str, Any],
          ratio: Tensor) -> None:
    """p -= lr · ||p||/||u|| · u: Adam's direction with weight decay, rescaled per tensor (per
    member) by the trust ratio (You et al. 2020)."""
    q = quotient(s, c)
    if c["decays"]:
        p.addcmul_(q.mul_(c["scale"]).addcmul_(p, c["weight_decay"]), -(c["lr"] * ratio))
    else:
        p.addcmul_(q, -(c["lr"] * ratio * c["scale"]))


class LAMB(MetaOptimizer):
    """LAMB with the paper's algorithm: Adam moments (bias-corrected unless
    ``bias_correction=False``), weight decay added to the update, per-tensor trust ratio."""

    hypers = (Hyper("lr"), BETAS, Hyper("eps"), Hyper("weight_decay"))
    init = staticmethod(init)
    coefficients = staticmethod(coefficients)
    measure = staticmethod(measure)
    combine = staticmethod(combine)
    apply = staticmethod(apply)
    flat_ok = True
    segmented = True

    def __init__(self, params, lr: float | Tensor = 1e-3,
                 betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
                 eps: float | Tensor = 1e-6, weight_decay: float | Tensor = 0.0,
                 bias_correction: bool = True, *, maximize: bool = False,
                 population: int | None = None, backend: str = "auto") -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        bias_correction=bias_correction, maximize=maximize)
        super().__init__(params, defaults, population=population, backend=backend)


LAMB.rule = staticmethod(per_parameter_segmented(LAMB))
