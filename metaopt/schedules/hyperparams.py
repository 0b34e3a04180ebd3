"""Writing schedule values into hyperparameter tensors or optimizer param groups."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from metaopt.optim import hyperparams
from metaopt.schedules.plateau import ReduceOnPlateau
from metaopt.schedules.registry import Schedule, Step


def apply(schedule: Schedule | ReduceOnPlateau, target: Any, k: Step | None = None,
          key: str = "lr") -> None:
    """Write ``schedule(k)`` into ``target`` in place.

    ``target`` is a hyperparameter tensor (``copy_``, broadcasting a scalar over ``[P]``) or an
    optimizer, whose hyperparameter ``key`` (a flat name: ``lr``, ``beta1``, ``momentum``, ...,
    see :func:`metaopt.optim.hyperparams.write`) every group gets; ``key="betas"`` sets the
    first element, as torch's CyclicLR / OneCycleLR do for beta1. A :class:`ReduceOnPlateau`
    writes its ``value``.
    """
    if k is None and not isinstance(schedule, ReduceOnPlateau):
        raise TypeError(f"apply: schedule '{schedule.name}' needs the step k")
    value = schedule(k)
    if isinstance(target, Tensor):
        with torch.no_grad():
            target.copy_(value) if isinstance(value, Tensor) else target.fill_(value)
        return
    if not hasattr(target, "param_groups"):
        raise TypeError(f"apply: expected a tensor or an optimizer, got {type(target).__name__}")
    hyperparams.write(target, "beta1" if key == "betas" else key, value)
