"""Small in-memory datasets for the built-in tasks: scikit-learn's bundled data, no downloads.

Each dataset is loaded, split (fixed permutation) and standardised once per process
(``functools.cache``); the cached tensors are shared, so nothing may modify them in place.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

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


class Minibatches(Iterator[tuple[Tensor, ...]]):
    """Endless shuffled epochs of batches of ``tensors`` (rows drawn together); the last
    partial batch of an epoch is dropped so every batch has the same shape.

    ``next_indices()`` advances like ``next()`` but returns only the row indices, so a
    population can draw every member's indices and gather all members' batches at once
    (``gather``), with exactly the batches each member would get on its own.
    """

    def __init__(self, tensors: tuple[Tensor, ...], batch_size: int,
                 generator: torch.Generator) -> None:
        self.tensors = tensors
        self.n = len(tensors[0])
        self.batch_size = min(batch_size, self.n)
        self.generator = generator
        self._order = torch.empty(0, dtype=torch.long)
        self._start = self.n  # start a new epoch on the first draw

    def next_indices(self) -> Tensor:
        if self._start + self.batch_size > self.n:
            self._order = torch.randperm(self.n, generator=self.generator)
            self._start = 0
        idx = self._order[self._start:self._start + self.batch_size]
        self._start += self.batch_size
        return idx

    def __next__(self) -> tuple[Tensor, ...]:
        idx = self.next_indices()
        return tuple(t[idx] for t in self.tensors)

    @staticmethod
    def gather(iterators: list[Minibatches]) -> tuple[Tensor, ...]:
        """The next batch of every iterator, stacked ``[P, batch, ...]`` (one gather per
        tensor); the iterators must share ``tensors``."""
        idx = torch.stack([it.next_indices() for it in iterators])
        return tuple(t[idx] for t in iterators[0].tensors)


@dataclass(frozen=True)
class TrainBatches:
    """``task.data`` of a supervised task: shuffled minibatches of a split's training part."""

    split: Callable[[], Split]
    batch_size: int

    def __call__(self, generator: torch.Generator) -> Minibatches:
        s = self.split()
        return minibatches(s.x_train, s.y_train, self.batch_size, generator)


@dataclass(frozen=True)
class ValidationLoss:
    """``task.evaluate`` of a supervised task: ``loss`` on the whole validation part."""

    split: Callable[[], Split]
    loss: Callable[[nn.Module, tuple[Tensor, Tensor]], Tensor]

    @torch.no_grad()
    def __call__(self, module: nn.Module) -> float:
        s = self.split()
        device = next((p.device for p in module.parameters()), torch.device("cpu"))
        return float(self.loss(module, (s.x_val.to(device), s.y_val.to(device))))


def minibatches(
    x: Tensor, y: Tensor, batch_size: int, generator: torch.Generator
) -> Minibatches:
    """Endless shuffled epochs of ``(x, y)`` batches (see :class:`Minibatches`)."""
    return Minibatches((x, y), batch_size, generator)
