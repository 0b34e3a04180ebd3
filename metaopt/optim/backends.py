"""How a group's update runs: ``reference`` | ``eager`` | ``compiled`` | ``auto``.

- ``reference``: the rule once per parameter, eagerly: the readable oracle, and the only path
  for rules that are not elementwise (per-tensor norms of whole matrices, matmuls).
- ``eager``: elementwise rules once per flat bucket (see :mod:`metaopt.optim.flat`): a handful
  of large kernels instead of a handful per parameter; no compiler involved.
- ``compiled``: the same flat call under ``torch.compile(dynamic=True)``: one fused kernel per
  bucket, compiled once for every model size; changing a hyperparameter's value never
  recompiles (values are tensors). Falls back to ``eager``, with a warning, where compilation
  is unavailable.
- ``auto``: ``compiled`` for elementwise rules on groups of at least ``COMPILE_MIN_NUMEL``
  elements, so small jobs (tests, probes, the demo) never wait for a compiler; ``eager`` for
  smaller elementwise groups; ``reference`` otherwise.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any

import torch

BACKENDS = ("auto", "reference", "eager", "compiled")
COMPILE_MIN_NUMEL = 1 << 20


def resolve(backend: str, elementwise: bool, numel: int) -> str:
    """The backend a group actually uses."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if not elementwise:
        return "reference"
    if backend == "auto":
        return "compiled" if numel >= COMPILE_MIN_NUMEL else "eager"
    return backend


def _flat_call(rule: Callable, param, grad, state, hp, opts, scalar_keys=()) -> None:
    """``rule`` on one flat bucket. Per-tensor counters are stacked ``[n_params, ...]`` (all
    rows equal): the rule advances row 0, which is then copied to every row."""
    if opts.get("maximize", False):
        grad = -grad
    flat_state = {k: (v[0] if k in scalar_keys else v) for k, v in state.items()}
    rule([param], [grad], [flat_state], hp, opts)
    for key in scalar_keys:
        rows = state[key]
        rows[1:].copy_(rows[0].expand_as(rows[1:]))


@functools.cache
def compiled_rule(rule: Callable) -> Callable:
    """``rule`` over one flat bucket, compiled (one cache entry per rule function)."""
    return torch.compile(functools.partial(_flat_call, rule), dynamic=True, fullgraph=True)


class CompileUnavailable(RuntimeError):
    pass


def run_flat(rule: Callable, backend: str, param, grad, state, hp, opts: dict[str, Any],
             scalar_keys: tuple[str, ...]) -> str:
    """Run ``rule`` on a flat bucket with ``backend`` (``eager``/``compiled``); returns the
    backend used (``eager`` after a failed compilation)."""
    if backend == "compiled":
        try:
            compiled_rule(rule)(param, grad, state, hp, opts, scalar_keys)
            return "compiled"
        except Exception as err:  # no C++ compiler, unsupported platform, ...
            if not _is_compile_error(err):
                raise
            warnings.warn(f"metaopt: torch.compile failed ({type(err).__name__}: "
                          f"{str(err).splitlines()[0][:200]}); using the eager backend",
                          stacklevel=3)
    _flat_call(rule, param, grad, state, hp, opts, scalar_keys)
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
