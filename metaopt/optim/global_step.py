"""Rules whose step size comes from sums over every parameter (D-Adaptation, Prodigy).

D-Adaptation (Defazio & Mishchenko 2023) and Prodigy (Mishchenko & Defazio 2023) estimate
the distance to the solution, D, from sums over *all* parameters of *all* groups (``<g, s>``,
``||s||_1``, ...) each step, then step with the new estimate. Such a rule is written once, in
four parts, and runs per parameter (the reference path) or over flat buckets (one call per
bucket, eager or compiled), always with one estimate for the whole optimizer:

- ``prepare(hp, scalars, opts) -> dict``: global coefficients before the sums (``d·lr`` ...)
  from the first group's hyperparameters (``lr``: the same in every group, the largest
  over groups should a schedule write them apart) and the global
  scalars (``d``, the step count ``k``, ...);
- ``accumulate(p, g, state, c, opts) -> tuple``: the elementwise state update, returning
  per-member sums (0-d, or ``[P]`` for a population) that are added up over every tensor;
- optionally ``measure(p, g, state, c, opts) -> tuple`` (sums read before any state changes)
  and ``calibrate(hp, scalars, totals, c, opts) -> dict`` (the coefficients, completed);
- ``combine(hp, scalars, totals, c, opts) -> dict``: the new global scalars, written in place,
  and the coefficients of the step;
- ``apply(p, g, state, c, opts)``: the elementwise step.

``c`` holds the global coefficients plus the group's own ``local`` hyperparameters (its
``eps``, ``weight_decay``), unbroadcast; the parts broadcast what they use. The global scalars
are tensors kept in the first param group (as the authors' packages keep them in the groups),
so ``state_dict`` saves them; ``reset_member``/``copy_member`` reset and copy a member's.
No part reads a tensor into Python: members whose sums are zero skip the step (``where``),
and a member with ``lr = 0`` (a population's frozen slot) keeps its weights and its D.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from metaopt.optim import backends
from metaopt.optim.optimizer import MetaOptimizer

Scalars = dict[str, Tensor]


def member_dot(a: Tensor, b: Tensor, population: bool) -> Tensor:
    """``<a, b>`` of each member (0-d, or ``[P]``), without an elementwise temporary."""
    if not population:
        return torch.dot(a.reshape(-1), b.reshape(-1))
    n = a.shape[0]
    return torch.bmm(a.reshape(n, 1, -1), b.reshape(n, -1, 1)).reshape(n)


def member_l1(x: Tensor, population: bool) -> Tensor:
    """``||x||_1`` of each member (0-d, or ``[P]``)."""
    if not population:
        return torch.linalg.vector_norm(x, ord=1)
    return torch.linalg.vector_norm(x.reshape(x.shape[0], -1), ord=1, dim=1)


class GlobalStepOptimizer(MetaOptimizer):
    """Base class of rules with global sums (see the module docstring).

    Subclasses set ``init`` (per-parameter state), ``scalars`` (``hp -> the fresh global
    scalars``, shaped like ``hp["lr"]``, named in ``scalar_keys``), ``prepare``, ``accumulate``,
    ``combine``, ``apply`` and ``local`` (the hyperparameters read per group; every other one
    is the first group's).
    """

    flat_ok = True
    rule = None  # no per-group rule: the parts run across all groups in step()
    local: ClassVar[tuple[str, ...]] = ("eps", "weight_decay")
    scalar_keys: ClassVar[tuple[str, ...]] = ()
    scalars: ClassVar[Callable[[Mapping[str, Tensor]], Scalars]]
    prepare: ClassVar[Callable]
    accumulate: ClassVar[Callable]
    combine: ClassVar[Callable]
    apply: ClassVar[Callable]

    def check_group(self, group) -> None:
        if not self.param_groups:  # the first group holds the global scalars
            for key, value in type(self).scalars(group.hparams).items():
                dict.__setitem__(group, key, value)
            return
        head = self.param_groups[0]
        if group.population != head.population:
            raise ValueError(f"{group.owner}: every group of {type(self).__name__} must have "
                             f"the same population (one step size for all), got "
                             f"{group.population} and {head.population}")
        if not torch.equal(group.hparams["lr"], head.hparams["lr"]):
            raise ValueError(f"{group.owner}: lr must be the same in every group of "
                             f"{type(self).__name__} (one step size for all, as in the "
                             f"authors' package); schedules write every group alike")

    def options(self, group) -> dict[str, Any]:
        opts = MetaOptimizer.options(group)
        for key in self.scalar_keys:
            opts.pop(key, None)
        return opts

    def global_scalars(self) -> Scalars:
        """The global scalars (``d``, ``k``, ...), the tensors the step updates in place."""
        head = self.param_groups[0]
        return {key: head[key] for key in self.scalar_keys}

    # -- stepping -----------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One step of every group with one global step-size estimate."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        plans = [self._plan(group) for group in self.param_groups]
        if self.transforms:
            self._transform(plans)
        active = [plan for plan in plans if plan.params]
        if not active:
            return loss
        cls, head = type(self), self.param_groups[0]
        hp = dict(head.hparams)
        hp["lr"] = functools.reduce(torch.maximum, [g.hparams["lr"] for g in self.param_groups])
        opts = self.options(head)
        scalars = self.global_scalars()
        pre = cls.prepare(hp, scalars, opts)
        if hasattr(cls, "measure"):  # sums needed before the state update (D-Adapt SGD's |g0|)
            pre = cls.calibrate(hp, scalars, _total(active, cls.measure, pre), pre, opts)
        totals = _total(active, cls.accumulate, pre)
        post = cls.combine(hp, scalars, totals, pre, opts)
        for plan in active:
            c = {**post, **{k: plan.hp[k] for k in cls.local}}
            for _ in _each(plan, cls.apply, c):
                pass
        return loss

    # -- populations --------------------------------------------------------------------
    @torch.no_grad()
    def reset_member(self, i: int) -> None:
        super().reset_member(i)
        head = self.param_groups[0]
        hp = {k: (None if v is None else v[i:i + 1]) for k, v in head.hparams.items()}
        for key, value in type(self).scalars(hp).items():
            head[key][i] = value[0]

    @torch.no_grad()
    def copy_member(self, src: int, dst: int, *, params: bool = True, state: bool = True,
                    hparams: bool = True) -> None:
        super().copy_member(src, dst, params=params, state=state, hparams=hparams)
        if state:
            for value in self.global_scalars().values():
                value[dst] = value[src]


def _total(plans: list[Any], part: Callable, pre: Mapping[str, Tensor]) -> tuple[Tensor, ...]:
    """``part``'s per-member sums added up over every tensor of every plan."""
    totals = None
    for plan in plans:
        c = {**pre, **{k: plan.hp[k] for k in plan.algorithm.local}}
        for sums in _each(plan, part, c):
            totals = sums if totals is None else tuple(a + b for a, b in zip(totals, sums))
    return totals


def _each(plan: Any, part: Callable, c: Mapping[str, Tensor]) -> Iterable[Any]:
    """``part(p, g, state, c, opts)`` over the plan's tensors: each parameter (the reference
    path) or each flat bucket, compiled whole or eagerly in chunks (sums added up), as the
    group's runner says."""
    opts = plan.opts
    if plan.buckets is None:
        for p, g, s in zip(plan.params, plan.grads, plan.states):
            yield part(p, g, s, c, opts)
        return
    for args in zip(plan.params, plan.grads, plan.states):
        yield plan.runner.run(lambda a=args: _chunked(part, *a, c, opts),
                              lambda a=args: backends.compiled(part)(*a, c, opts),
                              args[0].numel())


def _chunked(part: Callable, p: Tensor, g: Tensor, s: Mapping[str, Tensor],
             c: Mapping[str, Tensor], opts: Mapping[str, Any]) -> Any:
    """``part`` over chunks along the flat dimension, as the elementwise rules' eager path
    (no temporary beyond ``backends.chunk_numel``); the sums of the chunks added up."""
    totals = None
    for cut in backends.chunks(p.shape[-1], p[..., 0].numel(), backends.chunk_numel(p.numel())):
        sums = part(p[..., cut], g[..., cut], {k: v[..., cut] for k, v in s.items()}, c, opts)
        if sums is not None:
            totals = sums if totals is None else tuple(a + b for a, b in zip(totals, sums))
    return totals
