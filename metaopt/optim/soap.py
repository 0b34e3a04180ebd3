"""SOAP (Vyas et al. 2024, "SOAP: Improving and Stabilizing Shampoo using Adam"): AdamW run in
the eigenbasis of Shampoo's preconditioner.

Per parameter (per block, as in :mod:`metaopt.optim.kronecker`) one factor per dimension is
an exponential average of the gradient's covariance along it, Lᵢ ← β Lᵢ + (1-β) GᵢGᵢᵀ (β =
``shampoo_beta``); every ``precondition_frequency`` steps its eigenvectors Qᵢ are recomputed
(``eigh``). The gradient is rotated into that basis, G' = G ×₁ Q₁ᵀ ... ×ₖ Qₖᵀ, where Adam's
second and first moments live (the first is carried into each new basis exactly,
m' = Pᵀ m P with P = Q_oldᵀ Q_new per dimension; the authors keep it in the original space
and rotate it every step, two more products of the parameter's size), and the normalised
step is rotated back:
p ← p(1 - lr·wd) - lr/(1-β₁ᵗ) · Q(m' / (√(v/(1-β₂ᵗ)) + ε)).

As in the authors' code, a parameter's first gradient only builds its factors and basis
(the rotated gradient is then one coordinate plus rounding noise, which Adam would blow up
to full-size steps); its moments and bias correction start at the second step. Unlike it,
the factors are updated with the current gradient *before* the basis and the step; bases
come from ``eigh`` each time (the authors use one power iteration + QR after the first);
and when a basis changes, the second moment is carried into the new one as a diagonal,
v'ⱼ = Σᵢ (qᵢ·q'ⱼ)² vᵢ per dimension, where the authors keep v as it is (their QR step keeps
bases close; fresh ``eigh`` bases need not be, and a stale v there diverged on
ill_conditioned_regression). Dimensions longer than ``max_precond_dim`` and, unless
``precondition_1d``, vectors keep the identity basis: a parameter with no basis is stepped
by plain AdamW. The basis schedule counts steps per member on the host
(``kronecker.Clocked``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from metaopt.optim import kronecker as kr
from metaopt.optim.hyperparams import Hyper
from metaopt.optim.members import new_step, per_member
from metaopt.optim.optimizer import State
from metaopt.optim.shampoo import BETAS


def preconditioned_dims(param: Tensor, opts: Mapping[str, Any]) -> list[int]:
    """The block dimensions that get an eigenbasis."""
    shape = kr.member_shape(param, opts["population"] is not None)
    if len(shape) == 1 and not opts["precondition_1d"]:
        return []
    dims = kr.block_dims(shape, opts["block_size"])
    return [i for i, (b, _) in enumerate(dims) if b <= opts["max_precond_dim"]]


def init(param: Tensor, hp: Mapping[str, Tensor], opts: Mapping[str, Any]) -> State:
    population = opts["population"] is not None
    shape = kr.member_shape(param, population)
    dims = kr.block_dims(shape, opts["block_size"])
    lead = param.shape[0] if population else 1
    n = math.prod(count for _, count in dims)
    state = {"step": new_step(param, opts["population"]),
             "exp_avg": param.new_zeros(lead, n, *[b for b, _ in dims]),  # in the basis
             "exp_avg_sq": param.new_zeros(lead, n, *[b for b, _ in dims])}
    wide = kr.compute_dtype(param.dtype)
    for i in preconditioned_dims(param, opts):
        b = dims[i][0]
        state[f"factor_{i}"] = torch.zeros(lead, n, b, b, dtype=wide, device=param.device)
        eye = torch.eye(b, dtype=wide, device=param.device)
        state[f"basis_{i}"] = eye.expand(lead, n, b, b).clone()  # Adam until the first basis
    return state


def rotate(x: Tensor, s: State, dims: list[int], back: bool = False) -> Tensor:
    """x (blocked) into the eigenbasis (x ×ᵢ Qᵢᵀ), or back out of it (x ×ᵢ Qᵢ)."""
    for i in dims:
        q = s[f"basis_{i}"]
        x = kr.along(x, q.mT if back else q, i)
    return x


def rule(params: list[Tensor], grads: list[Tensor], states: list[State],
         hp: Mapping[str, Tensor], opts: Mapping[str, Any]) -> None:
    population = opts["population"] is not None
    block = opts["block_size"]
    refresh = kr.due(opts["clock"], 1, opts["precondition_frequency"])
    lr, beta1, beta2, beta = hp["lr"], hp["beta1"], hp["beta2"], hp["shampoo_beta"]
    for p, g, s in zip(params, grads, states):
        dims = preconditioned_dims(p, opts)
        first = [c == 0 and bool(dims) for c in opts["clock"]]  # a member's first step
        wide = kr.compute_dtype(p.dtype)
        blocks = kr.to_blocks(g, population, block).to(wide)
        m, v = s["exp_avg"], s["exp_avg_sq"]
        for i in dims:
            f = s[f"factor_{i}"].lerp_(kr.factor(blocks, i), per_member(1 - beta, s[f"factor_{i}"]))
            if any(refresh):
                basis = s[f"basis_{i}"]
                new = kr.eigenbasis(f, per_member=population)
                overlap = basis.mT @ new  # old coordinates -> new: P = Q_oldᵀ Q_new
                m.copy_(kr.select(refresh, kr.along(m, overlap.to(m.dtype), i), m))
                v.copy_(kr.select(refresh, kr.along(v, (overlap * overlap).to(v.dtype), i), v))
                basis.copy_(kr.select(refresh, new, basis))
        if all(first):
            continue  # the first gradient only builds the basis (as the authors do)
        if any(first):
            kept = {k: s[k].clone() for k in ("step", "exp_avg", "exp_avg_sq")}
            kept_param = p.clone()
        step = s["step"].add_(1).to(lr.dtype)
        rotated_grad = rotate(blocks, s, dims)
        m.lerp_(rotated_grad.to(m.dtype), per_member(1 - beta1, m))
        v.mul_(per_member(beta2, v)).addcmul_(rotated_grad.to(v.dtype) * per_member(1 - beta2, v),
                                              rotated_grad.to(v.dtype))
        denom = v.sqrt().div_(per_member((1 - beta2 ** step).sqrt(), v))
        denom.add_(per_member(hp["eps"], v))
        normalised = rotate(m.to(wide) / denom, s, dims, back=True)
        direction = kr.from_blocks(normalised, p, population, block).to(p.dtype)
        p.mul_(per_member(1 - lr * hp["weight_decay"], p))
        p.addcmul_(direction, per_member(-(lr / (1 - beta1 ** step)), p))
        if any(first):  # members in their first step keep their weights and moments
            for k, value in kept.items():
                s[k].copy_(kr.select(first, value, s[k]))
            p.copy_(kr.select(first, kept_param, p))


class SOAP(kr.Clocked):
    """SOAP (see the module docstring). Defaults are the authors': lr 3e-3, betas (0.95,
    0.95), shampoo_beta 0.95, eps 1e-8, weight_decay 0.01, a new basis every 10 steps,
    dimensions up to 10,000 preconditioned, vectors not."""

    hypers = (Hyper("lr"), BETAS, Hyper("shampoo_beta", high=1.0), Hyper("eps"),
              Hyper("weight_decay"))
    init = staticmethod(init)
    rule = staticmethod(rule)

    def __init__(self, params, lr: float | Tensor = 3e-3,
                 betas: tuple[float, float] = (0.95, 0.95), shampoo_beta: float = 0.95,
                 eps: float = 1e-8, weight_decay: float = 0.01,
                 precondition_frequency: int = 10, max_precond_dim: int = 10000,
                 precondition_1d: bool = False, block_size: int | None = None, *,
                 population: int | None = None, backend: str = "auto") -> None:
        for name, value in (("precondition_frequency", precondition_frequency),
                            ("max_precond_dim", max_precond_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SOAP: {name} must be a positive int, got {value!r}")
        if block_size is not None and (not isinstance(block_size, int) or block_size < 1):
            raise ValueError(f"SOAP: block_size must be a positive int or None, "
                             f"got {block_size!r}")
        defaults = dict(lr=lr, betas=betas, shampoo_beta=shampoo_beta, eps=eps,
                        weight_decay=weight_decay, precondition_frequency=precondition_frequency,
                        max_precond_dim=max_precond_dim, precondition_1d=precondition_1d,
                        block_size=block_size)
        super().__init__(params, defaults, population=population, backend=backend)
