"""Per-dimension (Kronecker-factored) preconditioning: the pieces Shampoo and SOAP share.

A parameter is seen as ``[B, d1, ..., dk]``: B = 1 for one model, B = P members for a
population. With a block size b every dimension is cut into blocks of ≤ b (zero-padded to a
whole number of blocks), giving ``[B, N, b1, ..., bk]``: N blocks per member, each with its
own factor per dimension, ``[B, N, bi, bi]``, so every member and every block is one batch
entry of the same matmul / ``eigh`` call. Zero padding adds zero rows to the factors, which
changes nothing in the real rows (see :func:`inverse_root`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from metaopt.optim.optimizer import MetaOptimizer


def member_shape(param: Tensor, population: bool) -> tuple[int, ...]:
    shape = tuple(param.shape[1:] if population else param.shape)
    return shape or (1,)


def block_dims(shape: tuple[int, ...], block_size: int | None) -> list[tuple[int, int]]:
    """Per dimension (block length, number of blocks)."""
    out = []
    for d in shape:
        b = d if block_size is None else min(d, block_size)
        out.append((b, math.ceil(d / b)))
    return out


def to_blocks(x: Tensor, population: bool, block_size: int | None) -> Tensor:
    """``[P, ...]`` (or ``[...]``) -> ``[B, N, b1, ..., bk]`` (a copy when padded or permuted)."""
    shape = member_shape(x, population)
    x = x.reshape(x.shape[0] if population else 1, *shape)
    dims = block_dims(shape, block_size)
    pad = [n * b - d for d, (b, n) in zip(shape, dims)]
    if any(pad):
        x = F.pad(x, [v for p in reversed(pad) for v in (0, p)])
    if all(n == 1 for _, n in dims):
        return x.unsqueeze(1)
    k = len(shape)
    x = x.reshape(x.shape[0], *[v for b, n in dims for v in (n, b)])
    x = x.permute(0, *range(1, 2 * k, 2), *range(2, 2 * k + 1, 2))
    return x.reshape(x.shape[0], -1, *[b for b, _ in dims])


def from_blocks(x: Tensor, like: Tensor, population: bool, block_size: int | None) -> Tensor:
    """The inverse of :func:`to_blocks`: ``[B, N, b...]`` -> the shape of ``like``."""
    shape = member_shape(like, population)
    dims = block_dims(shape, block_size)
    k = len(shape)
    if not all(n == 1 for _, n in dims):
        x = x.reshape(x.shape[0], *[n for _, n in dims], *[b for b, _ in dims])
        x = x.permute(0, *[v for i in range(k) for v in (1 + i, 1 + k + i)])
        x = x.reshape(x.shape[0], *[n * b for b, n in dims])
    else:
        x = x.squeeze(1)
    if any(n * b != d for d, (b, n) in zip(shape, dims)):
        x = x[(slice(None), *[slice(0, d) for d in shape])]
    return x.reshape(like.shape)


def factor(x: Tensor, dim: int) -> Tensor:
    """Σ over the other dimensions of x xᵀ along block dimension ``dim``: ``[B, N, b, b]``."""
    m = x.movedim(2 + dim, -1)
    m = m.reshape(*x.shape[:2], -1, x.shape[2 + dim])
    return m.mT @ m


def along(x: Tensor, q: Tensor, dim: int) -> Tensor:
    """x ×_dim qᵀ: each fibre of ``x`` along block dimension ``dim`` multiplied by qᵀ
    (``q`` is ``[B, N, b, b]``; for a matrix x, dim 0 gives qᵀ x and dim 1 gives x q)."""
    m = x.movedim(2 + dim, -1)
    shape = m.shape
    m = m.reshape(*x.shape[:2], -1, shape[-1]) @ q
    return m.reshape(shape).movedim(-1, 2 + dim)


def inverse_root(matrix: Tensor, root: float, eps: Tensor | float) -> Tensor:
    """(A + εI)^(-1/root) of symmetric PSD matrices by eigendecomposition (eigenvalues below 0,
    rounding noise, are clipped to 0 first). Where A has zero rows (padding) the result is
    block-diagonal up to rounding: ε^(-1/root) on the zero block, multiplied there by zero
    gradients."""
    values, vectors = torch.linalg.eigh(matrix)
    values = (values.clamp(min=0) + eps).pow(-1.0 / root)
    return (vectors * values.unsqueeze(-2)) @ vectors.mT


def eigenbasis(matrix: Tensor, per_member: bool = False) -> Tensor:
    """Orthonormal eigenvectors of symmetric matrices (columns, eigenvalues ascending).

    Where eigenvalues repeat (a factor of few gradients is rank-deficient) any basis of
    their eigenspace is as good, and LAPACK's choice depends on how many matrices a call
    batches; ``per_member`` makes one call per member (leading dimension), each batching
    exactly the matrices a separate run of that member would, so a stacked population picks
    the bases its members would pick alone."""
    if per_member:
        return torch.stack([torch.linalg.eigh(m).eigenvectors for m in matrix])
    return torch.linalg.eigh(matrix).eigenvectors


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Factors and roots in float32 at least (``eigh`` has no half-precision kernels)."""
    return torch.promote_types(dtype, torch.float32)


# -- the preconditioner schedule: host-side step counts, one per member --------------------
def due(clock: list[int], start: int | float, frequency: int) -> list[bool]:
    """Per member, whether its step t = clock + 1 recomputes the preconditioner: t ≥ start
    and (t - start) divisible by ``frequency``."""
    return [c + 1 >= start and (c + 1 - start) % frequency == 0 for c in clock]


def select(flags: list[bool], new: Tensor, old: Tensor) -> Tensor:
    """Per member (leading dimension), ``new`` where its flag is set, else ``old``; the mask
    is copied from the host, never read back, and skipped when all members agree."""
    if all(flags):
        return new
    if not any(flags):
        return old
    mask = torch.tensor(flags, device=new.device)
    return torch.where(mask.view(-1, *([1] * (new.dim() - 1))), new, old)


class Clocked(MetaOptimizer):
    """A MetaOptimizer whose groups count steps on the host (``group["clock"]``: one int per
    member), so that expensive preconditioner updates can follow a schedule without reading
    a tensor back; ``reset_member`` restarts a member's count, ``copy_member`` copies it, and
    the counts travel in ``state_dict`` with the group."""

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        group["clock"] = [0] * (group.population or 1)

    def step(self, closure=None):
        loss = super().step(closure)
        for group in self.param_groups:
            if any(p.grad is not None for p in group["params"]):
                group["clock"] = [c + 1 for c in group["clock"]]
        return loss

    def reset_member(self, i: int) -> None:
        super().reset_member(i)
        for group in self._population_groups():
            group["clock"] = [0 if j == i else c for j, c in enumerate(group["clock"])]

    def copy_member(self, src: int, dst: int, *, params: bool = True, state: bool = True,
                    hparams: bool = True) -> None:
        super().copy_member(src, dst, params=params, state=state, hparams=hparams)
        if state:
            for group in self._population_groups():
                clock = list(group["clock"])
                clock[dst] = clock[src]
                group["clock"] = clock
