"""Schedule-Free AdamW and SGD (Defazio et al. 2024, "The Road Less Scheduled").

Instead of a decaying schedule, the weights are an online average: gradients are taken at
``y = (1 - β) z + β x``, a base step moves ``z``, and ``x`` (the weights to evaluate) is the
running average of ``z`` with weights ``c_{t+1} = w_t / Σ w`` (``w_t = (t+1)^r · lr_max^p``).
The parameters hold ``y`` while training; ``eval()`` moves them to ``x`` and ``train()`` back
(``y = (1-β) z + β x``, so each switch is one ``lerp``): call ``optimizer.eval()`` before
evaluating or saving the model, ``optimizer.train()`` before stepping again. metaopt's
trainers do so for every optimizer that has the two methods
(:func:`metaopt.optim.modes.evaluating`). The optimizer starts in train mode (the package
starts in eval mode and refuses to step until ``train()``); ``step()`` in eval mode raises.

Because the averaging is the schedule, these optimizers must never be given a decaying one
(``schedule_free = True``: the selection layer reads it through
:func:`metaopt.optim.registry.schedule_free`); warm-up is built in (``warmup_steps``).

The update is elementwise, with per-tensor counters (step, ``lr_max``, the weight sum), so it
runs per parameter, over flat buckets or compiled like the other elementwise rules. It follows
the authors' package (``schedulefree`` 1.4.1, ``AdamWScheduleFree`` / ``SGDScheduleFree``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from metaopt.optim.elementwise import per_parameter
from metaopt.optim.hyperparams import Hyper
from metaopt.optim.members import per_member
from metaopt.optim.optimizer import MetaOptimizer, State

# β1 = 0 would put x infinitely far from y (eval lerps with weight 1 - 1/β1)
SF_BETAS = Hyper("betas", low=0.0, high=1.0, low_open=True, high_open=True,
                 parts=("beta1", "beta2"))


def _init(param: Tensor, hp: Mapping[str, Tensor], adam: bool) -> State:
    zero = torch.zeros_like(hp["lr"])  # counters in the hyperparameters' precision
    state = {"step": zero, "lr_max": zero - 1, "weight_sum": zero.clone(),
             "z": param.detach().clone(memory_format=torch.preserve_format)}
    if adam:
        state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
    return state


def averaging(hp: Mapping[str, Tensor], counters: dict, beta: Tensor) -> dict[str, Tensor]:
    """Warm-up, the averaging weight c_{k+1} = w_k / Σ w and the coefficient of y's step;
    advances the counters (step k, lr_max, Σ w)."""
    k = counters["step"]
    warmup = hp["warmup_steps"]
    lr = hp["lr"] * torch.where(k < warmup, (k + 1) / warmup, 1.0)
    lr_max = counters["lr_max"].copy_(torch.maximum(lr, counters["lr_max"]))
    weight = (k + 1) ** hp["r"] * lr_max ** hp["weight_lr_power"]
    weight_sum = counters["weight_sum"].add_(weight)
    ckp1 = torch.where(weight_sum > 0, weight / weight_sum, 0.0)
    return {"k": k.clone(), "ckp1": ckp1, "neg_lr": -lr, "y_step": lr * (beta * (1 - ckp1) - 1),
            "weight_decay": hp["weight_decay"]}


def interpolate(y: Tensor, z: Tensor, direction: Tensor, c: Mapping[str, Tensor]) -> None:
    """y ← (1 - c) y + c z + lr (β(1 - c) - 1) d;  z ← z - lr d (the base step)."""
    y.lerp_(z, c["ckp1"])
    y.addcmul_(direction, c["y_step"])
    z.addcmul_(direction, c["neg_lr"])


# -- AdamW ------------------------------------------------------------------------------------
def adamw_init(param: Tensor, hp: Mapping[str, Tensor], opts: Mapping[str, Any]) -> State:
    return _init(param, hp, adam=True)


def adamw_coefficients(hp: Mapping[str, Tensor], counters: dict,
                       opts: Mapping[str, Any]) -> dict:
    c = averaging(hp, counters, hp["beta1"])
    c.update(beta2=hp["beta2"], one_minus_beta2=1 - hp["beta2"], eps=hp["eps"],
             bias_correction2=1 - hp["beta2"] ** (c.pop("k") + 1))
    counters["step"].add_(1)
    return c


def adamw_update(p: Tensor, g: Tensor, s: State, c: Mapping[str, Tensor],
                 opts: Mapping[str, Any]) -> None:
    """v = β2 v + (1-β2) g²; d = g / (√(v / (1-β2ᵏ)) + eps) + wd·y; then the averaging step."""
    v = s["exp_avg_sq"]
    v.mul_(c["beta2"]).addcmul_(g * c["one_minus_beta2"], g)
    denom = v.div(c["bias_correction2"]).sqrt_().add_(c["eps"])
    direction = torch.div(g, denom, out=denom).addcmul_(p, c["weight_decay"])
    interpolate(p, s["z"], direction, c)


# -- SGD --------------------------------------------------------------------------------------
def sgd_init(param: Tensor, hp: Mapping[str, Tensor], opts: Mapping[str, Any]) -> State:
    return _init(param, hp, adam=False)


def sgd_coefficients(hp: Mapping[str, Tensor], counters: dict, opts: Mapping[str, Any]) -> dict:
    c = averaging(hp, counters, hp["momentum"])
    del c["k"]
    counters["step"].add_(1)
    return c


def sgd_update(p: Tensor, g: Tensor, s: State, c: Mapping[str, Tensor],
               opts: Mapping[str, Any]) -> None:
    """d = g + wd·y; then the averaging step."""
    interpolate(p, s["z"], torch.addcmul(g, p, c["weight_decay"]), c)


# -- the optimizers: train / eval --------------------------------------------------------------
class ScheduleFree(MetaOptimizer):
    """Base of the Schedule-Free optimizers: the ``train()`` / ``eval()`` weight switch.
    ``interpolation`` names the hyperparameter β of ``y = (1-β) z + β x``."""

    flat_ok = True
    schedule_free = True  # never pair with a decaying schedule
    interpolation = "beta1"

    @torch.no_grad()
    def eval(self) -> None:
        """Parameters to the averaged weights x (for evaluation and saving the model)."""
        self._switch(False, lambda beta: 1 - 1 / beta)

    @torch.no_grad()
    def train(self) -> None:
        """Parameters back to the gradient point y (before stepping)."""
        self._switch(True, lambda beta: 1 - beta)

    def _switch(self, training: bool, weight: Callable[[Tensor], Tensor]) -> None:
        for group in self.param_groups:
            if group["train_mode"] == training:
                continue
            w = weight(group.hparams[self.interpolation])
            for p in group["params"]:
                state = self.state.get(p)
                if state and "z" in state:
                    p.lerp_(state["z"], per_member(w, p))
            group["train_mode"] = training

    @property
    def training(self) -> bool:
        return all(g["train_mode"] for g in self.param_groups)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        if not all(g["train_mode"] for g in self.param_groups):
            raise RuntimeError(f"{type(self).__name__}.step() in eval mode: the parameters "
                               f"hold the averaged weights; call optimizer.train() first")
        return super().step(closure)


class AdamWScheduleFree(ScheduleFree):
    """Schedule-Free AdamW with the arguments and defaults of the authors'
    ``schedulefree.AdamWScheduleFree`` (lr 0.0025; ``weight_decay`` is applied at y, inside
    the step)."""

    hypers = (Hyper("lr"), SF_BETAS, Hyper("eps"), Hyper("weight_decay"),
              Hyper("warmup_steps"), Hyper("r"), Hyper("weight_lr_power"))
    init = staticmethod(adamw_init)
    coefficients = staticmethod(adamw_coefficients)
    update = staticmethod(adamw_update)
    rule = staticmethod(per_parameter(adamw_coefficients, adamw_update))

    def __init__(self, params, lr: float | Tensor = 0.0025,
                 betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
                 eps: float | Tensor = 1e-8, weight_decay: float | Tensor = 0,
                 warmup_steps: float | Tensor = 0, r: float | Tensor = 0.0,
                 weight_lr_power: float | Tensor = 2.0, foreach: bool | None = None, *,
                 population: int | None = None, backend: str = "auto") -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        warmup_steps=warmup_steps, r=r, weight_lr_power=weight_lr_power,
                        foreach=foreach, train_mode=True)
        super().__init__(params, defaults, population=population, backend=backend)


class SGDScheduleFree(ScheduleFree):
    """Schedule-Free SGD with the arguments and defaults of the authors'
    ``schedulefree.SGDScheduleFree`` (lr 1.0, momentum 0.9 in (0, 1))."""

    hypers = (Hyper("lr"), Hyper("momentum", low_open=True, high=1.0, high_open=True),
              Hyper("weight_decay"), Hyper("warmup_steps"), Hyper("r"),
              Hyper("weight_lr_power"))
    interpolation = "momentum"
    init = staticmethod(sgd_init)
    coefficients = staticmethod(sgd_coefficients)
    update = staticmethod(sgd_update)
    rule = staticmethod(per_parameter(sgd_coefficients, sgd_update))

    def __init__(self, params, lr: float | Tensor = 1.0, momentum: float | Tensor = 0.9,
                 weight_decay: float | Tensor = 0, warmup_steps: float | Tensor = 0,
                 r: float | Tensor = 0.0, weight_lr_power: float | Tensor = 2.0,
                 foreach: bool | None = None, *, population: int | None = None,
                 backend: str = "auto") -> None:
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                        warmup_steps=warmup_steps, r=r, weight_lr_power=weight_lr_power,
                        foreach=foreach, train_mode=True)
        super().__init__(params, defaults, population=population, backend=backend)
