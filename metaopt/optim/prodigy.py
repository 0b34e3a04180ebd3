"""Prodigy (Mishchenko & Defazio 2023, "Prodigy: An Expeditiously Adaptive Parameter-Free
Learner"): Adam whose step size is an estimate of the distance to the solution, D.

D grows from ``d0`` to ``d_coef · Σ_t λ_t <g_t, x_0 - x_t> / ||s_t||_1`` (never shrinking), a
lower bound on ``||x_0 - x*||`` that the moments themselves are scaled by, so ``lr`` is a
multiplier around 1.0, not a step size to tune. The sums run over every parameter (see
:mod:`metaopt.optim.global_step`); ``lr``, the betas, ``d0``, ``d_coef`` and ``growth_rate``
are the first group's (``lr`` the largest), ``eps`` and ``weight_decay`` each group's own.
This follows the authors' package (``prodigyopt`` 1.1.2, ``slice_p=1``) step for step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from metaopt.optim.adam import BETAS
from metaopt.optim.elementwise import broadcast
from metaopt.optim.global_step import GlobalStepOptimizer, member_dot, member_l1
from metaopt.optim.hyperparams import Hyper
from metaopt.optim.optimizer import State


def init(param: Tensor, hp: Mapping[str, Tensor], opts: Mapping[str, Any]) -> State:
    def zeros() -> Tensor:
        return torch.zeros_like(param, memory_format=torch.preserve_format)

    return {"s": zeros(), "p0": param.detach().clone(memory_format=torch.preserve_format),
            "exp_avg": zeros(), "exp_avg_sq": zeros()}


def scalars(hp: Mapping[str, Tensor]) -> dict[str, Tensor]:
    zero = torch.zeros_like(hp["lr"])
    return {"d": hp["d0"].clone(), "d_max": hp["d0"].clone(), "d_numerator": zero,
            "k": zero.clone()}


def prepare(hp: Mapping[str, Tensor], sc: Mapping[str, Tensor], opts: Mapping[str, Any]) -> dict:
    """dlr = d·lr (·√(1-β2ᵏ⁺¹)/(1-β1ᵏ⁺¹) with bias correction); the moments' scales."""
    beta1, beta2, d, k = hp["beta1"], hp["beta2"], sc["d"], sc["k"]
    beta3 = hp["beta3"] if hp["beta3"] is not None else beta2.sqrt()
    dlr = d * hp["lr"]
    if opts["use_bias_correction"]:
        dlr = dlr * ((1 - beta2 ** (k + 1)).sqrt() / (1 - beta1 ** (k + 1)))
    ratio = d / hp["d0"]
    return {"dlr": dlr, "beta1": beta1, "beta2": beta2, "beta3": beta3,
            "ema1": d * (1 - beta1), "ema2": d * d * (1 - beta2), "num_scale": ratio * dlr,
            "s_scale": ratio * (d if opts["safeguard_warmup"] else dlr)}


