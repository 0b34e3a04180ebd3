"""Elementwise rules in two phases: per-step coefficients, then the elementwise update.

An elementwise optimizer is written as

- ``coefficients(hp, counters, opts) -> dict``: everything that depends only on the
  hyperparameters and the per-tensor counters (step count, NAdam's momentum product): bias
  corrections, step sizes (negated where the update adds them: ``neg_lr``), ``1 - β``. It
  advances the counters in place. Values are 0-d, or ``[P]`` for a population.
- ``update(param, grad, state, coefficients, opts) -> None``: the elementwise arithmetic, in
  place, with every coefficient already broadcastable against ``param``.

Keeping the two apart lets the flat backends compute the coefficients once per step and compile
only the elementwise part, so a fused kernel never recomputes ``β₂ᵗ`` for every element.

Conventions for ``update`` (the one place an optimizer's maths is written; the reference
backend runs it per parameter, the eager backend over chunks of a flat bucket, the compiled
one over the whole bucket):

- Write state and parameters in place with coefficients as tensor operands:
  ``x.mul_(c)``, ``x.addcmul_(t, c)`` (``x + t·c``), ``x.lerp_(t, c)``, ``x.addcdiv_(a, b)``,
  ``x.clamp_(lo, hi)``, ``torch.maximum(x, y, out=x)``. Never pass a coefficient as a Python
  ``value=``/``alpha=`` (that would read a tensor into Python) and never form ``c * x`` for
  a full-size ``x`` when an in-place op can take ``c`` directly (``p.addcmul_(d, c["neg_lr"])``
  rather than ``p.sub_(c["lr"] * d)``).
- Temporaries are allowed (``torch.addcmul(g, p, c["weight_decay"])`` for L2 decay,
  ``v.sqrt()``), but reuse them in place once made (``denom.add_(eps)``,
  ``torch.div(m, denom, out=denom)``) and keep at most ``backends.MAX_LIVE_TEMPORARIES`` (4)
  alive at once: the eager backend runs ``update`` over chunks of a quarter of
  ``max(2¹⁸, numel / 16)`` elements, so that bounds the step's temporary memory.
- ``grad`` is the caller's (negated for ``maximize``): never modify it in place; a
  temporary derived from it is yours.
- Never read a tensor into Python in ``update`` (no ``bool(t)``, ``.item()``): the same
  function is compiled. A term that is zero for every member is skipped through a Python
  flag from ``coefficients`` (:func:`nonzero`: ``c["decays"]``). torch's own fused kernels,
  which take Python floats, go in a separate ``fused_rows(bucket, grad, hp, opts) -> bool``
  (see :func:`torch_fused`).

*Segmented* rules (LAMB's per-tensor trust ratio) also need a reduction per parameter, so
their update comes in three parts over tensors seen as blocks, ``[*members, n_blocks, block]``:
``measure`` (per-block sums; it may already update the state that the sums need, e.g. the
moments), ``combine`` (per-parameter totals -> one factor per parameter) and ``apply`` (the
step, given each block's factor). :class:`Segments` says which parameter owns each block: on
the reference path a whole parameter is one block; on a flat bucket every parameter starts on
a block boundary, so the per-tensor totals are block sums added up per owner, whatever the
number of tensors. The eager backend chunks along the block dimension: ``measure`` over every
chunk, then ``combine``, then ``apply`` over every chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from metaopt.optim.members import per_member

Coefficients = Callable[[Mapping[str, Tensor], dict, Mapping[str, Any]], dict[str, Tensor]]
Update = Callable[[Tensor, Tensor, dict, Mapping[str, Tensor], Mapping[str, Any]], None]


FUSED_ROW_MIN = 1 << 15  # a population's rows are worth one fused call each from this size


def torch_fused(bucket: Any, hp: Mapping[str, Tensor],
                keys: tuple[str, ...]) -> list[tuple[int | None, dict[str, float]]] | None:
    """Where torch's own fused kernel may run over a flat bucket: ``None`` where it doesn't
    apply (off the CPU, where reading values into Python would synchronise; a population of
    small members, where the chunked in-place update over all rows at once wins), else the
    calls to make: ``(row, hyperparameter values as floats)``, row ``None`` for a single
    model, one per member row (with its member's values) for a population."""
    if bucket.param.device.type != "cpu":
        return None
    population = bucket.population
    if population is not None and bucket.param.shape[-1] < FUSED_ROW_MIN:
        return None
    values = {k: hp[k].tolist() for k in keys}
    if population is None:
        return [(None, values)]
    return [(i, {k: v[i] for k, v in values.items()}) for i in range(population)]


def row(t: Tensor, i: int | None) -> Tensor:
    """Member ``i``'s row of a flat ``[P, N]`` buffer (the buffer itself for ``None``)."""
    return t if i is None else t[i]


def counter(bucket: Any, key: str, i: int | None) -> Tensor:
    """The bucket's shared counter ``key`` (``[n_params]`` or ``[n_params, P]``, rows equal)
    as the 0-d tensor of member ``i`` (``None``: the single model)."""
    rows = bucket.state[key]
    return rows[0] if i is None else rows[0, i]


def nonzero(value: Tensor) -> bool:
    """Whether a hyperparameter (0-d or ``[P]``) may be non-zero for some member: a Python
    flag a ``coefficients`` phase returns so that ``update`` skips a term that is zero for
    every member (weight decay 0, as torch skips it). Read only on the CPU, where it costs a
    microsecond; elsewhere (a read would synchronise the device) True, and the term is
    computed and adds 0. The compiled backend specialises on the flag (one variant each)."""
    return value.device.type != "cpu" or bool(value.any())


def broadcast(coefficients: Mapping[str, Tensor], like: Tensor) -> dict[str, Tensor]:
    """Each coefficient shaped to broadcast against ``like`` (``[P]`` -> ``[P, 1, ...]``);
    Python flags (:func:`nonzero`) as they are."""
    return {k: per_member(v, like) if isinstance(v, Tensor) else v
            for k, v in coefficients.items()}


@dataclass(frozen=True)
class Segments:
    """Which parameter owns each block of a blocked tensor (``owner``: ``[n_blocks]``)."""

    owner: Tensor
    count: int

    def total(self, block_sums: Tensor) -> Tensor:
        """Per-block sums ``[*members, n_blocks]`` added up per parameter: ``[*members, count]``."""
        total = block_sums.new_zeros(*block_sums.shape[:-1], self.count)
        return total.index_add_(-1, self.owner, block_sums)

    def spread(self, per_parameter: Tensor) -> Tensor:
        """``[*members, count]`` values as ``[*members, n_blocks, 1]``, one per block."""
        return per_parameter.index_select(-1, self.owner).unsqueeze(-1)


def as_blocks(x: Tensor, members: int, block: int) -> Tensor:
    """``x`` (``[*members_dims, ...]``) viewed as ``[*members_dims, n_blocks, block]``."""
    return x.view(*x.shape[:members], -1, block)


def whole(x: Tensor, members: int) -> tuple[Tensor, Segments]:
    """One parameter as a single block (the reference path of a segmented rule)."""
    block = x[0].numel() if members else x.numel()
    owner = torch.zeros(1, dtype=torch.long, device=x.device)
    return as_blocks(x, members, block), Segments(owner, 1)


def per_parameter(coefficients: Coefficients, update: Update) -> Callable:
    """The reference rule: both phases for each parameter in turn (own counters each)."""

    def rule(params: list[Tensor], grads: list[Tensor], states: list[dict],
             hp: Mapping[str, Tensor], opts: Mapping[str, Any]) -> None:
        for p, g, s in zip(params, grads, states):
            update(p, g, s, broadcast(coefficients(hp, s, opts), p), opts)

    rule.__doc__ = update.__doc__
    return rule


def segmented_step(algorithm: Any, p: Tensor, g: Tensor, state: dict, c: Mapping[str, Tensor],
                   opts: Mapping[str, Any], segments: Segments,
                   run: Callable[[Callable], Callable] = lambda f: f) -> None:
    """measure -> per-parameter totals -> combine -> apply, on blocked tensors. ``run`` wraps
    the two elementwise parts (the flat backends compile them)."""
    sums = run(algorithm.measure)(p, g, state, c, opts)
    factor = algorithm.combine(*(segments.total(x) for x in sums))
    run(algorithm.apply)(p, g, state, c, opts, segments.spread(factor))


def per_parameter_segmented(algorithm: Any) -> Callable:
    """The reference rule of a segmented algorithm: each parameter is one block."""

    def rule(params: list[Tensor], grads: list[Tensor], states: list[dict],
             hp: Mapping[str, Tensor], opts: Mapping[str, Any]) -> None:
        members = 1 if opts["population"] is not None else 0
        for p, g, s in zip(params, grads, states):
            c = algorithm.coefficients(hp, s, opts)
            blocks, segments = whole(p, members)
            size = blocks.shape[-1]
            state = {k: as_blocks(v, members, size) if v.shape == p.shape else v
                     for k, v in s.items()}
            segmented_step(algorithm, blocks, as_blocks(g, members, size), state,
                           broadcast(c, blocks), opts, segments)

    rule.__doc__ = algorithm.apply.__doc__
    return rule
