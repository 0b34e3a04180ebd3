"""D-Adaptation (Defazio & Mishchenko 2023, "Learning-Rate-Free Learning by D-Adaptation"):
Adam and SGD whose step size is a running lower bound D on the distance to the solution.

Both estimate ``D ≥ ||x_0 - x*||`` from ``Σ λ_t <g_t, s_t>`` and ``||s_t||``, where ``s`` is
the step-size-weighted sum (SGD) or EMA (Adam) of gradients, and never let it shrink: ``lr``
is a multiplier around 1.0, not a step size to tune. The sums run over every parameter (see
:mod:`metaopt.optim.global_step`); ``lr`` (the largest over groups), the betas / momentum,
``d0`` and ``growth_rate`` are the first group's; ``eps``, ``weight_decay`` and Adam's
``layer_scale`` each group's own. Both follow the authors' package (``dadaptation`` 3.2) step
for step, with two differences: every group's own weight decay is used (the package's SGD
applies the first group's to all), and D-Adapt SGD keeps no ``z`` buffer (``z = x0 - s`` is
formed in the step).
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
from metaopt.optim.members import per_member
from metaopt.optim.optimizer import State


def _zeros(param: Tensor) -> Tensor:
    return torch.zeros_like(param, memory_format=torch.preserve_format)


def _check_log_every(name: str, log_every: int) -> None:
    if log_every:
        raise ValueError(f"{name}: log_every is not supported (it would read the estimate "
                         f"back every step); watch d with metaopt.monitor or "
                         f"optimizer.global_scalars()")


# -- D-Adapt Adam -----------------------------------------------------------------------------
def adam_init(param: Tensor, hp: Mapping[str, Tensor], opts: Mapping[str, Any]) -> State:
    return {"s": _zeros(param), "exp_avg": _zeros(param), "exp_avg_sq": _zeros(param)}


def adam_scalars(hp: Mapping[str, Tensor]) -> dict[str, Tensor]:
    zero = torch.zeros_like(hp["lr"])
    return {"d": hp["d0"].clone(), "numerator_weighted": zero, "k": zero.clone()}


def adam_prepare(hp: Mapping[str, Tensor], sc: Mapping[str, Tensor],
                 opts: Mapping[str, Any]) -> dict:
    beta1, beta2, k = hp["beta1"], hp["beta2"], sc["k"]
    dlr = sc["d"] * hp["lr"]
    if opts["use_bias_correction"]:
        dlr = dlr * ((1 - beta2 ** (k + 1)).sqrt() / (1 - beta1 ** (k + 1)))
    sqrt_beta2 = beta2.sqrt()
    return {"dlr": dlr, "beta1": beta1, "one_minus_beta1": 1 - beta1, "beta2": beta2,
            "one_minus_beta2": 1 - beta2, "sqrt_beta2": sqrt_beta2,
            "s_scale": dlr * (1 - sqrt_beta2)}


def adam_accumulate(p: Tensor, g: Tensor, s: State, c: Mapping[str, Tensor],
                    opts: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
    """Returns r·dlr·<g, s/(√v + eps)> and r·||s||_1 (s, v before / after the update), with
    m = β1 m + r·dlr(1-β1) g, v = β2 v + (1-β2) g², s = √β2 s + dlr(1-√β2) g."""
    population = opts["population"] is not None
    b = broadcast(c, p)
    if not opts["decouple"]:
        g = torch.addcmul(g, p, b["weight_decay"])
    scaled = c["layer_scale"] * c["dlr"]
    denom = s["exp_avg_sq"].sqrt().add_(b["eps"])
    numerator = scaled * member_dot(g, torch.div(s["s"], denom, out=denom), population)
    s["exp_avg"].mul_(b["beta1"]).addcmul_(g, per_member(scaled * c["one_minus_beta1"], p))
    s["exp_avg_sq"].mul_(b["beta2"]).addcmul_(g * b["one_minus_beta2"], g)
    s["s"].mul_(b["sqrt_beta2"]).addcmul_(g, b["s_scale"])
    return numerator, c["layer_scale"] * member_l1(s["s"], population)


def adam_combine(hp: Mapping[str, Tensor], sc: Mapping[str, Tensor],
                 totals: tuple[Tensor, Tensor], c: Mapping[str, Tensor],
                 opts: Mapping[str, Any]) -> dict:
    """r = √β2 r + (1-√β2) Σ numerators; d = max(d, min(r / ((1-√β2)·Σ||s||_1), d·growth)).
    A member whose ||s||_1 is 0 skips the step, as the package returns early."""
    numerator, sk_l1 = totals
    d, sqrt_beta2 = sc["d"], c["sqrt_beta2"]
    active = sk_l1 > 0
    moves = active & (hp["lr"] > 0)
    r = sqrt_beta2 * sc["numerator_weighted"] + (1 - sqrt_beta2) * numerator
    d_hat = r / ((1 - sqrt_beta2) * sk_l1)
    d_new = torch.maximum(d, torch.minimum(d_hat, d * hp["growth_rate"]))
    sc["numerator_weighted"].copy_(torch.where(active, r, sc["numerator_weighted"]))
    sc["d"].copy_(torch.where(moves, d_new, d))
    sc["k"].add_(active.to(sc["k"].dtype))
    return {"neg_dlr": -torch.where(active, c["dlr"], 0.0),
            "sign": torch.where(active, -1.0, 0.0)}


def adam_apply(p: Tensor, g: Tensor, s: State, c: Mapping[str, Tensor],
               opts: Mapping[str, Any]) -> None:
    """x ← x - dlr·wd·x (decoupled); x ← x - m / (√v + eps) (m carries the step size)."""
    b = broadcast(c, p)
    denom = s["exp_avg_sq"].sqrt().add_(b["eps"])
    if opts["decouple"]:
        p.addcmul_(p, b["weight_decay"] * b["neg_dlr"])
    p.addcmul_(torch.div(s["exp_avg"], denom, out=denom), b["sign"])


class DAdaptAdam(GlobalStepOptimizer):
    """D-Adapt Adam with the arguments and defaults of ``dadaptation.DAdaptAdam``
    (``lr=1.0``: leave it unless training is unstable; ``decouple=True`` for AdamW-style
    decay)."""

    hypers = (Hyper("lr"), BETAS, Hyper("eps"), Hyper("weight_decay"),
              Hyper("d0", low_open=True, log=True), Hyper("growth_rate", low=1.0),
              Hyper("layer_scale", low_open=True))
    local = ("eps", "weight_decay", "layer_scale")
    scalar_keys = ("d", "numerator_weighted", "k")
    init = staticmethod(adam_init)
    scalars = staticmethod(adam_scalars)
    prepare = staticmethod(adam_prepare)
    accumulate = staticmethod(adam_accumulate)
    combine = staticmethod(adam_combine)
    apply = staticmethod(adam_apply)

    def __init__(self, params, lr: float | Tensor = 1.0,
                 betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
                 eps: float | Tensor = 1e-8, weight_decay: float | Tensor = 0,
                 log_every: int = 0, decouple: bool = False, use_bias_correction: bool = False,
                 d0: float | Tensor = 1e-6, growth_rate: float | Tensor = math.inf, *,
                 layer_scale: float | Tensor = 1.0, population: int | None = None,
                 backend: str = "auto") -> None:
        _check_log_every(type(self).__name__, log_every)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        decouple=decouple, use_bias_correction=use_bias_correction, d0=d0,
                        growth_rate=growth_rate, layer_scale=layer_scale)
        super().__init__(params, defaults, population=population, backend=backend)


# -- D-Adapt SGD ------------------------------------------------------------------------------
def sgd_init(param: Tensor, hp: Mapping[str, Tensor], opts: Mapping[str, Any]) -> State:
    return {"s": _zeros(param), "x0": param.detach().clone(memory_format=torch.preserve_format)}


def sgd_scalars(hp: Mapping[str, Tensor]) -> dict[str, Tensor]:
    zero = torch.zeros_like(hp["lr"])
    return {"d": hp["d0"].clone(), "numerator_weighted": zero, "k": zero.clone(),
            "g0_norm": zero.clone()}


def sgd_prepare(hp: Mapping[str, Tensor], sc: Mapping[str, Tensor],
                opts: Mapping[str, Any]) -> dict:
    return {}


def sgd_measure(p: Tensor, g: Tensor, s: State, c: Mapping[str, Tensor],
                opts: Mapping[str, Any]) -> tuple[Tensor]:
    """||g||² (without weight decay, as the package), for the first step's ||g_0||."""
    return (member_dot(g, g, opts["population"] is not None),)


