"""How a group's update runs: ``reference`` | ``eager`` | ``compiled`` | ``auto``.

- ``reference``: the rule once per parameter, eagerly: the readable oracle, and the only path
  for rules that are not elementwise (per-tensor norms of whole matrices, matmuls).
- ``eager``: elementwise rules once per flat bucket (see :mod:`metaopt.optim.flat`): a handful
  of large kernels instead of a handful per parameter; no compiler involved.
- ``compiled``: the same flat call under ``torch.compile(dynamic=True)``: one fused kernel per
  bucket, compiled once for every model size; changing a hyperparameter's value never
  recompiles (values are tensors). Falls back to ``eager``, with a warning, where compilation
  is unavailable.
- ``auto``: ``eager`` for elementwise rules, switching to ``compiled`` once a group of at
  least ``COMPILE_MIN_NUMEL`` elements has spent ``COMPILE_AFTER_SECONDS`` in eager updates
  (ski rental: pay rent until it has cost what buying would, then buy — never worse than twice
  the better choice in hindsight). Small or short jobs (tests, probes, the demo, a 300-step
  population) never wait for a compiler; long ones end up fused. ``reference`` for the rest.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any

import torch

from metaopt.optim.elementwise import Segments, as_blocks, broadcast, segmented_step

BACKENDS = ("auto", "reference", "eager", "compiled")
COMPILE_MIN_NUMEL = 1 << 20
COMPILE_AFTER_SECONDS = 10.0  # about a cold compile on a 2-core CPU


def resolve(backend: str, elementwise: bool, numel: int) -> str:
    """The backend a group actually uses."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if not elementwise:
        return "reference"
    if backend == "auto":
        return "auto" if numel >= COMPILE_MIN_NUMEL else "eager"
    return backend


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


def run_flat(algorithm: Any, backend: str, bucket: Any, grad, hp, opts: dict[str, Any]) -> str:
    """One step of ``algorithm`` (a class with ``coefficients`` and ``update``) on a flat
    bucket: the coefficients eagerly (a few 0-d or ``[P]`` ops), the elementwise update with
    ``backend``. Returns the backend used (``eager`` after a failed compilation)."""
    fused = getattr(algorithm, "fused_rows", None)
    if backend == "eager" and fused is not None and fused(bucket, grad, hp, opts):
        return "eager"
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
    coefficients = broadcast(coefficients, param)
    if backend == "compiled":
        try:
            _update(algorithm, compiled, param, grad, state, coefficients, opts, segments)
            return "compiled"
        except Exception as err:  # no C++ compiler, unsupported platform, ...
            if not _is_compile_error(err):
                raise
            warnings.warn(f"metaopt: torch.compile failed ({type(err).__name__}: "
                          f"{str(err).splitlines()[0][:200]}); using the eager backend",
                          stacklevel=3)
    _update(algorithm, _eager, param, grad, state, coefficients, opts, segments)
    return "eager"


def _is_compile_error(err: Exception) -> bool:
    names = {type(e).__name__ for e in _chain(err)}
    modules = {type(e).__module__ or "" for e in _chain(err)}
    return (any(m.startswith(("torch._dynamo", "torch._inductor")) for m in modules)
            or bool(names & {"BackendCompilerFailed", "InductorError", "CppCompileError",
                             "Unsupported"}))


def _chain(err: BaseException):
    while err is not None:
        yield err
        err = err.__cause__ or err.__context__
