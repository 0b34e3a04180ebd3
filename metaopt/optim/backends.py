"""How a group's update runs: ``reference`` | ``eager`` | ``compiled`` | ``auto``.

- ``reference``: the rule once per parameter, eagerly: the readable oracle, and the only path
  for rules that can't run on flat buffers (``flat_ok = False``: norms of whole matrices,
  matmuls).
- ``eager``: ``flat_ok`` rules (elementwise, or LAMB's segmented per-tensor sums) once per flat
  bucket (see :mod:`metaopt.optim.flat`): a handful
  of large kernels instead of a handful per parameter; no compiler involved.
- ``compiled``: the same flat call under ``torch.compile(dynamic=True)``: one fused kernel per
  bucket, compiled once for every model size; changing a hyperparameter's value never
  recompiles (values are tensors). Falls back to ``eager``, with a warning, where compilation
  is unavailable.
- ``auto``: ``eager`` for ``flat_ok`` rules, switching to ``compiled`` once a group of at
  least ``COMPILE_MIN_NUMEL`` elements has spent ``COMPILE_AFTER_SECONDS`` in eager updates
  (ski rental: pay rent until it has cost what buying would, then buy — never worse than twice
  the better choice in hindsight). Small or short jobs (tests, probes, the demo, a 300-step
  population) never wait for a compiler; long ones end up fused. ``reference`` for the rest.
  :class:`Runner` is this policy, for any stream of kernels (the learned optimizer's too).
"""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

from metaopt.optim.elementwise import Segments, as_blocks, broadcast, segmented_step

BACKENDS = ("auto", "reference", "eager", "compiled")
COMPILE_MIN_NUMEL = 1 << 20
COMPILE_AFTER_SECONDS = 10.0  # about a cold compile on a 2-core CPU


def check(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    return backend


def uses_flat(backend: str, flat_ok: bool) -> bool:
    """Whether a group runs on flat buckets (else the reference path, once per parameter)."""
    return check(backend) != "reference" and flat_ok


class Runner:
    """Runs one stream of kernels (a param group's flat updates, a learned optimizer's
    per-coordinate step) the way ``backend`` says: ``eager``, ``compiled``, or ``auto``'s ski
    rental (eager, timing calls on at least ``COMPILE_MIN_NUMEL`` elements, until they have
    cost ``COMPILE_AFTER_SECONDS``; compiled from then on). A compilation that fails (no C++
    compiler, an unsupported platform) warns once and leaves the stream eager for good."""

    def __init__(self, backend: str) -> None:
        self.backend = check(backend)
        self.mode = "compiled" if backend == "compiled" else "eager"
        self.eager_seconds = 0.0

    def run(self, eager: Callable[[], Any], compiled: Callable[[], Any], numel: int) -> Any:
        """``compiled()`` or ``eager()`` (the same work, two ways), as the mode says."""
        if self.mode == "compiled":
            try:
                return compiled()
            except Exception as err:
                if not is_compile_error(err):
                    raise
                warnings.warn(f"metaopt: torch.compile failed ({type(err).__name__}: "
                              f"{str(err).splitlines()[0][:200]}); using the eager backend",
                              stacklevel=3)
                self.backend, self.mode = "eager", "eager"
        renting = self.backend == "auto" and numel >= COMPILE_MIN_NUMEL
        start = time.perf_counter() if renting else 0.0
        out = eager()
        if renting:
            self.eager_seconds += time.perf_counter() - start
            if self.eager_seconds >= COMPILE_AFTER_SECONDS:
                self.mode = "compiled"
        return out


@functools.cache
def compiled(fn: Callable) -> Callable:
    """``fn`` (an elementwise part: ``update``, ``measure``, ``apply``) over one flat bucket,
    compiled once per function: the length is dynamic, so every model size reuses the kernel;
    coefficients are tensors, so new hyperparameter values reuse it too. Each function keeps its
    own code object, so dynamo's per-function cache holds only its own variants."""
    return torch.compile(fn, dynamic=True, fullgraph=True)


def _eager(fn: Callable) -> Callable:
    return fn


def _update(algorithm: Any, run: Callable, param, grad, state, coefficients, opts,
            segments) -> None:
    if opts.get("maximize", False):
        grad = -grad
    if segments is None:
        run(algorithm.update)(param, grad, state, coefficients, opts)
    else:
        segmented_step(algorithm, param, grad, state, coefficients, opts, segments, run=run)


def _prepare(algorithm: Any, bucket: Any, grad, hp, opts: dict[str, Any]) -> tuple:
    """The coefficients (advancing the bucket's counters) and the tensors the update sees."""
    counters = {k: bucket.state[k][0] for k in bucket.scalar_keys}
    coefficients = algorithm.coefficients(hp, counters, opts)
    for key in bucket.scalar_keys:  # every parameter's counter row follows row 0
        rows = bucket.state[key]
        rows[1:].copy_(rows[0].expand_as(rows[1:]))
    param = bucket.param
    state = {k: v for k, v in bucket.state.items() if k not in bucket.scalar_keys}
    segments = None
    if getattr(algorithm, "segmented", False):
        members = 1 if bucket.population else 0
        param, grad = (as_blocks(x, members, bucket.align) for x in (param, grad))
        state = {k: as_blocks(v, members, bucket.align) for k, v in state.items()}
        segments = Segments(bucket.block_owner, len(bucket.params))
    return param, grad, state, broadcast(coefficients, param), opts, segments


def run_flat(algorithm: Any, runner: Runner, bucket: Any, grad, hp,
             opts: dict[str, Any]) -> None:
    """One step of ``algorithm`` (a class with ``coefficients`` and ``update``) on a flat
    bucket: the coefficients eagerly (a few 0-d or ``[P]`` ops, computed once even when a
    compilation fails), the elementwise update as ``runner`` says. Eagerly, an algorithm's
    ``fused_rows`` (torch's own fused kernel) goes first where it applies."""
    fused, numel = getattr(algorithm, "fused_rows", None), bucket.param.numel()
    if runner.mode == "eager" and fused is not None and runner.run(
            lambda: fused(bucket, grad, hp, opts), None, numel):
        return
    args = _prepare(algorithm, bucket, grad, hp, opts)
    runner.run(lambda: _update(algorithm, _eager, *args),
               lambda: _update(algorithm, compiled, *args), numel)


def is_compile_error(err: Exception) -> bool:
    """Whether ``err`` comes from torch's compiler stack (dynamo, inductor, the C++ build)."""
    names = {type(e).__name__ for e in _chain(err)}
    modules = {type(e).__module__ or "" for e in _chain(err)}
    return (any(m.startswith(("torch._dynamo", "torch._inductor")) for m in modules)
            or bool(names & {"BackendCompilerFailed", "InductorError", "CppCompileError",
                             "Unsupported"}))


def _chain(err: BaseException):
    while err is not None:
        yield err
        err = err.__cause__ or err.__context__
