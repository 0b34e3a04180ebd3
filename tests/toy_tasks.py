"""Small deterministic tasks shared by the search and PBT tests."""

import torch
from torch import nn

from metaopt.tasks import Task


def regression(name: str = "toy", steps: int = 20) -> Task:
    """A float64 regression MLP (4-8-1, tanh) whose batches come from a Python generator (so a
    resume must replay them): population members and separate runs agree to rounding."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(96, 4, generator=g, dtype=torch.float64)
    y = torch.sin(x @ torch.randn(4, 1, generator=g, dtype=torch.float64))

    def model():
        return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)).double()

    def loss(module, batch):
        xb, yb = batch
        return ((module(xb) - yb) ** 2).mean()

    def data(generator):
        while True:
            idx = torch.randint(0, 96, (16,), generator=generator)
            yield x[idx], y[idx]

    @torch.no_grad()
    def evaluate(module):
        return float(loss(module, (x, y)))

    return Task(name, model, loss, data, evaluate, steps=steps)
