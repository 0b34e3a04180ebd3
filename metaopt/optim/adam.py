"""Adam (Kingma & Ba 2015) and AdamW (Loshchilov & Hutter 2019), torch.optim's algorithms."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from metaopt.optim.elementwise import counter, nonzero, per_parameter, row, torch_fused
from metaopt.optim.hyperparams import Hyper
from metaopt.optim.members import new_step
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


def decay_coefficients(hp: Mapping[str, Tensor], decoupled: bool) -> dict[str, Tensor]:
    """Decoupled: p shrinks by ``1 - lr·wd``; coupled (L2): ``wd·p`` joins the gradient."""
    decays = nonzero(hp["weight_decay"])
    if decoupled:
        return {"decay": 1 - hp["lr"] * hp["weight_decay"], "decays": decays}
    return {"l2": hp["weight_decay"], "decays": decays}


def apply_weight_decay(p: Tensor, g: Tensor, c: Mapping[str, Tensor]) -> Tensor:
    if not c["decays"]:
        return g
    if "decay" in c:
        p.mul_(c["decay"])
        return g
    return torch.addcmul(g, p, c["l2"])


def moment_coefficients(hp: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {"one_minus_beta1": 1 - hp["beta1"], "beta2": hp["beta2"],
            "one_minus_beta2": 1 - hp["beta2"], "eps": hp["eps"]}


def update_moments(g: Tensor, s: State, c: Mapping[str, Tensor]) -> None:
    """m = β1 m + (1-β1) g; v = β2 v + (1-β2) g² (as torch: a lerp, then mul and add)."""
    s["exp_avg"].lerp_(g, c["one_minus_beta1"])
    s["exp_avg_sq"].mul_(c["beta2"]).addcmul_(torch.mul(g, c["one_minus_beta2"]), g)


def coefficients(hp: Mapping[str, Tensor], counters: dict, opts: Mapping[str, Any]) -> dict:
    step = counters["step"].add_(1)
    return {**decay_coefficients(hp, opts["decoupled_weight_decay"]), **moment_coefficients(hp),
            "neg_step_size": -(hp["lr"] / (1 - hp["beta1"] ** step)),
            "bias_correction2_sqrt": (1 - hp["beta2"] ** step).sqrt()}


def update(p: Tensor, g: Tensor, s: State, c: Mapping[str, Tensor],
           opts: Mapping[str, Any]) -> None:
    """p -= lr/(1-β1ᵗ) · m / (√(v/(1-β2ᵗ)) + eps), with max(v) under amsgrad."""
    g = apply_weight_decay(p, g, c)
    update_moments(g, s, c)
    second = s["exp_avg_sq"]
    if opts["amsgrad"]:
        second = torch.maximum(s["max_exp_avg_sq"], second, out=s["max_exp_avg_sq"])
    denom = second.sqrt().div_(c["bias_correction2_sqrt"]).add_(c["eps"])
    p.addcmul_(torch.div(s["exp_avg"], denom, out=denom), c["neg_step_size"])


def fused_rows(bucket: Any, grad: Tensor, hp: Mapping[str, Tensor],
               opts: Mapping[str, Any]) -> bool:
    """The eager backend's fast path on CPU: torch's own fused Adam/AdamW kernel over the flat
    buffer (once for a single model; once per member row for a population with large members,
    each row with its member's hyperparameter values; see :func:`torch_fused`)."""
    if bucket.state["step"].dtype != torch.float32:
        return False
    calls = torch_fused(bucket, hp, ("lr", "beta1", "beta2", "eps", "weight_decay"))
    if calls is None:
        return False
    bucket.state["step"].add_(1)  # every parameter's counter row advances together
    kernel = torch._fused_adamw_ if opts["decoupled_weight_decay"] else torch._fused_adam_
    amsgrad, state = opts["amsgrad"], bucket.state
    for i, v in calls:
        kernel([row(bucket.param, i)], [row(grad, i)], [row(state["exp_avg"], i)],
               [row(state["exp_avg_sq"], i)],
               [row(state["max_exp_avg_sq"], i)] if amsgrad else [],
               [counter(bucket, "step", i)], lr=v["lr"], beta1=v["beta1"], beta2=v["beta2"],
               weight_decay=v["weight_decay"], eps=v["eps"], amsgrad=amsgrad,
               maximize=opts.get("maximize", False))
    return True


class Adam(MetaOptimizer):
    """Adam with torch.optim.Adam's arguments, defaults and trajectory."""

    hypers = (Hyper("lr"), BETAS, Hyper("eps"), Hyper("weight_decay"))
    init = staticmethod(init)
    coefficients = staticmethod(coefficients)
    update = staticmethod(update)
    rule = staticmethod(per_parameter(coefficients, update))
    fused_rows = staticmethod(fused_rows)
    flat_ok = True

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
