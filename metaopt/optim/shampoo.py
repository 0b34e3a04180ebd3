"""Shampoo (Gupta et al. 2018; Anil et al. 2020, "Scalable second order optimization"), with
learning-rate grafting as in Distributed Shampoo (Shi et al. 2023).

Per parameter, and per block of ≤ ``block_size`` along every dimension, one factor per
dimension accumulates the gradient's covariance along it, Lᵢ ← β Lᵢ + GᵢGᵢᵀ (β =
``shampoo_beta``; 1 sums, as the original; below 1 an exponential average with weight 1-β).
Every ``precondition_frequency`` steps the inverse roots (Lᵢ + εI)^(-1/2k) are recomputed by
eigendecomposition (k = the block's number of dimensions: -1/4 for matrices, -1/2 for
vectors). The preconditioned momentum S = M ×₁ L₁^(-1/2k) ... ×ₖ Lₖ^(-1/2k) is then grafted
onto the step of a first-order optimizer D (``grafting``): per block, U = S · ‖D‖ / ‖S‖, so
the simple optimizer's tuned step size carries over (Agarwal et al. 2020). Before
``start_preconditioning_step`` the update is D itself: Shampoo is then exactly that optimizer
(``"adam"``: torch's AdamW; ``"sgd"``: torch's SGD with momentum; ``"none"``: raw Shampoo).

For a population every member has its own factors (one batched ``eigh`` over members and
blocks); the root schedule counts steps per member on the host (``kronecker.Clocked``), so
each member follows its own count (kept on the host, so no value is read back).
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

GRAFTS = ("adam", "sgd", "none")
BETAS = Hyper("betas", low=0.0, high=1.0, high_open=True, parts=("beta1", "beta2"))


def _blocked_zeros(param: Tensor, opts: Mapping[str, Any], dim: int, eye: bool = False
                   ) -> Tensor:
    population = opts["population"] is not None
    shape = kr.member_shape(param, population)
    dims = kr.block_dims(shape, opts["block_size"])
    b = dims[dim][0]
    n = math.prod(count for _, count in dims)
    lead = param.shape[0] if population else 1
    dtype = kr.compute_dtype(param.dtype)
    if eye:
        return torch.eye(b, dtype=dtype, device=param.device).expand(lead, n, b, b).clone()
    return torch.zeros(lead, n, b, b, dtype=dtype, device=param.device)


def init(param: Tensor, hp: Mapping[str, Tensor], opts: Mapping[str, Any]) -> State:
    population = opts["population"] is not None
    state = {"step": new_step(param, opts["population"]),
             "momentum_buffer": torch.zeros_like(param, memory_format=torch.preserve_format)}
    if opts["grafting"] == "adam":
        state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
    for i in range(len(kr.member_shape(param, population))):
        state[f"factor_{i}"] = _blocked_zeros(param, opts, i)
        state[f"root_{i}"] = _blocked_zeros(param, opts, i, eye=True)  # S = M until the first
    return state


def graft_direction(g: Tensor, s: State, hp: Mapping[str, Tensor], opts: Mapping[str, Any]
                    ) -> tuple[Tensor, Tensor]:
    """(D, -step size): the grafted optimizer's direction and its negated scale, in torch's
    order of operations. Adam: D = m / (√v̂ + ε), scale lr / (1 - β₁ᵗ); SGD: D = buf = μ·buf
    + g, scale lr; none: D = m, scale lr / (1 - β₁ᵗ)."""
    lr, beta1, beta2 = hp["lr"], hp["beta1"], hp["beta2"]
    buf = s["momentum_buffer"]
    if opts["grafting"] == "sgd":
        buf.mul_(per_member(beta1, g)).add_(g)
        return buf, per_member(-lr, g)
    step = s["step"].to(lr.dtype)
    neg_scale = per_member(-(lr / (1 - beta1 ** step)), g)
    buf.lerp_(g, per_member(1 - beta1, g))
    if opts["grafting"] == "none":
        return buf, neg_scale
    exp_avg_sq = s["exp_avg_sq"]
    exp_avg_sq.mul_(per_member(beta2, g)).addcmul_(torch.mul(g, per_member(1 - beta2, g)), g)
    denom = exp_avg_sq.sqrt().div_(per_member((1 - beta2 ** step).sqrt(), g))
    denom.add_(per_member(hp["graft_eps"], g))
    return torch.div(buf, denom, out=denom), neg_scale


def rule(params: list[Tensor], grads: list[Tensor], states: list[State],
         hp: Mapping[str, Tensor], opts: Mapping[str, Any]) -> None:
    """factors ← β·factors + GGᵀ; roots every f steps; p(1 - lr·wd) - scale·graft(S, D)."""
    population = opts["population"] is not None
    block = opts["block_size"]
    start, freq = opts["start_preconditioning_step"], opts["precondition_frequency"]
    refresh = kr.due(opts["clock"], start, freq)
    precondition = [c + 1 >= start for c in opts["clock"]]
    eps = hp["eps"].view(-1, 1, 1) if population else hp["eps"]
    lr, beta = hp["lr"], hp["shampoo_beta"]
    for p, g, s in zip(params, grads, states):
        s["step"].add_(1)
        k = len(kr.member_shape(p, population))
        blocks = kr.to_blocks(g, population, block).to(kr.compute_dtype(p.dtype))
        weight = torch.where(beta == 1, 1.0, 1 - beta)
        for i in range(k):
            f = s[f"factor_{i}"]
            f.mul_(per_member(beta, f)).add_(kr.factor(blocks, i) * per_member(weight, f))
            if any(refresh):
                root = s[f"root_{i}"]
                new = kr.inverse_root(f, 2 * k, eps)
                root.copy_(kr.select(refresh, new, root))
        direction, neg_scale = graft_direction(g, s, hp, opts)
        if any(precondition):
            m = kr.to_blocks(s["momentum_buffer"], population, block).to(blocks.dtype)
            for i in range(k):
                m = kr.along(m, s[f"root_{i}"], i)
            d = kr.to_blocks(direction, population, block).to(blocks.dtype)
            if opts["grafting"] != "none":
                dims = tuple(range(2, m.dim()))
                norm_s = torch.linalg.vector_norm(m, dim=dims, keepdim=True)
                norm_d = torch.linalg.vector_norm(d, dim=dims, keepdim=True)
                m = m * (norm_d / norm_s.clamp(min=1e-30))
            grafted = kr.from_blocks(m, p, population, block).to(p.dtype)
            direction = kr.select(precondition, grafted, direction)
        p.mul_(per_member(1 - lr * hp["weight_decay"], p))
        p.addcmul_(direction, neg_scale)


class Shampoo(kr.Clocked):
    """Shampoo with grafting (see the module docstring). Defaults follow Distributed Shampoo:
    β₁ 0.9, factor β 1 (sums), ε 1e-12, blocks of 1024, roots every 100 steps; the grafted
    Adam's β₂ 0.999 and ε 1e-8 (``graft_eps``)."""

    hypers = (Hyper("lr"), BETAS, Hyper("shampoo_beta", high=1.0), Hyper("eps"),
              Hyper("graft_eps"), Hyper("weight_decay"))
    init = staticmethod(init)
    rule = staticmethod(rule)

    def __init__(self, params, lr: float | Tensor = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), shampoo_beta: float = 1.0,
                 eps: float = 1e-12, graft_eps: float = 1e-8, weight_decay: float = 0.0,
                 grafting: str = "adam", precondition_frequency: int = 100,
                 start_preconditioning_step: int | None = None, block_size: int = 1024, *,
                 population: int | None = None, backend: str = "auto") -> None:
        if grafting not in GRAFTS:
            raise ValueError(f"Shampoo: grafting must be one of {GRAFTS}, got {grafting!r}")
        for name, value in (("precondition_frequency", precondition_frequency),
                            ("block_size", block_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Shampoo: {name} must be a positive int, got {value!r}")
        if start_preconditioning_step is None:
            start_preconditioning_step = precondition_frequency
        if not start_preconditioning_step >= 1:
            raise ValueError(f"Shampoo: start_preconditioning_step must be >= 1, got "
                             f"{start_preconditioning_step!r}")
        defaults = dict(lr=lr, betas=betas, shampoo_beta=shampoo_beta, eps=eps,
                        graft_eps=graft_eps, weight_decay=weight_decay, grafting=grafting,
                        precondition_frequency=precondition_frequency,
                        start_preconditioning_step=start_preconditioning_step,
                        block_size=block_size)
        super().__init__(params, defaults, population=population, backend=backend)
