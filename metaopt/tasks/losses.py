"""Supervised losses that know how to score a whole stacked population at once.

``Supervised(criterion)`` is a task's ``loss(module, batch)``: ``criterion(module(x), y)`` with
the criterion's mean reduction. Its :meth:`~Supervised.members` gives every member's loss
from the members' stacked outputs in one call of the criterion (``reduction="none"``, then a
mean per member), which the population's hand-batched forward uses instead of vmapping the
loss (the batching rules of losses such as cross-entropy run through Python decompositions).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

Criterion = Callable[..., Tensor]  # criterion(output, target, reduction="mean" | "none")


@dataclass(frozen=True)
class Supervised:
    """``criterion(module(x), y)`` (``squeeze``: of ``module(x).squeeze(-1)``, for one
    logit per example)."""

    criterion: Criterion
    squeeze: bool = False

    def __call__(self, module: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        out = module(x)
        return self.criterion(out.squeeze(-1) if self.squeeze else out, y)

    def members(self, output: Tensor, batch: tuple[Tensor, Tensor], shared: bool) -> Tensor:
        """``[P]``: member i's loss from ``output[i]`` (``[P, batch, ...]``) and its targets
        (``batch[1]``: ``[P, batch, ...]``, or one ``[batch, ...]`` shared by all)."""
        P = output.shape[0]
        out = output.squeeze(-1) if self.squeeze else output
        y = batch[1].expand(P, *batch[1].shape) if shared else batch[1]
        per_element = self.criterion(out.flatten(0, 1), y.flatten(0, 1), reduction="none")
        return per_element.reshape(P, -1).mean(1)