def sgd_calibrate(hp: Mapping[str, Tensor], sc: Mapping[str, Tensor], totals: tuple[Tensor],
                  c: Mapping[str, Tensor], opts: Mapping[str, Any]) -> dict:
    """||g_0|| is kept from each member's first step; dlr = d·lr / ||g_0|| (0 while ||g_0||
    is 0: such a member skips its steps until a gradient arrives)."""
    g0 = sc["g0_norm"].copy_(torch.where(sc["k"] == 0, totals[0].sqrt(), sc["g0_norm"]))
    return {**c, "dlr": torch.where(g0 > 0, sc["d"] * hp["lr"] / g0, 0.0)}


def sgd_accumulate(p: Tensor, g: Tensor, s: State, c: Mapping[str, Tensor],
                   opts: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
    """g += wd·x; returns <g, s> (s before the update) and ||s||² after s += dlr·g."""
    population = opts["population"] is not None
    b = broadcast(c, p)
    g = torch.addcmul(g, p, b["weight_decay"])
    numerator = member_dot(g, s["s"], population)
    s["s"].addcmul_(g, b["dlr"])
    return numerator, member_dot(s["s"], s["s"], population)


def sgd_combine(hp: Mapping[str, Tensor], sc: Mapping[str, Tensor],
                totals: tuple[Tensor, Tensor], c: Mapping[str, Tensor],
                opts: Mapping[str, Any]) -> dict:
    """r += dlr·Σ<g, s>; d = max(d, min(2r / ||s||, d·growth)). A member whose s is 0 skips
    the step (the package divides by zero there)."""
    numerator, sk_sq = totals
    d = sc["d"]
    active = sk_sq > 0
    moves = active & (hp["lr"] > 0)
    r = sc["numerator_weighted"] + c["dlr"] * numerator
    d_hat = 2 * r / sk_sq.sqrt()
    d_new = torch.maximum(d, torch.minimum(d_hat, d * hp["growth_rate"]))
    sc["numerator_weighted"].copy_(torch.where(active, r, sc["numerator_weighted"]))
    sc["d"].copy_(torch.where(moves, d_new, d))
    sc["k"].add_(active.to(sc["k"].dtype))
    ck = torch.where(active, 1 - hp["momentum"], 0.0)
    return {"ck": ck, "keep": 1 - ck}


def sgd_apply(p: Tensor, g: Tensor, s: State, c: Mapping[str, Tensor],
              opts: Mapping[str, Any]) -> None:
    """z = x0 - s; x ← (1 - c) x + c z with c = 1 - momentum (primal averaging)."""
    b = broadcast(c, p)
    p.mul_(b["keep"]).addcmul_(torch.sub(s["x0"], s["s"]), b["ck"])


class DAdaptSGD(GlobalStepOptimizer):
    """D-Adapt SGD with the arguments and defaults of ``dadaptation.DAdaptSGD``
    (``lr=1.0``: leave it unless training is unstable)."""

    hypers = (Hyper("lr"), Hyper("momentum", high=1.0, high_open=True), Hyper("weight_decay"),
              Hyper("d0", low_open=True, log=True), Hyper("growth_rate", low=1.0))
    local = ("weight_decay",)
    scalar_keys = ("d", "numerator_weighted", "k", "g0_norm")
    init = staticmethod(sgd_init)
    scalars = staticmethod(sgd_scalars)
    prepare = staticmethod(sgd_prepare)
    measure = staticmethod(sgd_measure)
    calibrate = staticmethod(sgd_calibrate)
    accumulate = staticmethod(sgd_accumulate)
    combine = staticmethod(sgd_combine)
    apply = staticmethod(sgd_apply)

    def __init__(self, params, lr: float | Tensor = 1.0, momentum: float | Tensor = 0.0,
                 weight_decay: float | Tensor = 0, log_every: int = 0,
                 d0: float | Tensor = 1e-6, growth_rate: float | Tensor = math.inf, *,
                 population: int | None = None, backend: str = "auto") -> None:
        _check_log_every(type(self).__name__, log_every)
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, d0=d0,
                        growth_rate=growth_rate)
        super().__init__(params, defaults, population=population, backend=backend)
