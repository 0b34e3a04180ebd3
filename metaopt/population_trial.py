"""``engine="auto"`` for large members: stacked or a loop, whichever steps faster here.

Members large enough to be compute-bound gain little from batching, and on some machines
and sizes a loop of single trainings (torch's fused kernels, single matmuls) beats the
stacked program. The trial steps a stacked engine of the first ``MEMBERS`` members (its own
forward trial included) and a loop of member 0 alone, scales both to P members (large
members cost in proportion to their number), and the population then builds the faster for
every member: nothing the trial stepped is kept, so every member starts exactly where its own
``metaopt.train`` run would. Only members of at least ``StackedEngine.TRIAL_MIN_NUMEL``
parameters are tried; a checkpoint records the choice (the population's ``mode`` and the
stacked ``forward``), so a resumed run takes the same engine.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from metaopt.population_engines import LoopEngine, StackedEngine

MEMBERS = 4  # stacked in the trial
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


def fastest(few: StackedEngine, one: LoopEngine,
            P: int) -> tuple[str, str, dict[str, float]]:
    """(``"stacked"`` or ``"loop"``, the stacked forward its trial chose, estimated seconds
    per step of P members each way); ``few`` and ``one`` are spent."""
    for _ in range(STACKED_STEPS):
        few.step()
    stacked = min(few._trial.values()) if few._trial else _timed(few.step, 1)
    seconds = {"stacked": stacked * P / few.P, "loop": _timed(one.step, LOOP_STEPS) * P}
    return min(seconds, key=seconds.get), few.forward, seconds
