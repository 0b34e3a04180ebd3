"""``engine="auto"`` for large members: stacked or a loop, whichever steps faster here.

Members large enough to be compute-bound gain little from batching, and on some machines
and sizes a loop of single trainings (torch's fused kernels, single matmuls) beats the
stacked program. The trial builds both engines, steps each a few times on its own copy of
the population (the stacked engine's own forward trial included), and keeps the faster; the
chosen engine is then built afresh, so every member still starts exactly where its own
``metaopt.train`` run would. Only members of at least ``StackedEngine.TRIAL_MIN_NUMEL``
parameters are tried; a checkpoint records the choice (the population's ``mode``), so a
resumed run takes the same engine.
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


def fastest(stacked: StackedEngine, loop: LoopEngine) -> tuple[str, str, dict[str, float]]:
    """(``"stacked"`` or ``"loop"``, the stacked engine's chosen forward, seconds per step
    of each): both engines are stepped, so they are spent."""
    for _ in range(STACKED_STEPS):
        stacked.step()
    seconds = {"stacked": min(stacked._trial.values()) if stacked._trial
               else _timed(stacked.step, 1),
               "loop": _timed(loop.step, LOOP_STEPS)}
    return min(seconds, key=seconds.get), stacked.forward, seconds
