"""``engine="auto"`` for large members: stacked or a loop, whichever steps faster here.

Members large enough to be compute-bound gain little from batching, and on some machines
and sizes a loop of single trainings (torch's fused kernels, single matmuls) beats the
stacked program. The trial steps the stacked engine a few times (its own forward trial
included) and a loop of member 0 alone (its step time × P estimates the loop's, members
being equal in size), and keeps the faster. A stacked winner then starts every member over
(``reinit``: weights, optimizer state and data from the seed), a loop is built afresh, so
every member still starts exactly where its own ``metaopt.train`` run would. Only members of
at least ``StackedEngine.TRIAL_MIN_NUMEL`` parameters are tried; a checkpoint records the
choice (the population's ``mode``), so a resumed run takes the same engine.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from metaopt.population_engines import LoopEngine, StackedEngine

STACKED_STEPS = 1 + len(StackedEngine.TRIAL_STEPS)  # a warm-up, then its forward trial
LOOP_STEPS = 2  # a warm-up, then one timed step


def _timed(step: Callable[[], object], steps: int) -> float:
    """Seconds of the last of ``steps`` calls (the earlier ones warm up)."""
    seconds = 0.0
    for _ in range(steps):
        start = time.perf_counter()
        step()
        seconds = time.perf_counter() - start
    return seconds


def fastest(stacked: StackedEngine, one_member: LoopEngine,
            P: int) -> tuple[str, dict[str, float]]:
    """(``"stacked"`` or ``"loop"``, seconds per step of each): both engines are stepped,
    so their members are no longer at their start."""
    for _ in range(STACKED_STEPS):
        stacked.step()
    seconds = {"stacked": min(stacked._trial.values()) if stacked._trial
               else _timed(stacked.step, 1),
               "loop": _timed(one_member.step, LOOP_STEPS) * P}
    return min(seconds, key=seconds.get), seconds
