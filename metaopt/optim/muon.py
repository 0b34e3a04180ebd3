"""Muon (Jordan et al. 2024): momentum, then an approximately orthogonal update per matrix.

The orthogonalisation is a quintic Newton–Schulz iteration run in bfloat16, exactly as
torch.optim.Muon does it; for a population every member's matrix is orthogonalised on its own
(a batched matmul over the member dimension).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from metaopt.optim.hyperparams import Hyper
from metaopt.optim.members import member_ndim, per_member
from metaopt.optim.optimizer import MetaOptimizer, State

ADJUST_LR_FNS = (None, "original", "match_rms_adamw")


def orthogonalize(update: Tensor, coefficients: tuple[float, float, float], steps: int,
                  eps: Tensor | float) -> Tensor:
    """Newton–Schulz iterations towards U Vᵀ of each matrix in ``update`` (``[..., m, n]``).

    The coefficients maximise the slope at zero rather than converging exactly: singular
    values land near, not at, one, which does not hurt training (Keller Jordan's note).
    """
    a, b, c = coefficients
    x = update.bfloat16()
    tall = update.size(-2) > update.size(-1)
    if tall:
        x = x.mT
    norm = torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True)
    if isinstance(eps, Tensor):
        eps = per_member(eps, norm)
    x = x.div_(norm.clamp(min=eps))
    for _ in range(steps):
        gram = x @ x.mT
        if x.dim() == 2:
            x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
        else:
            x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if tall else x


def lr_ratio(shape: tuple[int, ...], adjust_lr_fn: str | None) -> float:
    """Scale of the learning rate for one ``rows × cols`` matrix (torch's ``adjust_lr_fn``)."""
    rows, cols = shape[-2], shape[-1]
    if adjust_lr_fn in (None, "original"):
        return math.sqrt(max(1, rows / cols))
    return 0.2 * math.sqrt(max(rows, cols))


def init(param: Tensor, hp: Mapping[str, Tensor], opts: Mapping[str, Any]) -> State:
    return {"momentum_buffer": torch.zeros_like(param, memory_format=torch.preserve_format)}


def rule(params: list[Tensor], grads: list[Tensor], states: list[State],
         hp: Mapping[str, Tensor], opts: Mapping[str, Any]) -> None:
    """B = μB + (1-μ)g; O = NS(g + μ(B - g)) (Nesterov) or NS(B); p ← p(1 - lr·wd) - lr·r·O."""
    lr, momentum = hp["lr"], hp["momentum"]
    for p, g, s in zip(params, grads, states):
        buf = s["momentum_buffer"].lerp_(g, per_member(1 - momentum, p))
        update = g.lerp(buf, per_member(momentum, p)) if opts["nesterov"] else buf
        update = orthogonalize(update, opts["ns_coefficients"], opts["ns_steps"], hp["eps"])
        ratio = lr_ratio(tuple(p.shape), opts["adjust_lr_fn"])
        p.mul_(per_member(1 - lr * hp["weight_decay"], p))
        p.sub_(per_member(lr * ratio, p) * update.to(p.dtype))


class Muon(MetaOptimizer):
    """Muon with torch.optim.Muon's arguments, defaults and trajectory (2-D parameters only;
    give embeddings, heads, biases and norms to AdamW, e.g. with :class:`Composite`)."""

    hypers = (Hyper("lr"), Hyper("weight_decay"), Hyper("momentum"), Hyper("eps"))
    init = staticmethod(init)
    rule = staticmethod(rule)

    def __init__(self, params, lr: float = 1e-3, weight_decay: float = 0.1,
                 momentum: float = 0.95, nesterov: bool = True,
                 ns_coefficients: tuple[float, float, float] = (3.4445, -4.775, 2.0315),
                 eps: float = 1e-7, ns_steps: int = 5, adjust_lr_fn: str | None = None, *,
                 population: int | None = None, backend: str = "auto") -> None:
        if adjust_lr_fn not in ADJUST_LR_FNS:
            raise ValueError(f"Muon: adjust_lr_fn must be one of {ADJUST_LR_FNS}, "
                             f"got {adjust_lr_fn!r}")
        if not 0 < ns_steps < 100:
            raise ValueError(f"Muon: ns_steps must be in [1, 100), got {ns_steps}")
        if len(ns_coefficients) != 3:
            raise ValueError("Muon: ns_coefficients must be a tuple of exactly 3 values")
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                        nesterov=nesterov, ns_coefficients=tuple(ns_coefficients), eps=eps,
                        ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn)
        super().__init__(params, defaults, population=population, backend=backend)

    def check_group(self, group) -> None:
        population = group.population is not None
        for i, p in enumerate(group["params"]):
            if member_ndim(p, population) != 2:
                shape = tuple(p.shape[1:] if population else p.shape)
                raise ValueError(
                    f"{group.owner}: Muon only supports 2-D parameters (hidden matrices); "
                    f"parameter {i} has member shape {shape}. Give it to AdamW via "
                    f"metaopt.optim.Composite / muon_groups")
