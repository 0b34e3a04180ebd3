"""Per-member arithmetic for update rules.

An update rule sees a parameter either as one tensor (a single model; hyperparameters are 0-d)
or as ``[P, ...]`` stacked members (hyperparameters are ``[P]``). These helpers let one rule
serve both: ``per_member`` broadcasts a 0-d or ``[P]`` value against a parameter, and the
reductions return one value per member (0-d for a single model).
"""

from __future__ import annotations

import torch
from torch import Tensor


def per_member(value: Tensor, like: Tensor) -> Tensor:
    """``value`` (0-d or ``[P]``) shaped to broadcast against ``like`` (``[...]`` or ``[P, ...]``).

    0-d values are returned as they are (a 0-d tensor never changes an op's dtype); ``[P]``
    values are viewed as ``[P, 1, ...]`` (floating values in ``like``'s dtype).
    """
    if value.dim() == 0:
        return value
    if value.is_floating_point():
        value = value.to(like.dtype)
    return value.view(value.shape[0], *([1] * (like.dim() - 1)))


def member_ndim(x: Tensor, population: bool) -> int:
    """Number of dimensions of one member of ``x``."""
    return x.dim() - 1 if population else x.dim()


def member_numel(x: Tensor, population: bool) -> int:
    return x[0].numel() if population and x.dim() > 0 else x.numel()


def member_norm(x: Tensor, population: bool) -> Tensor:
    """The 2-norm of each member: 0-d for a single model, ``[P]`` for a population."""
    if not population:
        return torch.linalg.vector_norm(x)
    return torch.linalg.vector_norm(x.reshape(x.shape[0], -1), dim=1)


def new_step(param: Tensor, population: int | None) -> Tensor:
    """A zero step counter: ``[]`` or ``[P]``, in torch's scalar dtype, on the param's device."""
    dtype = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
    shape = () if population is None else (population,)
    return torch.zeros(shape, dtype=dtype, device=param.device)
