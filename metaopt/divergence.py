"""When a run has diverged: the one rule that ``metaopt.train``, the monitor and the population
trainer all apply.

A loss diverges when it is not finite, or when it exceeds ``blowup`` times the size of the
run's first loss, ``max(|first|, 1)``: the absolute value so that losses that start negative
(log-likelihoods, policy objectives) are judged too, and the floor of 1 so that a first loss at
or near zero does not make every later wobble count as a blow-up.
"""

from __future__ import annotations

import torch
from torch import Tensor

BLOWUP = 1e6
OK, NOT_FINITE, BLOWN_UP = 0, 1, 2


def judge(losses: Tensor, first: Tensor, blowup: float = BLOWUP) -> Tensor:
    """Per loss: ``OK``, ``NOT_FINITE`` or ``BLOWN_UP`` (an int tensor shaped like ``losses``);
    ``first`` holds each run's first loss."""
    losses, first = losses.double(), first.double()
    finite = torch.isfinite(losses)
    blown = finite & (losses > blowup * first.abs().clamp(min=1.0))
    return torch.where(finite, torch.where(blown, BLOWN_UP, OK), NOT_FINITE)


def reason(verdict: int, loss: float, step: int, blowup: float = BLOWUP) -> str | None:
    """The text of a :func:`judge` verdict (None for ``OK``)."""
    if verdict == NOT_FINITE:
        return f"loss is {loss} at step {step}"
    if verdict == BLOWN_UP:
        return f"loss exceeded {blowup:g} x max(|first loss|, 1) at step {step}"
    return None


def check(loss: float, first: float, step: int, blowup: float = BLOWUP) -> str | None:
    """One run's loss at ``step``: the divergence reason, or None."""
    verdict = int(judge(torch.tensor(loss), torch.tensor(first), blowup))
    return reason(verdict, loss, step, blowup)
