"""SGD with momentum, dampening, Nesterov and weight decay (torch.optim.SGD's algorithm)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from metaopt.optim.elementwise import nonzero, per_parameter, row, torch_fused
from metaopt.optim.hyperparams import Hyper
from metaopt.optim.members import new_step
from metaopt.optim.optimizer import MetaOptimizer, State


def init(param: Tensor, hp: Mapping[str, Tensor], opts: Mapping[str, Any]) -> State:
    state = {"step": new_step(param, opts["population"])}
    if opts["uses_momentum"]:
        state["momentum_buffer"] = torch.zeros_like(param, memory_format=torch.preserve_format)
    return state


def coefficients(hp: Mapping[str, Tensor], counters: dict, opts: Mapping[str, Any]) -> dict:
    """The first step of a momentum buffer copies the gradient (as torch does); members are
    told apart by their own step counts, so a reset member restarts its buffer."""
    momentum = hp["momentum"]
    first = counters["step"] == 0
    counters["step"].add_(1)
    return {"neg_lr": -hp["lr"], "weight_decay": hp["weight_decay"], "momentum": momentum,
            "decays": nonzero(hp["weight_decay"]),
            "decay": torch.where(first, 0.0, momentum),
            "keep": 1 - torch.where(first | (momentum == 0), 0.0, hp["dampening"])}


def update(p: Tensor, g: Tensor, s: State, c: Mapping[str, Tensor],
           opts: Mapping[str, Any]) -> None:
    """p -= lr * d, where d is the gradient (plus weight decay) or its momentum average."""
    if c["decays"]:
        g = torch.addcmul(g, p, c["weight_decay"])
    if "momentum_buffer" in s:
        buf = s["momentum_buffer"]
        buf.mul_(c["decay"]).addcmul_(g, c["keep"])
        g = torch.addcmul(g, buf, c["momentum"]) if opts["nesterov"] else buf
    p.addcmul_(g, c["neg_lr"])


def fused_rows(bucket: Any, grad: Tensor, hp: Mapping[str, Tensor],
               opts: Mapping[str, Any]) -> bool:
    """The eager backend's fast path on CPU: torch's fused SGD kernel over the flat buffer (per
    member row for a population of large members; see :func:`torch_fused`). A member whose
    momentum is 0 while the group keeps buffers (torch's kernel would leave its buffer alone)
    takes the generic update instead."""
    calls = torch_fused(bucket, hp, ("lr", "momentum", "dampening", "weight_decay"))
    if calls is None:
        return False
    buffer = bucket.state.get("momentum_buffer")
    if buffer is not None and any(v["momentum"] == 0 for _, v in calls):
        return False
    step = bucket.state["step"]
    first = (step[0] == 0).tolist()
    for i, v in calls:
        torch._fused_sgd_([row(bucket.param, i)], [row(grad, i)],
                          [] if buffer is None else [row(buffer, i)],
                          weight_decay=v["weight_decay"],
                          momentum=0.0 if buffer is None else v["momentum"], lr=v["lr"],
                          dampening=v["dampening"], nesterov=opts["nesterov"],
                          maximize=opts.get("maximize", False),
                          is_first_step=first if i is None else first[i])
    step.add_(1)  # every parameter's counter row advances together
    return True


class SGD(MetaOptimizer):
    """Stochastic gradient descent, torch.optim.SGD's arguments, defaults and trajectory.

    A momentum buffer is kept when ``momentum`` is non-zero for any member at construction
    (or is later set non-zero through ``param_groups``), as torch allocates one lazily.
    """

    hypers = (Hyper("lr"), Hyper("momentum"), Hyper("dampening", low=-float("inf")),
              Hyper("weight_decay"))
    init = staticmethod(init)
    coefficients = staticmethod(coefficients)
    update = staticmethod(update)
    rule = staticmethod(per_parameter(coefficients, update))
    fused_rows = staticmethod(fused_rows)
    flat_ok = True

    def __init__(self, params, lr: float | Tensor = 1e-3, momentum: float = 0,
                 dampening: float = 0, weight_decay: float | Tensor = 0,
                 nesterov: bool = False, *, maximize: bool = False,
                 foreach: bool | None = None, differentiable: bool = False,
                 fused: bool | None = None,
                 population: int | None = None, backend: str = "auto") -> None:
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening,
                        weight_decay=weight_decay, nesterov=nesterov, maximize=maximize,
                        foreach=foreach, differentiable=differentiable, fused=fused)
        super().__init__(params, defaults, population=population, backend=backend)

    def check_group(self, group) -> None:
        nonzero = bool((group.hparams["momentum"] != 0).any())
        if group["nesterov"] and (not nonzero or bool((group.hparams["dampening"] != 0).any())):
            raise ValueError(f"{group.owner}: nesterov=True requires momentum > 0 and "
                             f"dampening = 0 for every member")
        group["uses_momentum"] = group.get("uses_momentum") or nonzero

    def on_write(self, group, key) -> None:
        """torch starts using momentum as soon as it is non-zero: do the same."""
        if key == "momentum" and not group["uses_momentum"]:
            if bool((group.hparams["momentum"] != 0).any()):
                group["uses_momentum"] = True
                self._invalidate_buckets(group)
                for p in group["params"]:
                    state = self.state.get(p)
                    if state and "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.zeros_like(p)
                        state["step"].zero_()

    def adopt_state(self, param, state, group) -> None:
        if "step" not in state:  # torch's SGD keeps no step count
            state["step"] = 1 if state.get("momentum_buffer") is not None else 0
        if state.get("momentum_buffer", 0) is None:
            del state["momentum_buffer"]
        super().adopt_state(param, state, group)
