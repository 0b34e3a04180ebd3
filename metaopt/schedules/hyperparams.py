"""Writing schedule values into hyperparameter tensors or optimizer param groups."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from metaopt.schedules.plateau import ReduceOnPlateau
from metaopt.schedules.registry import Schedule, Step


def apply(schedule: Schedule | ReduceOnPlateau, target: Any, k: Step | None = None,
          key: str = "lr") -> None:
    """Write ``schedule(k)`` into ``target`` in place.

    ``target`` is a hyperparameter tensor (``copy_``, broadcasting a scalar over ``[P]``) or
    anything with a ``param_groups`` list of dicts, where ``group[key]`` is a tensor (``copy_``),
    a float (assigned), or a tuple such as Adam's ``betas`` (its first element is set, as torch's
    CyclicLR / OneCycleLR do for beta1). A :class:`ReduceOnPlateau` writes its ``value``.
    """
    if isinstance(schedule, ReduceOnPlateau):
        value = schedule.value
    elif k is None:
        raise TypeError(f"apply: schedule '{schedule.name}' needs the step k")
    else:
        value = schedule(k)
    if isinstance(target, Tensor):
        _write(target, value)
        return
    groups = getattr(target, "param_groups", None)
    if groups is None:
        raise TypeError(f"apply: expected a tensor or an optimizer, got {type(target).__name__}")
    for i, group in enumerate(groups):
        if key not in group:
            raise KeyError(f"apply: param_groups[{i}] has no hyperparameter '{key}'")
        entry = group[key]
        if isinstance(entry, tuple):
            group[key] = (_set(entry[0], value), *entry[1:])
        else:
            group[key] = _set(entry, value)


def _write(tensor: Tensor, value: Tensor | float) -> None:
    with torch.no_grad():
        if isinstance(value, Tensor):
            tensor.copy_(value)
        else:
            tensor.fill_(value)


def _set(entry: Any, value: Tensor | float) -> Any:
    """The new entry: tensors are written in place, floats replaced."""
    if isinstance(entry, Tensor):
        _write(entry, value)
        return entry
    if isinstance(value, Tensor):
        if value.dim() != 0:
            raise ValueError(
                "apply: a per-member [P] value needs tensor hyperparameters, got a float entry")
        return float(value)
    return value
