"""Small in-memory datasets for the built-in tasks: scikit-learn's bundled data, no downloads.

Each dataset is loaded, split (fixed permutation) and standardised once per process
(``functools.cache``); the cached tensors are shared, so nothing may modify them in place.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import Tensor

SPLIT_SEED = 0  # the fixed train/validation permutation


class Split(NamedTuple):
    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor


def _split(x: Tensor, y: Tensor, n_val: int) -> Split:
    """Fixed random split; features standardised with the training mean and std."""
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(SPLIT_SEED))
    val, train = order[:n_val], order[n_val:]
    mean, std = x[train].mean(0), x[train].std(0)
    std = torch.where(std > 0, std, torch.ones_like(std))  # constant pixels stay 0
    x = (x - mean) / std
    return Split(x[train], y[train], x[val], y[val])


@functools.cache
def digits() -> Split:
    """8x8 digits (1,797 images): 1,347 train / 450 validation, 64 features, 10 classes."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.long)
    return _split(x, y, n_val=450)


@functools.cache
def breast_cancer() -> Split:
    """Wisconsin breast cancer (569 cases): 455 train / 114 validation, 30 features, binary."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    x = torch.tensor(data.data, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.float32)
    return _split(x, y, n_val=114)


def minibatches(
    x: Tensor, y: Tensor, batch_size: int, generator: torch.Generator
) -> Iterator[tuple[Tensor, Tensor]]:
    """Endless shuffled epochs of ``(x, y)`` batches; the last partial batch of an epoch is
    dropped so every batch has the same shape (populations stack them)."""
    n = len(x)
    batch_size = min(batch_size, n)
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - batch_size + 1, batch_size):
            idx = order[start : start + batch_size]
            yield x[idx], y[idx]
