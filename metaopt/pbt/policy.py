"""PBT's exploit-and-explore policy as pure functions (Jaderberg et al. 2017, "Population Based
Training of Neural Networks", arXiv:1711.09846, section 3).

    moves = choose(values, hparams, space, rng=random.Random(0))
    for m in moves:                       # what the trainer does with them
        population.copy_member(m.src, m.dst)      # exploit: weights, optimizer state, hparams
        population.set_hparams(m.dst, m.hparams)  # explore: the perturbed values

Nothing here touches a model: given the members' validation losses (``nan``: diverged), their
hyperparameters and the search space, :func:`choose` returns the moves, drawing all its
randomness from ``rng`` (a ``random.Random``), so a run is reproducible and its policy state is
one ``rng.getstate()``.

- **exploit**: ``truncation`` (the bottom ``quantile`` copy a member drawn uniformly from the top
  ``quantile``) or ``tournament`` (binary tournament: each member meets one other drawn
  uniformly and copies it when it is better). A diverged member is always replaced.
- **explore**: each searched value is resampled from the space with probability ``resample``,
  else perturbed by a factor drawn from ``perturb`` (0.8 or 1.2): multiplied on log scales;
  on linear scales shifted by ``(factor - 1)`` times the range (×1.2 of a momentum of 0.9 would
  leave most ranges at once); integers and grids stay on their grid and move by at least one
  step; categoricals move to a neighbouring choice. Every value is clipped to its bounds.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from metaopt.search.params import Categorical, Fixed, FloatParam, IntParam, Param

EXPLOITS = ("truncation", "tournament")
PERTURB = (0.8, 1.2)


@dataclass(frozen=True)
class Move:
    """Member ``dst`` takes member ``src``'s weights and optimizer state, then ``hparams``."""

    dst: int
    src: int
    hparams: dict[str, Any]


# -- drawing values -------------------------------------------------------------------------
def sample_value(p: Param, rng: random.Random) -> Any:
    """A value of ``p`` drawn uniformly (log-uniformly on log scales; on its grid)."""
    if isinstance(p, Fixed):
        return p.value
    if isinstance(p, Categorical):
        return p.choices[rng.randrange(len(p.choices))]
    if p.log:
        value = math.exp(rng.uniform(math.log(p.low), math.log(p.high)))
    else:
        value = rng.uniform(p.low, p.high)
    return _on_grid(p, value)


def sample(space: Mapping[str, Param], rng: random.Random) -> dict[str, Any]:
    """One member's values, every parameter drawn in the space's order."""
    return {name: sample_value(p, rng) for name, p in space.items()}


def perturb_value(p: Param, value: Any, factor: float) -> Any:
    """``value`` moved by ``factor`` (see the module docstring), within ``p``'s bounds."""
    if isinstance(p, Fixed):
        return p.value
    if isinstance(p, Categorical):
        i = p.choices.index(value) if value in p.choices else 0
        j = min(max(i + (1 if factor > 1 else -1 if factor < 1 else 0), 0), len(p.choices) - 1)
        return p.choices[j]
    if p.log:
        moved = value * factor
    else:
        moved = value + (factor - 1.0) * (p.high - p.low)
    new = _on_grid(p, moved)
    grid = isinstance(p, IntParam) or p.step is not None
    if grid and new == _on_grid(p, value) and factor != 1.0:  # rounding undid the move
        step = p.step if p.step is not None else 1
        new = _on_grid(p, value + (step if factor > 1 else -step))
    return new


def _on_grid(p: FloatParam | IntParam, value: float) -> Any:
    """``value`` clipped to ``[low, high]`` and, for ints and stepped ranges, rounded to the
    grid ``low + n * step`` (ints stay ints)."""
    value = min(max(value, p.low), p.high)
    if isinstance(p, IntParam):
        n = round((value - p.low) / p.step)
        return int(min(p.low + n * p.step, p.high - (p.high - p.low) % p.step))
    if p.step is not None:
        n = round((value - p.low) / p.step)
        top = math.floor((p.high - p.low) / p.step + 1e-9)
        return float(p.low + min(n, top) * p.step)
    return float(value)


