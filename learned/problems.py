"""Batched optimizee families: many small training problems stepped as one.

Meta-training and the held-out benchmark both need hundreds of small problems at once, so a
family keeps ``B`` problems stacked (``[B, ...]`` parameters) and returns one loss per
problem. Every problem is determined by its seed alone — initial weights, data, and the
minibatch drawn at each step (a hash of seed, step and row, so a problem sees the same
batches whichever other problems run beside it): a learned optimizer and a baseline run on
the same seed see the same problem.

- ``quadratic``: the 10-d quadratics of the DeepMind L2L code, ``f(θ) = ||Wθ − y||²`` with
  ``W, y ~ U[0, 1)`` and ``θ₀ ~ N(0, 0.01²)``; scored in groups of 128 (the paper's batch).
- ``digits_mlp_*``: MLPs on the 8x8 digits (the paper's MNIST network scaled down): one
  hidden layer of 20 sigmoid units (the training family), ReLU and tanh variants, 40 units, two
  hidden layers; weights and biases ``~ N(0, 0.01²)`` as in the paper; batches of 128.
- ``logistic_breast_cancer``, ``digits_cnn``: metaopt's tasks of those names (their models,
  default initialisation and batch sizes).

``scale=r`` reparametrises every coordinate as ``θ = c·θ'`` with ``c = exp(U(−r, r))`` (Lv et
al. 2017's random scaling), so the optimizer cannot rely on one gradient scale.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from metaopt.tasks import datasets, digits_cnn, digits_mlp, logistic
from metaopt.tasks.task import LossModule

_MASK = (1 << 62) - 1


def _signed(x: int) -> int:
    """A 64-bit constant as the int64 torch stores (multiplication wraps around)."""
    return x - (1 << 64) if x >= 1 << 63 else x


_K = [_signed(k) for k in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB,
                           0x2545F4914F6CDD1D)]


def hashed_rows(seeds: Tensor, step: Tensor, count: int, n: int) -> Tensor:
    """``[B, count]`` row indices in ``[0, n)``, a deterministic hash of (seed, step, row):
    minibatches drawn with replacement, reproducible per problem."""
    rows = torch.arange(count, dtype=torch.int64, device=seeds.device)
    x = seeds.unsqueeze(1) * _K[0] + step.unsqueeze(1) * _K[1] + rows * _K[2]
    for shift in (31, 27, 33):
        x = (x ^ (x >> shift)) * _K[3]
    return (x & _MASK) % n


@dataclass
class Problems:
    """``B`` problems of one family: their seeds, current parameters (in the optimizer's
    coordinates) and fixed per-problem data (``W``/``y``, scalings)."""

    seeds: Tensor
    params: list[Tensor]
    data: dict[str, Any]


class Family:
    """Base class: subclasses draw problems (``_draw``) and define the loss (``_loss``)."""

    name = ""
    group = 1  # problems per scored seed

    def __init__(self, scale: float = 0.0) -> None:
        self.scale = float(scale)

    def sample(self, seeds: Tensor) -> Problems:
        """Fresh problems for ``seeds`` (``[B]`` int64)."""
        params, data = self._draw(seeds)
        if self.scale > 0:
            gens = [torch.Generator().manual_seed(int(s) ^ 0x5CA1E) for s in seeds]
            scales = []
            for p in params:
                u = torch.stack([torch.rand(p.shape[1:], generator=g) for g in gens])
                scales.append(torch.exp((2 * u - 1) * self.scale).to(p.dtype))
            params = [p / c for p, c in zip(params, scales)]
            data = dict(data, scales=scales)
        return Problems(seeds.clone(), params, data)

    def _true(self, params: list[Tensor], data: dict[str, Any]) -> list[Tensor]:
        return [p * c for p, c in zip(params, data["scales"])] if "scales" in data else params

    def loss(self, params: list[Tensor], data: dict[str, Any], seeds: Tensor,
             step: Tensor) -> Tensor:
        """``[B]`` training losses on the minibatch of ``step`` (``[B]`` int64)."""
        return self._loss(self._true(params, data), data, seeds, step)

    def final_loss(self, params: list[Tensor], data: dict[str, Any]) -> Tensor:
        """``[B]`` losses on the whole training set (the score)."""
        return self._full(self._true(params, data), data)

    def _draw(self, seeds: Tensor) -> tuple[list[Tensor], dict[str, Any]]:
        raise NotImplementedError

    def _loss(self, params, data, seeds, step) -> Tensor:
        raise NotImplementedError

    def _full(self, params, data) -> Tensor:
        raise NotImplementedError


class Quadratic(Family):
    """``||Wθ − y||²`` in 10-d, ``W, y ~ U[0,1)``, ``θ₀ ~ N(0, 0.01²)`` (DeepMind's L2L)."""

    name, group, dim = "quadratic", 128, 10

    def _draw(self, seeds: Tensor) -> tuple[list[Tensor], dict[str, Any]]:
        ws, ys, thetas = [], [], []
        for s in seeds.tolist():
            g = torch.Generator().manual_seed(int(s))
            ws.append(torch.rand(self.dim, self.dim, generator=g))
            ys.append(torch.rand(self.dim, generator=g))
            thetas.append(torch.randn(self.dim, generator=g) * 0.01)
        return [torch.stack(thetas)], {"w": torch.stack(ws), "y": torch.stack(ys)}

    def _full(self, params, data) -> Tensor:
        residual = torch.einsum("bij,bj->bi", data["w"].to(params[0].dtype), params[0])
        return (residual - data["y"].to(params[0].dtype)).pow(2).sum(-1)

    def _loss(self, params, data, seeds, step) -> Tensor:
        return self._full(params, data)


class ModuleFamily(Family):
    """Any small ``nn.Module`` on an in-memory dataset, vmapped over stacked weights."""

    def __init__(self, name: str, build: Callable[[], nn.Module],
                 loss: Callable[[nn.Module, Any], Tensor], split: Callable[[], Any],
                 batch_size: int, init_std: float | None, scale: float = 0.0) -> None:
        super().__init__(scale)
        self.name, self.build, self.split = name, build, split
        self.batch_size, self.init_std = batch_size, init_std
        self.module = LossModule(loss, build())  # the task's own loss, on swapped weights
        self.names = [n for n, _ in self.module.named_parameters()]

    def _draw(self, seeds: Tensor) -> tuple[list[Tensor], dict[str, Any]]:
        members = []
        for s in seeds.tolist():
            if self.init_std is None:  # the module's own initialisation, seeded
                with torch.random.fork_rng():
                    torch.manual_seed(int(s))
                    members.append([p.detach() for p in self.build().parameters()])
            else:
                g = torch.Generator().manual_seed(int(s))
                members.append([torch.randn(p.shape, generator=g) * self.init_std
                                for p in self.module.parameters()])
        return [torch.stack(ps) for ps in zip(*members)], {}

    def _apply(self, params: list[Tensor], x: Tensor, y: Tensor, batched_data: bool) -> Tensor:
        def one(ps: tuple[Tensor, ...], x: Tensor, y: Tensor) -> Tensor:
            return functional_call(self.module, dict(zip(self.names, ps)), ((x, y),))

        dims = (0, 0, 0) if batched_data else (0, None, None)
        return vmap(one, in_dims=dims)(tuple(params), x, y)

    def _loss(self, params, data, seeds, step) -> Tensor:
        split = self.split()
        rows = hashed_rows(seeds, step, self.batch_size, len(split.x_train))
        x, y = split.x_train[rows].to(params[0].dtype), split.y_train[rows]
        if y.is_floating_point():
            y = y.to(params[0].dtype)
        return self._apply(params, x, y, True)

    def _full(self, params, data) -> Tensor:
        split = self.split()
        y = split.y_train.to(params[0].dtype) if split.y_train.is_floating_point() \
            else split.y_train
        return self._apply(params, split.x_train.to(params[0].dtype), y, False)


def _digits_mlp(name: str, hidden: tuple[int, ...], activation: type[nn.Module],
                scale: float) -> Family:
    return ModuleFamily(name, functools.partial(digits_mlp.mlp, hidden, activation),
                        digits_mlp.loss, datasets.digits, digits_mlp.BATCH_SIZE, 0.01, scale)


def _logistic(scale: float) -> Family:
    return ModuleFamily("logistic_breast_cancer", logistic.model, logistic.loss,
                        datasets.breast_cancer, logistic.BATCH_SIZE, None, scale)


def _cnn(scale: float) -> Family:
    return ModuleFamily("digits_cnn", digits_cnn.model, digits_cnn.loss, datasets.digits,
                        digits_cnn.BATCH_SIZE, None, scale)


FAMILIES: dict[str, Callable[[float], Family]] = {
    "quadratic": Quadratic,
    "digits_mlp_sigmoid": functools.partial(_digits_mlp, "digits_mlp_sigmoid", (20,),
                                            nn.Sigmoid),
    "digits_mlp_relu": functools.partial(_digits_mlp, "digits_mlp_relu", (20,), nn.ReLU),
    "digits_mlp_tanh": functools.partial(_digits_mlp, "digits_mlp_tanh", (20,), nn.Tanh),
    "digits_mlp_sigmoid_40": functools.partial(_digits_mlp, "digits_mlp_sigmoid_40", (40,),
                                               nn.Sigmoid),
    "digits_mlp_sigmoid_2x20": functools.partial(_digits_mlp, "digits_mlp_sigmoid_2x20",
                                                 (20, 20), nn.Sigmoid),
    "logistic_breast_cancer": _logistic,
    "digits_cnn": _cnn,
}


def names() -> list[str]:
    return list(FAMILIES)


def get(name: str, scale: float = 0.0) -> Family:
    """The family called ``name``; ValueError naming the choices otherwise."""
    if name not in FAMILIES:
        raise ValueError(f"unknown problem family {name!r}; expected one of "
                         f"{', '.join(FAMILIES)}")
    return FAMILIES[name](scale)
