"""Elementwise rules in two phases: per-step coefficients, then the elementwise update.

An elementwise optimizer is written as

- ``coefficients(hp, counters, opts) -> dict``: everything that depends only on the
  hyperparameters and the per-tensor counters (step count, NAdam's momentum product): bias
  corrections, step sizes, ``1 - β``. It advances the counters in place. Values are 0-d, or
  ``[P]`` for a population.
- ``update(param, grad, state, coefficients, opts) -> None``: the elementwise arithmetic, in
  place, with every coefficient already broadcastable against ``param``.

Keeping the two apart lets the flat backends compute the coefficients once per step and compile
only the elementwise part, so a fused kernel never recomputes ``β₂ᵗ`` for every element.

*Segmented* rules (LAMB's per-tensor trust ratio) also need a reduction per parameter, so
their update comes in three parts over tensors seen as blocks, ``[*members, n_blocks, block]``:
``measure`` (per-block sums, reading the state without writing it), ``combine`` (per-parameter
totals -> one factor per parameter) and ``apply`` (the elementwise state update and step, given
each block's factor). :class:`Segments` says which parameter owns each block: on the reference
path a whole parameter is one block; on a flat bucket every parameter starts on a block
boundary, so the per-tensor totals are block sums added up per owner, whatever the number of
tensors.
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


def broadcast(coefficients: Mapping[str, Tensor], like: Tensor) -> dict[str, Tensor]:
    """Each coefficient shaped to broadcast against ``like`` (``[P]`` -> ``[P, 1, ...]``)."""
    return {k: per_member(v, like) for k, v in coefficients.items()}


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