def accumulate(p: Tensor, g: Tensor, s: State, c: Mapping[str, Tensor],
               opts: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
    """m = β1 m + d(1-β1) g; v = β2 v + d²(1-β2) g²; s = β3 s + (d/d0)·dlr·g. Returns
    <g, x0 - x> and ||s||_1 (coupled weight decay joins g first)."""
    population = opts["population"] is not None
    b = broadcast(c, p)
    if not opts["decouple"]:
        g = torch.addcmul(g, p, b["weight_decay"])
    numerator = member_dot(g, s["p0"] - p, population)
    s["exp_avg"].mul_(b["beta1"]).addcmul_(g, b["ema1"])
    s["exp_avg_sq"].mul_(b["beta2"]).addcmul_(g * b["ema2"], g)
    s["s"].mul_(b["beta3"]).addcmul_(g, b["s_scale"])
    return numerator, member_l1(s["s"], population)


def combine(hp: Mapping[str, Tensor], sc: Mapping[str, Tensor], totals: tuple[Tensor, Tensor],
            c: Mapping[str, Tensor], opts: Mapping[str, Any]) -> dict:
    """r = β3 r + Σ (d/d0)·dlr·<g, x0 - x>; d̂ = d_coef · r / Σ||s||_1; d grows to d̂ (once
    past d0: up to the largest d̂ so far), at most by ``growth_rate`` per step. A member whose
    ||s||_1 is 0 (no gradient yet) skips the step, as the package returns early."""
    numerator, denom = totals
    d, d_max = sc["d"], sc["d_max"]
    active = denom > 0
    moves = active & (hp["lr"] > 0)
    r = sc["d_numerator"] * c["beta3"] + c["num_scale"] * numerator
    d_hat = hp["d_coef"] * r / denom
    d_new = torch.where(d == hp["d0"], torch.maximum(d, d_hat), d)
    d_max_new = torch.maximum(d_max, d_hat)
    d_new = torch.minimum(d_max_new, d_new * hp["growth_rate"])
    d_next = torch.where(moves, d_new, d)
    # with β1 = 0 the package steps along d_new·g, not m = d_old·g
    dlr = torch.where(active, c["dlr"], 0.0) * torch.where(c["beta1"] == 0, d_next / d, 1.0)
    sc["d_numerator"].copy_(torch.where(active, r, sc["d_numerator"]))
    sc["d_max"].copy_(torch.where(moves, d_max_new, d_max))
    sc["d"].copy_(d_next)
    sc["k"].add_(active.to(sc["k"].dtype))
    return {"d": d_next, "neg_dlr": -torch.where(active, c["dlr"], 0.0), "neg_step_size": -dlr}


def apply(p: Tensor, g: Tensor, s: State, c: Mapping[str, Tensor],
          opts: Mapping[str, Any]) -> None:
    """x ← x - dlr·wd·x (decoupled); x ← x - dlr · m / (√v + d·eps), d the new estimate
    (with β1 = 0, m is d·g at the new d, as in the package)."""
    b = broadcast(c, p)
    denom = s["exp_avg_sq"].sqrt().add_(b["d"] * b["eps"])
    if opts["decouple"]:
        p.addcmul_(p, b["weight_decay"] * b["neg_dlr"])
    p.addcmul_(torch.div(s["exp_avg"], denom, out=denom), b["neg_step_size"])


class Prodigy(GlobalStepOptimizer):
    """Prodigy with the arguments and defaults of the authors' ``prodigyopt.Prodigy``
    (``lr=1.0``: leave it unless training is unstable; tune ``d_coef`` if anything)."""

    hypers = (Hyper("lr"), BETAS, Hyper("beta3", high=1.0, optional=("beta3",)),
              Hyper("eps"), Hyper("weight_decay"), Hyper("d0", low_open=True, log=True),
              Hyper("d_coef", low_open=True, log=True), Hyper("growth_rate", low=1.0))
    scalar_keys = ("d", "d_max", "d_numerator", "k")
    init = staticmethod(init)
    scalars = staticmethod(scalars)
    prepare = staticmethod(prepare)
    accumulate = staticmethod(accumulate)
    combine = staticmethod(combine)
    apply = staticmethod(apply)

    def __init__(self, params, lr: float | Tensor = 1.0,
                 betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
                 beta3: float | Tensor | None = None, eps: float | Tensor = 1e-8,
                 weight_decay: float | Tensor = 0, decouple: bool = True,
                 use_bias_correction: bool = False, safeguard_warmup: bool = False,
                 d0: float | Tensor = 1e-6, d_coef: float | Tensor = 1.0,
                 growth_rate: float | Tensor = math.inf, *, population: int | None = None,
                 backend: str = "auto") -> None:
        defaults = dict(lr=lr, betas=betas, beta3=beta3, eps=eps, weight_decay=weight_decay,
                        decouple=decouple, use_bias_correction=use_bias_correction,
                        safeguard_warmup=safeguard_warmup, d0=d0, d_coef=d_coef,
                        growth_rate=growth_rate)
        super().__init__(params, defaults, population=population, backend=backend)
