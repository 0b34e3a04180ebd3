"""``LSTMOptimizer``: a learned optimizer as a ``torch.optim.Optimizer``.

It runs a meta-trained network (by default the checkpoint shipped in the package) on each
parameter's gradient. It is a metaopt optimizer like any other: registered as ``lstm``, with
populations (``population=P``: every member is stepped independently, per-tensor statistics
per member), ``state_dict`` round trips that carry the network's weights, and one tensor
hyperparameter, ``lr``, a multiplier on the learned step (1 = as meta-trained).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from learned import nets
from learned.per_tensor import PerTensorNet, coordinate_step
from metaopt.optim import backends
from metaopt.optim.hyperparams import Hyper
from metaopt.optim.optimizer import MetaOptimizer, State

Checkpoint = str | os.PathLike | Mapping[str, Any] | nn.Module | None


def coordinate_step_(param: Tensor, grad: Tensor, moments: list[Tensor], v: Tensor,
                     coef: dict[str, Any], w1: Tensor, w2: Tensor, unrolled: bool) -> Tensor:
    """:func:`coordinate_step` writing the parameter and accumulators in place (``[P, N]``
    views); returns the statistics. One fused pass when compiled (``unrolled``)."""
    delta, new_moments, new_v, stats = coordinate_step(grad, moments, v, coef, w1, w2, unrolled)
    param.add_(delta)
    for m, new in zip(moments, new_moments):
        m.copy_(new)
    v.copy_(new_v)
    return stats


def _members(t: Tensor, population: bool) -> Tensor:
    return t if population else t.unsqueeze(0)


def _unmembers(t: Tensor, population: bool) -> Tensor:
    return t if population else t.squeeze(0)


def init(param: Tensor, hp: Mapping[str, Tensor], opts: Mapping[str, Any]) -> State:
    population = opts["population"] is not None
    state = opts["net"].init_state(_members(param.detach(), population))
    return {k: _unmembers(v, population) for k, v in state.items()}


def _step_fast(net: PerTensorNet, param: Tensor, grad: Tensor, state: State, lr: Tensor,
               population: bool, runner: backends.Runner) -> None:
    """The per-tensor LSTM eagerly, then the coordinates in one in-place kernel."""
    member = {k: _members(v, population) for k, v in state.items()}
    P = member["v"].shape[0]
    flat = lambda x: _members(x, population).view(P, -1)  # noqa: E731
    g = _members(grad, population).reshape(P, -1)  # read only: a copy is fine
    coef, new = net.coefficients(member, lr, torch.linalg.vecdot(g, g) / g.shape[1])
    moments = [flat(state[f"m{i}"]) for i in range(len(net.betas))]
    args = (flat(param), g, moments, flat(state["v"]), coef, net.w1, net.w2)
    stats = runner.run(lambda: coordinate_step_(*args, False),
                       lambda: backends.compiled(coordinate_step_)(*args, True), param.numel())
    for key, value in new.items():
        state[key] = _unmembers(value, population)
    state["stats"] = _unmembers(stats, population)


def rule(params: list[Tensor], grads: list[Tensor], states: list[State],
         hp: Mapping[str, Tensor], opts: Mapping[str, Any]) -> None:
    """Apply the network to every parameter: in place, never reading tensors into Python."""
    net, population, lr = opts["net"], opts["population"] is not None, hp["lr"]
    for param, grad, state in zip(params, grads, states):
        contiguous = param.is_contiguous() and all(
            v.is_contiguous() for v in state.values() if isinstance(v, Tensor))
        if isinstance(net, PerTensorNet) and contiguous:
            _step_fast(net, param, grad, state, lr, population, opts["runner"])
            continue
        member = {k: _members(v, population) for k, v in state.items()}
        delta, new = net(_members(grad, population), member, lr)
        param.add_(_unmembers(delta, population))
        for key, value in new.items():
            state[key] = _unmembers(value, population)


def _resolve(checkpoint: Checkpoint) -> tuple[nn.Module, str | None]:
    if isinstance(checkpoint, nn.Module):
        return checkpoint, None
    if isinstance(checkpoint, Mapping):
        return nets.from_checkpoint(dict(checkpoint)), None
    path = nets.DEFAULT_CHECKPOINT if checkpoint is None else checkpoint
    return nets.load(path), os.fspath(path)


class LSTMOptimizer(MetaOptimizer):
    """A meta-trained optimizer (Andrychowicz et al. 2016, with RNNprop-style inputs).

    Args:
        params: parameters or param groups, as for any torch optimizer.
        checkpoint: a checkpoint file written by :func:`learned.meta_train` (loaded with
            ``weights_only=True``), a checkpoint dict, a network module, or None for the
            pretrained one shipped in ``learned/checkpoints/lstm.pt``.
        lr: multiplies every learned step (1.0: as meta-trained); a tensor hyperparameter, so
            searches, schedules and PBT can drive it.
        population: step ``P`` stacked members independently (see :mod:`metaopt.optim`).
        backend: ``auto`` (compile the per-coordinate kernel once large tensors have spent
            a compilation's worth of time), ``compiled``, ``eager`` or ``reference``.
    """

    hypers = (Hyper("lr"),)
    init = staticmethod(init)
    rule = staticmethod(rule)
    supports_population = True

    def __init__(self, params: Iterable, checkpoint: Checkpoint = None, lr: float = 1.0, *,
                 population: int | None = None, backend: str = "auto") -> None:
        self.net, self.checkpoint = _resolve(checkpoint)
        self._runner = backends.Runner(backend)
        super().__init__(params, dict(lr=lr), population=population, backend=backend)
        devices = {p.device for g in self.param_groups for p in g["params"]}
        if len(devices) == 1 and next(iter(devices)).type != "cpu":
            self.net = self.net.to(next(iter(devices)))  # the network runs beside the params

    def options(self, group: Any) -> dict[str, Any]:  # type: ignore[override]
        return {**MetaOptimizer.options(group), "net": self.net, "runner": self._runner}

    def state_dict(self) -> dict[str, Any]:
        """torch.optim's format plus ``learned``: the network's checkpoint dict."""
        sd = super().state_dict()
        sd["learned"] = nets.to_checkpoint(self.net)
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        payload = state_dict.pop("learned", None)
        if payload is not None:
            self.net = nets.from_checkpoint(payload)
        super().load_state_dict(state_dict)

    def adopt_state(self, param: Tensor, state: State, group: Any) -> None:
        """Loaded state takes the parameter's dtype and device (the step count included)."""
        for key, value in state.items():
            if isinstance(value, Tensor):
                state[key] = value.to(param.device, param.dtype)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_runner", backends.Runner(self.defaults["backend"]))
