"""Truncated unrolls: the meta-objective of a learned optimizer and its gradient.

A :class:`Pool` keeps ``B`` problems of one family in flight, each at its own step of its own
horizon (so problems are not in lock step), with the optimizer's state. :func:`unroll`
advances the pool by ``steps`` inner steps through the network, building the graph from the
network's weights to the optimizee losses, and returns the truncation's meta-loss.

The meta-loss is the paper's — the sum over the truncation of the batch-mean loss
(``kind="sum"``) — or the mean of its logarithm (``kind="log"``), which weights a halving of
the loss the same whatever its scale, so quadratics (losses ~1e-1 … 1e2) and networks
(~1e-2 … 2) can be mixed. With ``second_order=False`` (the paper's approximation) the
optimizee gradients are constants; then ``∂f(θ_t)/∂θ_t`` is exactly the gradient already
computed, so the loss term is replaced by ``g_t · θ_t`` — same meta-gradient, and the backward
pass never goes through the optimizee again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from learned.problems import Family, Problems

State = dict[str, Tensor]


@dataclass
class Pool:
    """``B`` problems in flight: parameters, optimizer state per tensor, step and horizon."""

    family: Family
    problems: Problems
    states: list[State]
    t: Tensor
    horizon: Tensor

    @classmethod
    def start(cls, family: Family, net: nn.Module, seeds: Tensor, horizon: Tensor) -> Pool:
        problems = family.sample(seeds)
        states = [net.init_state(p) for p in problems.params]
        return cls(family, problems, states, torch.zeros_like(seeds), horizon.clone())

    def to(self, dtype: torch.dtype) -> Pool:
        """The pool in another floating dtype (float64 for gradient checks)."""
        cast = lambda x: x.to(dtype) if x.is_floating_point() else x  # noqa: E731
        self.problems.params = [cast(p) for p in self.problems.params]
        self.states = [{k: cast(v) for k, v in s.items()} for s in self.states]
        self.problems.data = {k: [cast(x) for x in v] if isinstance(v, list) else cast(v)
                              for k, v in self.problems.data.items()}
        return self

    def finished(self) -> Tensor:
        """``[B]`` mask: problems past their horizon or no longer finite."""
        done = self.t >= self.horizon
        for p in self.problems.params:
            done |= ~p.reshape(len(p), -1).isfinite().all(dim=1)
        return done

    def replace(self, net: nn.Module, mask: Tensor, seeds: Tensor, horizon: Tensor) -> None:
        """Start fresh problems (``seeds``, ``horizon``: one per masked member) in place of
        the masked members; their optimizer state starts afresh too."""
        if not bool(mask.any()):
            return
        index = mask.nonzero().squeeze(1)
        new = self.family.sample(seeds)
        for i, p in enumerate(new.params):
            self.problems.params[i] = self.problems.params[i].index_copy(0, index, p)
            fresh = net.init_state(p)
            self.states[i] = {k: v.index_copy(0, index, fresh[k].to(v.dtype))
                              for k, v in self.states[i].items()}
        for key, value in new.data.items():
            old = self.problems.data[key]
            if isinstance(value, list):
                self.problems.data[key] = [o.index_copy(0, index, v) for o, v in zip(old, value)]
            else:
                self.problems.data[key] = old.index_copy(0, index, value)
        self.problems.seeds = self.problems.seeds.index_copy(0, index, seeds)
        self.t = self.t.index_fill(0, index, 0)
        self.horizon = self.horizon.index_copy(0, index, horizon)

    def state_dict(self) -> dict[str, Any]:
        return {"params": self.problems.params, "data": self.problems.data,
                "seeds": self.problems.seeds, "states": self.states, "t": self.t,
                "horizon": self.horizon}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.problems = Problems(saved["seeds"], list(saved["params"]), dict(saved["data"]))
        self.states, self.t, self.horizon = list(saved["states"]), saved["t"], saved["horizon"]


def _value_and_grad(family: Family, theta: list[Tensor], problems: Problems, t: Tensor,
                    second_order: bool) -> tuple[Tensor, list[Tensor], Tensor]:
    """Per-problem losses, their gradients (zero for non-finite problems) and the mask of
    finite problems. Second order: the gradients stay in the graph (``create_graph``)."""
    second_order = second_order and torch.is_grad_enabled()  # no graph wanted: values only
    if not second_order:
        theta = [p.detach().requires_grad_(True) for p in theta]
    with torch.enable_grad():
        loss = family.loss(theta, problems.data, problems.seeds, t)
        grads = torch.autograd.grad(loss.sum(), theta, create_graph=second_order)
    ok = loss.detach().isfinite()
    for g in grads:
        ok &= g.detach().reshape(len(g), -1).isfinite().all(dim=1)
    grads = [torch.where(ok.view(-1, *[1] * (g.dim() - 1)), g, 0.0) for g in grads]
    if not second_order:
        grads = [g.detach() for g in grads]
    return loss, grads, ok


def _rows(x: Tensor) -> Tensor:
    """Per-problem sums: ``[B, ...]`` -> ``[B]``."""
    return x.reshape(len(x), -1).sum(dim=1)


def unroll(net: nn.Module, pool: Pool, steps: int, *, second_order: bool = False,
           kind: str = "log", power: float = 0.0) -> tuple[Tensor, float]:
    """Advance ``pool`` by ``steps`` steps; returns ``(meta_loss, value)``: a scalar to
    backpropagate into ``net`` and the truncation's meta-loss as a float. The pool keeps
    the (detached) end state, so the next call continues the same problems.

    ``power`` > 0 weights each problem's loss at step ``t`` by ``(t / horizon)^power``: the
    final losses are what an optimizer is judged by, and a uniform average over the run
    rewards rules that start fast and stall."""
    dtype = pool.problems.params[0].dtype
    lr = torch.ones((), dtype=dtype)
    theta = [p.detach().requires_grad_(second_order) for p in pool.problems.params]
    state = [{k: v.detach() for k, v in s.items()} for s in pool.states]
    t = pool.t
    _, grads, _ = _value_and_grad(pool.family, theta, pool.problems, t, second_order)
    terms, values = [], []
    for _ in range(steps):
        updated = [net(g, s, lr) for g, s in zip(grads, state)]
        theta = [p + delta for p, (delta, _) in zip(theta, updated)]
        state = [s for _, s in updated]
        t = t + 1
        loss, grads, ok = _value_and_grad(pool.family, theta, pool.problems, t, second_order)
        w = (t.to(dtype) / pool.horizon.to(dtype)).clamp(0, 1) ** power if power \
            else torch.ones_like(loss)
        w = torch.where(ok, w, 0.0).detach()
        total = w.sum().clamp_min(1e-12)
        value = (w * torch.where(ok, loss, 0.0)).detach().sum() / total  # weighted mean loss
        if second_order:
            surrogate = (w * loss).sum() / total
        else:  # same gradient: d f/d θ is the constant gradient already computed
            surrogate = sum((_rows(g * p) * w).sum() for g, p in zip(grads, theta)) / total
        share = total / len(w)  # the step's weight: mean over problems
        scale = share / (steps * value.clamp_min(1e-30)) if kind == "log" else share
        terms.append(scale * surrogate)
        values.append((share, value))
    pool.problems.params = [p.detach() for p in theta]
    pool.states = [{k: v.detach() for k, v in s.items()} for s in state]
    pool.t = t
    share, stacked = (torch.stack(x) for x in zip(*values))
    if kind == "log":
        value = (share * stacked.clamp_min(1e-30).log()).sum() / steps
    else:
        value = (share * stacked).sum()
    return torch.stack(terms).sum(), float(value)
