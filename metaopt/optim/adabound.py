"""AdaBound (Luo et al. 2019, "Adaptive Gradient Methods with Dynamic Bound of Learning Rate").

Adam whose per-coordinate step size is clipped into bounds that start wide (Adam) and close in
on ``final_lr`` (SGD) as ``gamma·t`` grows. This follows the authors' implementation
(Luolc/AdaBound), not the paper's algorithm box: Adam's bias-corrected step size, eps in the
denominator, no 1/√t factor, L2 weight decay added to the gradient.

``final_lr`` is scaled by ``lr / base_lr`` so that an lr schedule moves the bounds too (the
authors' workaround). ``base_lr`` is the lr a group had at construction, kept per group (per
member for populations) as a tensor hyperparameter; it is saved in ``state_dict`` and copied by
``copy_member``. Where ``base_lr`` is 0 the bounds use ``final_lr`` unscaled.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from metaopt.optim.adam import BETAS
from metaopt.optim.elementwise import nonzero, per_parameter
from metaopt.optim.hyperparams import Hyper
from metaopt.optim.members import new_step
from metaopt.optim.optimizer import MetaOptimizer, State


def init(param: Tensor, hp: Mapping[str, Tensor], opts: Mapping[str, Any]) -> State:
    def zeros() -> Tensor:
        return torch.zeros_like(param, memory_format=torch.preserve_format)

    state = {"step": new_step(param, opts["population"]), "exp_avg": zeros(),
             "exp_avg_sq": zeros()}
    if opts["amsbound"]:
        state["max_exp_avg_sq"] = zeros()
    return state


def bounds(hp: Mapping[str, Tensor], step: Tensor) -> tuple[Tensor, Tensor]:
    """η_l = f(1 - 1/(γt + 1)), η_u = f(1 + 1/(γt)), with f = final_lr · lr / base_lr."""
    lr, base_lr, gamma = hp["lr"], hp["base_lr"], hp["gamma"]
    final_lr = hp["final_lr"] * torch.where(base_lr > 0, lr / base_lr, 1.0)
    lower = final_lr * (1 - 1 / (gamma * step + 1))
    upper = final_lr * (1 + 1 / (gamma * step))
    return lower, upper


def coefficients(hp: Mapping[str, Tensor], counters: dict, opts: Mapping[str, Any]) -> dict:
    step = counters["step"].add_(1)
    lower, upper = bounds(hp, step)
    return {"weight_decay": hp["weight_decay"], "decays": nonzero(hp["weight_decay"]),
            "one_minus_beta1": 1 - hp["beta1"],
            "beta2": hp["beta2"], "one_minus_beta2": 1 - hp["beta2"], "eps": hp["eps"],
            "step_size": hp["lr"] * (1 - hp["beta2"] ** step).sqrt() / (1 - hp["beta1"] ** step),
            "lower": lower, "upper": upper}


def update(p: Tensor, g: Tensor, s: State, c: Mapping[str, Tensor],
           opts: Mapping[str, Any]) -> None:
    """m = β1 m + (1-β1) g; v = β2 v + (1-β2) g²;
    p -= clip(lr·√(1-β2ᵗ)/(1-β1ᵗ) / (√v + eps), η_l(t), η_u(t)) · m (max(v) under amsbound)."""
    if c["decays"]:
        g = torch.addcmul(g, p, c["weight_decay"])
    exp_avg, exp_avg_sq = s["exp_avg"], s["exp_avg_sq"]
    exp_avg.lerp_(g, c["one_minus_beta1"])
    exp_avg_sq.mul_(c["beta2"]).addcmul_(torch.mul(g, c["one_minus_beta2"]), g)
    second = exp_avg_sq
    if opts["amsbound"]:
        second = torch.maximum(s["max_exp_avg_sq"], exp_avg_sq, out=s["max_exp_avg_sq"])
    rate = second.sqrt().add_(c["eps"])
    rate = torch.div(c["step_size"], rate, out=rate).clamp_(c["lower"], c["upper"])
    p.addcmul_(rate, exp_avg, value=-1)


class AdaBound(MetaOptimizer):
    """AdaBound / AMSBound (``amsbound=True``) with the authors' arguments and defaults."""

    hypers = (Hyper("lr"), BETAS, Hyper("final_lr"), Hyper("gamma", high=1.0, high_open=True),
              Hyper("eps"), Hyper("weight_decay"), Hyper("base_lr", optional=("base_lr",)))
    init = staticmethod(init)
    coefficients = staticmethod(coefficients)
    update = staticmethod(update)
    rule = staticmethod(per_parameter(coefficients, update))
    flat_ok = True

    def __init__(self, params, lr: float | Tensor = 1e-3,
                 betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
                 final_lr: float | Tensor = 0.1, gamma: float | Tensor = 1e-3,
                 eps: float | Tensor = 1e-8, weight_decay: float | Tensor = 0,
                 amsbound: bool = False, *, base_lr: float | Tensor | None = None,
                 maximize: bool = False, population: int | None = None,
                 backend: str = "auto") -> None:
        defaults = dict(lr=lr, betas=betas, final_lr=final_lr, gamma=gamma, eps=eps,
                        weight_decay=weight_decay, amsbound=amsbound, base_lr=base_lr,
                        maximize=maximize)
        super().__init__(params, defaults, population=population, backend=backend)

    def check_group(self, group) -> None:
        """``base_lr`` defaults to the group's lr at construction (a copy of it)."""
        if group.hparams["base_lr"] is None:
            group["base_lr"] = group.hparams["lr"].clone()

    def on_write(self, group, key) -> None:
        if key == "base_lr" and group.hparams["base_lr"] is None:
            group["base_lr"] = group.hparams["lr"].clone()
