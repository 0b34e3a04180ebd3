"""Random 10-d quadratics f(θ) = ||Wθ − y||², the training family of Andrychowicz et al. (2016),
"Learning to learn by gradient descent by gradient descent".

W (10×10) and y (10) are i.i.d. standard normal, drawn from ``seed`` (one problem instance per
seed); θ starts at a standard-normal draw from torch's global RNG (the framework seeds it).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from metaopt.tasks.task import Task, module_device

DIM = 10


@functools.cache
def instance(seed: int) -> tuple[Tensor, Tensor]:
    """The problem instance ``(W, y)`` for ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(DIM, DIM, generator=gen)
    y = torch.randn(DIM, generator=gen)
    return w, y


class Theta(nn.Module):
    """A module holding nothing but the parameter vector θ."""

    def __init__(self, dim: int = DIM) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.randn(dim))


def loss(module: Theta, batch: tuple[Tensor, Tensor]) -> Tensor:
    w, y = batch
    return (w @ module.theta - y).pow(2).sum()


def data(seed: int, generator: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
    """Deterministic objective: every batch is the instance ``(W, y)``; ``generator`` is unused."""
    w, y = instance(seed)
    while True:
        yield w, y


@torch.no_grad()
def evaluate(seed: int, module: Theta) -> float:
    w, y = instance(seed)
    device = module_device(module)
    return float(loss(module, (w.to(device), y.to(device))))


def quadratic(seed: int = 0) -> Task:
    """The quadratic instance drawn from ``seed`` (the registered ``quadratic`` is seed 0; other
    instances declare no target)."""
    return Task(
        name="quadratic" if seed == 0 else f"quadratic-{seed}",
        model=Theta,
        loss=loss,
        data=functools.partial(data, seed),
        evaluate=functools.partial(evaluate, seed),
        steps=100,
        default_optimizer="adam",
        default_hparams={"lr": 0.1},
        target=1.5 if seed == 0 else math.inf,  # measured for instance 0 only
        description=f"10-d random quadratic ||Wθ − y||² (instance seed {seed}), full batch",
    )
