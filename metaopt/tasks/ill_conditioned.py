"""Ill-conditioned linear regression: where curvature information pays.

32 features, standard normal, scaled by 10^(0 .. 1.5) (1.5 decades, so the Hessian XᵀX/n has
condition number ≈ 10³) and then mixed by a fixed random rotation, so that the ill
conditioning is not axis-aligned (a diagonal preconditioner such as Adam's cannot undo it; a
full-matrix one — Newton, L-BFGS, K-FAC, Shampoo — can). Targets y = Xw* + 0.1·noise with w*
standard normal; 2,048 training rows in batches of 256, 512 validation rows. Validation loss
is the mean squared error (the noise floor is 0.01).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from metaopt.tasks.task import Task, module_device

FEATURES, TRAIN, VAL, BATCH, NOISE, DECADES = 32, 2048, 512, 256, 0.1, 1.5


@functools.cache
def dataset() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(x_train, y_train, x_val, y_val), drawn once from a fixed seed."""
    gen = torch.Generator().manual_seed(1234)
    scales = 10 ** torch.linspace(0, DECADES, FEATURES)
    rotation, _ = torch.linalg.qr(torch.randn(FEATURES, FEATURES, generator=gen))
    w = torch.randn(FEATURES, 1, generator=gen)

    def draw(n: int) -> tuple[Tensor, Tensor]:
        x = (torch.randn(n, FEATURES, generator=gen) * scales) @ rotation.T
        return x, x @ w + NOISE * torch.randn(n, 1, generator=gen)

    return (*draw(TRAIN), *draw(VAL))


def model() -> nn.Module:
    return nn.Linear(FEATURES, 1)


def loss(module: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    x, y = batch
    return (module(x) - y).pow(2).mean()


def data(generator: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
    x, y, _, _ = dataset()
    while True:
        order = torch.randperm(TRAIN, generator=generator)
        for start in range(0, TRAIN, BATCH):
            idx = order[start:start + BATCH]
            yield x[idx], y[idx]


@torch.no_grad()
def evaluate(module: nn.Module) -> float:
    _, _, x, y = dataset()
    device = module_device(module)
    return float(loss(module, (x.to(device), y.to(device))))


def condition_number() -> float:
    """cond(XᵀX) of the training features (≈ 10³)."""
    x = dataset()[0]
    values = torch.linalg.eigvalsh(x.T @ x / TRAIN)
    return float(values[-1] / values[0])


def ill_conditioned_regression() -> Task:
    return Task(
        name="ill_conditioned_regression",
        model=model,
        loss=loss,
        data=data,
        evaluate=evaluate,
        steps=500,
        default_optimizer="adam",
        default_hparams={"lr": 0.3},
        target=0.08,
        description="linear regression, 32 rotated features scaled over 1.5 decades "
        "(cond ≈ 1e3), batch 256, validation MSE (noise floor 0.01)",
    )
