"""Optimizers with a train / eval weight switch, and the hook every trainer calls.

Schedule-Free optimizers (:mod:`metaopt.optim.schedulefree`, the authors' ``schedulefree``
package) train at one point and evaluate at another: ``optimizer.eval()`` moves the
parameters to the weights to evaluate, ``optimizer.train()`` back to where gradients are
taken. Trainers don't ask which optimizer they hold: they call :func:`train_mode` before
stepping and evaluate inside :func:`evaluating`, which do nothing for optimizers without the
two methods (``torch.optim.Optimizer`` has neither).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def has_modes(optimizer: Any) -> bool:
    """Whether ``optimizer`` has a train / eval switch (callable ``train`` and ``eval``)."""
    return callable(getattr(optimizer, "train", None)) and callable(
        getattr(optimizer, "eval", None))


def train_mode(optimizer: Any) -> None:
    """``optimizer.train()`` where it has the switch (before stepping)."""
    if has_modes(optimizer):
        optimizer.train()


def eval_mode(optimizer: Any) -> None:
    """``optimizer.eval()`` where it has the switch (before evaluating or saving a model)."""
    if has_modes(optimizer):
        optimizer.eval()


@contextmanager
def evaluating(optimizer: Any) -> Iterator[None]:
    """Evaluate at the optimizer's evaluation weights; back in train mode afterwards."""
    eval_mode(optimizer)
    try:
        yield
    finally:
        train_mode(optimizer)
