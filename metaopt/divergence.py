"""When a run has diverged: the one rule ``metaopt.train``, the monitor and the population
trainer apply. A loss diverges when it is not finite, or exceeds ``blowup`` times
``max(|first loss|, 1)``: the size, so that losses that start negative are judged too; the
floor, so that a first loss near zero does not make every later wobble a blow-up."""

from __future__ import annotations

import math

import torch
from torch import Tensor

BLOWUP = 1e6
OK, NOT_FINITE, BLOWN_UP = 0, 1, 2


def judge(losses: Tensor, first: Tensor, blowup: float = BLOWUP) -> Tensor:
    """Per loss ``OK``, ``NOT_FINITE`` or ``BLOWN_UP``; ``first`` holds each run's first loss."""
    losses, first = losses.double(), first.double()
    finite = torch.isfinite(losses)
    blown = finite & (losses > blowup * first.abs().clamp(min=1.0))
    return torch.where(finite, torch.where(blown, BLOWN_UP, OK), NOT_FINITE)


def verdict(loss: float, first: float, blowup: float = BLOWUP) -> int:
    """:func:`judge` of one loss, on Python floats (a population's per-step record: no
    tensor ops for a handful of members)."""
    if not math.isfinite(loss):
        return NOT_FINITE
    return BLOWN_UP if loss > blowup * max(abs(first), 1.0) else OK


def reason(verdict: int, loss: float, step: int, blowup: float = BLOWUP) -> str | None:
    """The text of a :func:`judge` verdict (None for ``OK``)."""
    if verdict == NOT_FINITE:
        return f"loss is {loss} at step {step}"
    return f"loss exceeded {blowup:g} x max(|first loss|, 1) at step {step}" if verdict else None


def check(loss: float, first: float, step: int, blowup: float = BLOWUP) -> str | None:
    """One run's loss at ``step``: the divergence reason, or None."""
    return reason(verdict(loss, first, blowup), loss, step, blowup)
