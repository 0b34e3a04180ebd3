"""ReduceLROnPlateau: the one schedule that is state, not a function of the step."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from metaopt.schedules.families import F64, to64


class ReduceOnPlateau:
    """torch ``ReduceLROnPlateau`` over 0-d or ``[P]`` values (one plateau tracker per member).

    Call ``step(val_loss)`` once per evaluation (``val_loss`` a float, 0-d or ``[P]`` tensor);
    ``value`` is the current lr (a Python float unless a tensor was involved). Build it with
    ``create({"name": "reduce_on_plateau", ...})``; ``base_lr`` (default 1.0) is the starting
    value that torch takes from the optimizer.
    """

    def __init__(
        self,
        base_lr: float | Tensor = 1.0,
        mode: str = "min",
        factor: float | Tensor = 0.1,
        patience: int | Tensor = 10,
        threshold: float | Tensor = 1e-4,
        threshold_mode: str = "rel",
        cooldown: int | Tensor = 0,
        min_lr: float | Tensor = 0.0,
        eps: float | Tensor = 1e-8,
    ) -> None:
        hp = dict(factor=factor, patience=patience, threshold=threshold, cooldown=cooldown,
                  min_lr=min_lr, eps=eps)
        self._tensor = any(isinstance(v, Tensor) for v in (base_lr, *hp.values()))
        self.lr = torch.as_tensor(base_lr, dtype=F64).clone()
        self._hp = {key: to64(v, self.lr.device) for key, v in hp.items()}
        self.mode, self.threshold_mode = mode, threshold_mode
        self.best = torch.tensor(math.inf if mode == "min" else -math.inf, dtype=F64)
        self.num_bad_epochs = torch.zeros((), dtype=F64)
        self.cooldown_counter = torch.zeros((), dtype=F64)

    @property
    def value(self) -> Tensor | float:
        return self.lr.clone() if self._tensor else float(self.lr)

    def __call__(self, k: Any = None) -> Tensor | float:
        """The current value, whatever the step: so every schedule is driven as ``s(k)``."""
        return self.value

    def _is_better(self, current: Tensor) -> Tensor:
        t = self._hp["threshold"]
        if self.mode == "min":
            bar = self.best * (1.0 - t) if self.threshold_mode == "rel" else self.best - t
            return current < bar
        bar = self.best * (t + 1.0) if self.threshold_mode == "rel" else self.best + t
        return current > bar

    def step(self, metrics: float | Tensor) -> None:
        """Record one validation value per member and reduce the lr where it plateaued."""
        self._tensor = self._tensor or isinstance(metrics, Tensor)
        current = torch.as_tensor(metrics, dtype=F64, device=self.lr.device)
        hp = self._hp
        better = self._is_better(current)
        self.best = torch.where(better, current, self.best)
        bad = torch.where(better, 0.0, self.num_bad_epochs + 1)
        in_cooldown = self.cooldown_counter > 0
        cooldown = torch.where(in_cooldown, self.cooldown_counter - 1, self.cooldown_counter)
        bad = torch.where(in_cooldown, 0.0, bad)
        reduce = bad > hp["patience"]
        new_lr = torch.maximum(self.lr * hp["factor"], hp["min_lr"])
        self.lr = torch.where(reduce & (self.lr - new_lr > hp["eps"]), new_lr, self.lr)
        self.cooldown_counter = torch.where(reduce, hp["cooldown"], cooldown)
        self.num_bad_epochs = torch.where(reduce, 0.0, bad)

    def state_dict(self) -> dict[str, Tensor]:
        return {key: getattr(self, key).clone()
                for key in ("lr", "best", "num_bad_epochs", "cooldown_counter")}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        for key, value in state.items():
            setattr(self, key, value.clone())

