"""The 2-d Rosenbrock function (1 − x)² + 100 (y − x²)², from (−1.5, 2): a curved, badly
conditioned valley with its minimum 0 at (1, 1)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn

from metaopt.tasks.task import Task, module_device

START = (-1.5, 2.0)
COEFFICIENTS = (1.0, 100.0)  # (a, b) in (a − x)² + b (y − x²)²


class Point(nn.Module):
    """The 2-d point being optimised; deterministic start."""

    def __init__(self) -> None:
        super().__init__()
        self.xy = nn.Parameter(torch.tensor(START))


def loss(module: Point, batch: Tensor) -> Tensor:
    a, b = batch[..., 0], batch[..., 1]
    x, y = module.xy[0], module.xy[1]
    return (a - x).pow(2) + b * (y - x * x).pow(2)


def data(generator: torch.Generator) -> Iterator[Tensor]:
    """Deterministic objective: every batch is the coefficient pair ``(a, b)``."""
    batch = torch.tensor(COEFFICIENTS)
    while True:
        yield batch


@torch.no_grad()
def evaluate(module: Point) -> float:
    return float(loss(module, torch.tensor(COEFFICIENTS, device=module_device(module))))


def rosenbrock() -> Task:
    return Task(
        name="rosenbrock",
        model=Point,
        loss=loss,
        data=data,
        evaluate=evaluate,
        steps=1000,
        default_optimizer="adam",
        default_hparams={"lr": 0.02},
        target=0.1,
        description="2-d Rosenbrock valley from (-1.5, 2); minimum 0 at (1, 1)",
    )