def explore(hparams: Mapping[str, Any], space: Mapping[str, Param], rng: random.Random, *,
            resample: float = 0.25, perturb: Sequence[float] = PERTURB) -> dict[str, Any]:
    """New values from ``hparams`` (a member's): each searched parameter resampled with
    probability ``resample``, else perturbed by a factor drawn from ``perturb``."""
    out = dict(hparams)
    for name, p in space.items():
        if isinstance(p, Fixed):
            continue
        if name not in out or rng.random() < resample:
            out[name] = sample_value(p, rng)
        else:
            out[name] = perturb_value(p, out[name], perturb[rng.randrange(len(perturb))])
    return out


# -- choosing who copies whom -----------------------------------------------------------------
def _rank(values: Sequence[float]) -> list[int]:
    """Members best first; diverged (``nan``) last; ties by index."""
    return sorted(range(len(values)),
                  key=lambda i: (not math.isfinite(values[i]), values[i]
                                 if math.isfinite(values[i]) else 0.0, i))


def _better(a: float, b: float) -> bool:
    """Whether loss ``a`` beats ``b`` (every finite loss beats a diverged one)."""
    return math.isfinite(a) and (not math.isfinite(b) or a < b)


def truncation(values: Sequence[float], quantile: float, rng: random.Random
               ) -> list[tuple[int, int]]:
    """``(dst, src)`` pairs: the bottom ``quantile`` (at least one member, and every diverged
    one) each copy a member drawn from the top ``quantile``."""
    P = len(values)
    finite = [i for i in _rank(values) if math.isfinite(values[i])]
    n = max(1, int(P * quantile))
    top = finite[:n]
    bottom = [i for i in _rank(values)[P - n:] if i not in top]
    bottom += [i for i in range(P) if not math.isfinite(values[i]) and i not in bottom]
    if not top:
        return []
    return [(dst, top[rng.randrange(len(top))]) for dst in sorted(bottom)]


def tournament(values: Sequence[float], rng: random.Random) -> list[tuple[int, int]]:
    """``(dst, src)`` pairs of a binary tournament: member ``i`` meets one other member drawn
    uniformly and copies it when it is better; a diverged member meets finite ones only."""
    P = len(values)
    finite = [i for i in range(P) if math.isfinite(values[i])]
    pairs = []
    for i in range(P):
        others = [j for j in (finite if not math.isfinite(values[i]) else range(P)) if j != i]
        if not others:
            continue
        j = others[rng.randrange(len(others))]
        if _better(values[j], values[i]):
            pairs.append((i, j))
    return pairs


def check(*, quantile: float, resample: float, perturb: Sequence[float],
          exploit: str = "truncation") -> None:
    """ValueError naming the first setting out of range."""
    if not 0 < quantile <= 0.5:
        raise ValueError(f"quantile must be in (0, 0.5], got {quantile!r}")
    if not 0 <= resample <= 1:
        raise ValueError(f"resample must be in [0, 1], got {resample!r}")
    if not perturb or any(not f > 0 for f in perturb):
        raise ValueError(f"perturb must be a non-empty list of positive factors, got {perturb!r}")
    if exploit not in EXPLOITS:
        raise ValueError(f"exploit must be one of {', '.join(EXPLOITS)}, got {exploit!r}")


def choose(values: Sequence[float], hparams: Sequence[Mapping[str, Any]],
           space: Mapping[str, Param], *, rng: random.Random, quantile: float = 0.25,
           resample: float = 0.25, perturb: Sequence[float] = PERTURB,
           exploit: str = "truncation") -> list[Move]:
    """This interval's moves, worst destination first.

    ``values``: each member's validation loss (``nan`` when diverged); ``hparams``: each
    member's current values of ``space``'s parameters. A source is never overwritten before
    every member copying it has done so: a destination is always worse than its source, so
    applying the moves worst destination first reads every source intact.
    """
    if len(values) != len(hparams):
        raise ValueError(f"{len(values)} values for {len(hparams)} members")
    check(quantile=quantile, resample=resample, perturb=perturb, exploit=exploit)
    if exploit == "truncation":
        pairs = truncation(values, quantile, rng)
    else:
        pairs = tournament(values, rng)
    worst_first = {i: r for r, i in enumerate(reversed(_rank(values)))}
    pairs.sort(key=lambda pair: worst_first[pair[0]])
    return [Move(dst, src, explore(hparams[src], space, rng, resample=resample,
                                   perturb=perturb)) for dst, src in pairs]
