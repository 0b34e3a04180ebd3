"""Inputs of the learned optimizers: gradient preprocessing and per-step features.

Everything here is a pure function of tensors, differentiable and free of Python branches on
tensor values, so the same code runs in meta-training (under autograd), in the optimizer's
eager step and under ``torch.compile``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def log_sign(grad: Tensor, p: float = 10.0) -> tuple[Tensor, Tensor]:
    """Andrychowicz et al. (2016), appendix A: ``(log|g|/p, sgn g)`` where ``|g| >= e^-p``,
    else ``(-1, e^p g)``. Gradients span many orders of magnitude; this puts them on one
    scale the LSTM can read while keeping the sign."""
    small = grad.abs() < math.exp(-p)
    magnitude = torch.where(small, torch.full_like(grad, -1.0),
                            torch.log(grad.abs().clamp_min(math.exp(-p))) / p)
    sign = torch.where(small, grad * math.exp(p), torch.sign(grad))
    return magnitude, sign


def time_features(step: Tensor, scales: tuple[float, ...]) -> Tensor:
    """``tanh(t / s)`` for each time scale ``s``: ``[*step.shape, len(scales)]``. Saturating,
    so a run longer than any seen in meta-training looks like the end of a long one rather
    than an input the network never saw."""
    scale = torch.tensor(scales, dtype=step.dtype, device=step.device)
    return torch.tanh(step.unsqueeze(-1) / scale)


def squash(x: Tensor) -> Tensor:
    """``sign(x) log(1 + |x|)``: statistics whose range is unknown, brought near [-3, 3]."""
    return torch.sign(x) * torch.log1p(x.abs())


def bias_correction(beta: float, step: Tensor) -> Tensor:
    """``1 / (1 - beta^t)`` (Adam's), for the step count ``t >= 1``."""
    return 1.0 / (1.0 - beta ** step)


def member_mean(x: Tensor) -> Tensor:
    """The mean over everything but the leading member dimension: ``[P]``."""
    return x.reshape(x.shape[0], -1).mean(dim=1)


def per_member(value: Tensor, like: Tensor) -> Tensor:
    """A ``[P]`` value viewed as ``[P, 1, ...]`` to broadcast against ``like`` (``[P, ...]``)."""
    return value.reshape(value.shape[0], *([1] * (like.dim() - 1)))
