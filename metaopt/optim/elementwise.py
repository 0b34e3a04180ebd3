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
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor

from metaopt.optim.members import per_member

Coefficients = Callable[[Mapping[str, Tensor], dict, Mapping[str, Any]], dict[str, Tensor]]
Update = Callable[[Tensor, Tensor, dict, Mapping[str, Tensor], Mapping[str, Any]], None]


def broadcast(coefficients: Mapping[str, Tensor], like: Tensor) -> dict[str, Tensor]:
    """Each coefficient shaped to broadcast against ``like`` (``[P]`` -> ``[P, 1, ...]``)."""
    return {k: per_member(v, like) for k, v in coefficients.items()}


def per_parameter(coefficients: Coefficients, update: Update) -> Callable:
    """The reference rule: both phases for each parameter in turn (own counters each)."""

    def rule(params: list[Tensor], grads: list[Tensor], states: list[dict],
             hp: Mapping[str, Tensor], opts: Mapping[str, Any]) -> None:
        for p, g, s in zip(params, grads, states):
            update(p, g, s, broadcast(coefficients(hp, s, opts), p), opts)

    rule.__doc__ = update.__doc__
    return rule
