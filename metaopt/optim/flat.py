"""Flat buffers: a group's parameters, gradients and state as views into one tensor each.

An elementwise update rule gives the same result on one flat tensor as on each parameter in
turn, so a :class:`Bucket` lets a rule run once per (group, dtype, device) instead of once per
parameter: one kernel (compiled) or a few large ones (eager), whatever the number of tensors,
and one compiled kernel reused for every model size (the flat length is a dynamic dimension).

Layout: a single model's parameters are consecutive slices of a ``[N]`` buffer; a population's
are column blocks of a ``[P, N]`` buffer, so ``[P]`` hyperparameters broadcast as ``[P, 1]``.
Parameters keep their identity (``p.data`` becomes a view), and ``p.grad`` is kept as a view
into the flat gradient so ``backward`` accumulates straight into it. Per-parameter state entries
(``optimizer.state[p]``) are views into the flat state, so ``state_dict``, ``reset_member`` and
``copy_member`` work unchanged; step counters are shared by the bucket.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

# A population's parameters are column blocks (strided views); autograd accumulates into their
# strided gradient views correctly but warns that the layout is unusual.
warnings.filterwarnings("ignore", message="grad and param do not obey the gradient layout")


class Bucket:
    """Parameters of one group sharing dtype and device, as views into a flat buffer."""

    def __init__(self, params: list[Tensor], population: int | None, align: int = 1) -> None:
        self.params = params
        self.population = population
        self.align = align
        first = params[0]
        sizes = [(p[0] if population else p).numel() for p in params]
        spans = [-(-n // align) * align for n in sizes]  # each parameter starts on a boundary
        self.offsets = [0, *itertools.accumulate(spans)][:-1]
        self.sizes = sizes
        self.spans = spans
        shape = (population, sum(spans)) if population else (sum(spans),)
        # empty, not zeros: every element is written once below (a second pass over fresh
        # pages costs as much as the copy)
        self.param = torch.empty(shape, dtype=first.dtype, device=first.device)
        self.grad = torch.empty_like(self.param)
        self.state: dict[str, Tensor] = {}
        self.ready = False  # init_state has run
        with torch.no_grad():
            for i, p in enumerate(params):
                o, n = self.offsets[i], sizes[i]
                if spans[i] > n:  # alignment padding stays zero
                    self.param[..., o + n:o + spans[i]].zero_()
                    self.grad[..., o + n:o + spans[i]].zero_()
                view = self.view(self.param, p, i)
                view.copy_(p.data)
                grad = p.grad
                p.data = view
                if grad is not None:
                    p.grad = self.view(self.grad, p, i).copy_(grad)
                else:
                    self.view(self.grad, p, i).zero_()
        self._ptrs = [p.data_ptr() for p in params]
        self.grad_views = [self.view(self.grad, p, i) for i, p in enumerate(params)]

    @property
    def block_owner(self) -> Tensor:
        """Which parameter owns each ``align``-sized block (``[n_blocks]``; segmented rules)."""
        owner = getattr(self, "_block_owner", None)
        if owner is None:
            owner = torch.repeat_interleave(torch.arange(len(self.params)),
                                            torch.tensor(self.spans) // self.align)
            owner = self._block_owner = owner.to(self.param.device)
        return owner

    def view(self, flat: Tensor, p: Tensor, i: int) -> Tensor:
        """The slice of ``flat`` that holds parameter ``p`` (the ``i``-th), shaped like it."""
        o, n = self.offsets[i], self.sizes[i]
        return flat[..., o:o + n].view(p.shape)

    def intact(self) -> bool:
        """False when a parameter's storage was replaced behind our back (``p.data = ...``)."""
        return all(p.data_ptr() == ptr for p, ptr in zip(self.params, self._ptrs))

    def grad_status(self) -> str:
        """``"all"`` when every parameter has a gradient, ``"none"`` or ``"some"`` else."""
        present = sum(p.grad is not None for p in self.params)
        return "all" if present == len(self.params) else ("none" if present == 0 else "some")

    def gather_grads(self) -> None:
        """Make every ``p.grad`` the view into the flat gradient, copying a gradient that
        autograd or the user put elsewhere (after ``zero_grad(set_to_none=True)``).
        With ``zero_grad(set_to_none=False)`` the views stay and backward writes into them."""
        for p, view in zip(self.params, self.grad_views):
            g = p.grad
            if g is view:
                continue
            if g.data_ptr() != view.data_ptr() or g.stride() != view.stride():
                view.copy_(g)
            p.grad = view

    # -- state ---------------------------------------------------------------------------
    def init_state(self, init: Callable, hp: Mapping[str, Tensor | None],
                   opts: Mapping[str, Any], per_param: list[dict]) -> None:
        """Build the flat state: fresh from ``init`` when no parameter has state yet, else by
        copying the per-parameter states in (after a load or a backend switch); then point
        every per-parameter entry at it. State of the parameter's shape becomes a slice of a
        flat buffer; per-tensor counters (step, NAdam's mu product) one row each of a stacked
        buffer, equal while ``uniform`` (the flat rule then runs with row 0)."""
        fresh = init(self.param, hp, opts)
        n = len(self.params)
        self.state = {}
        self.scalar_keys = tuple(k for k, v in fresh.items() if not self._is_flat(v))
        for key, value in fresh.items():
            self.state[key] = (value if self._is_flat(value)
                               else value.unsqueeze(0).repeat(n, *([1] * value.dim())))
        if any(per_param):
            self._adopt(per_param)
        self.ready = True
        self.uniform = all(torch.equal(self.state[k][0].expand_as(self.state[k]),
                                       self.state[k]) for k in self.scalar_keys)
        for i, (p, state) in enumerate(zip(self.params, per_param)):
            state.clear()
            for key, value in self.state.items():
                state[key] = value[i] if key in self.scalar_keys else self.view(value, p, i)

    def _is_flat(self, value: Tensor) -> bool:
        return value.shape == self.param.shape

    def _adopt(self, per_param: list[dict]) -> None:
        if not all(per_param) or any(set(s) != set(self.state) for s in per_param):
            raise ValueError("parameters of one group have different optimizer states")
        with torch.no_grad():
            for key, value in self.state.items():
                for i, (p, state) in enumerate(zip(self.params, per_param)):
                    target = value[i] if key in self.scalar_keys else self.view(value, p, i)
                    target.copy_(state[key])
