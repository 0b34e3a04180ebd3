"""A GRU on the adding problem (Hochreiter & Schmidhuber 1997), with short sequences.

Each sequence has ``LENGTH`` steps of two channels: a value drawn uniformly from [0, 1) and a
marker that is 1 at exactly two steps (one in each half). The target is the sum of the two
marked values. Predicting the mean (1.0) scores a mean squared error of 1/6 ≈ 0.167.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaopt.tasks.task import Task, module_device

LENGTH = 10
HIDDEN = 32
BATCH_SIZE = 64
VAL_SIZE = 1000
VAL_SEED = 10_000


def sample(n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``n`` adding-problem sequences ``[n, LENGTH, 2]`` and their targets ``[n]``."""
    values = torch.rand(n, LENGTH, generator=generator)
    half = LENGTH // 2
    first = torch.randint(0, half, (n,), generator=generator)
    second = torch.randint(half, LENGTH, (n,), generator=generator)
    marks = F.one_hot(first, LENGTH) + F.one_hot(second, LENGTH)
    x = torch.stack([values, marks.float()], dim=-1)
    y = (values * marks).sum(-1)
    return x, y


@functools.cache
def validation() -> tuple[Tensor, Tensor]:
    return sample(VAL_SIZE, torch.Generator().manual_seed(VAL_SEED))


class GRURegressor(nn.Module):
    """GRU(2 → 32) reading the sequence, linear read-out of the last hidden state."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(2, HIDDEN, batch_first=True)
        self.head = nn.Linear(HIDDEN, 1)

    def forward(self, x: Tensor) -> Tensor:
        hidden, _ = self.gru(x)
        return self.head(hidden[:, -1]).squeeze(-1)


def loss(module: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    x, y = batch
    return F.mse_loss(module(x), y)


def data(generator: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
    """Fresh sequences every batch (the task has no fixed training set)."""
    while True:
        yield sample(BATCH_SIZE, generator)


@torch.no_grad()
def evaluate(module: nn.Module) -> float:
    x, y = validation()
    device = module_device(module)
    return float(loss(module, (x.to(device), y.to(device))))


def sequence_gru() -> Task:
    return Task(
        name="sequence_gru",
        model=GRURegressor,
        loss=loss,
        data=data,
        evaluate=evaluate,
        steps=200,
        default_optimizer="adam",
        default_hparams={"lr": 1e-2},
        target=0.01,
        description=f"GRU (hidden {HIDDEN}) on the adding problem, length {LENGTH}, batch "
        f"{BATCH_SIZE}; validation MSE on {VAL_SIZE} fixed sequences (predicting 1.0 scores 0.167)",
    )
