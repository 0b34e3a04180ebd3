"""How a group's update runs: ``reference`` | ``eager`` | ``compiled`` | ``auto``.

- ``reference``: the rule once per parameter, eagerly: the readable oracle, and the only path
  for rules that can't run on flat buffers (``flat_ok = False``: norms of whole matrices,
  matmuls).
- ``eager``: ``flat_ok`` rules (elementwise, or LAMB's segmented per-tensor sums) over flat
  buckets (see :mod:`metaopt.optim.flat`), no compiler involved. torch's own fused kernel runs
  where it computes the same algorithm (an algorithm's ``fused_rows``: SGD, Adagrad, Adam,
  AdamW on CPU); otherwise the rule's in-place ``update`` runs over the bucket in chunks of at
  most :func:`chunk_numel` elements, so no temporary exceeds a quarter of
  ``max(2¹⁸, numel / 16)`` elements (:func:`temporary_bound`) and at most four are alive.
- ``compiled``: the same update over the whole bucket under ``torch.compile(dynamic=True)``:
  one fused kernel per bucket, compiled once for every model size; changing a
  hyperparameter's value never recompiles (values are tensors). Falls back to ``eager``, with
  a warning, where compilation is unavailable.
- ``auto``: ``eager`` from the first step, for every size and device, and it never compiles:
  the in-place eager path is at torch's fused/foreach speed (``benchmarks/optim_step.py``), so
  no step ever waits for a compiler and no choice depends on timing (a resumed or
  ``deterministic`` run takes the same path by rule). ``reference`` for rules that aren't
  ``flat_ok``. Ask for ``compiled`` explicitly for long runs of the few rules where it
  measures faster (AdaBound, LAMB, Lion; see the README).

:class:`Runner` also serves streams of kernels outside the optimizer core (the learned
optimizer's per-coordinate step), where ``auto`` may rent: eager, timing calls on at least
``COMPILE_MIN_NUMEL`` elements until they have cost ``COMPILE_AFTER_SECONDS``, compiled from
then on (``rent=False``, as the optimizer core builds its runners, never switches).
"""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch

from metaopt.optim.elementwise import Segments, as_blocks, broadcast, segmented_step

BACKENDS = ("auto", "reference", "eager", "compiled")
COMPILE_MIN_NUMEL = 1 << 20
COMPILE_AFTER_SECONDS = 10.0  # about a cold compile on a 2-core CPU
TEMPORARY_FLOOR = 1 << 18  # elements: no temporary above max(this, numel / 16)
MAX_LIVE_TEMPORARIES = 4  # chunk-sized temporaries an update may hold at once


def check(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    return backend


def uses_flat(backend: str, flat_ok: bool) -> bool:
    """Whether a group runs on flat buckets (else the reference path, once per parameter)."""
    return check(backend) != "reference" and flat_ok


def temporary_bound(numel: int) -> int:
    """The largest temporary (elements) one eager step of a ``numel`` bucket may allocate."""
    return max(TEMPORARY_FLOOR, -(-numel // 16))


def chunk_numel(numel: int) -> int:
    """Elements per chunk of the eager flat update: up to ``MAX_LIVE_TEMPORARIES`` chunk-sized
    temporaries alive at once stay within :func:`temporary_bound`."""
    return temporary_bound(numel) // MAX_LIVE_TEMPORARIES


class Runner:
    """Runs one stream of kernels (a param group's flat updates, a learned optimizer's
    per-coordinate step) the way ``backend`` says: ``eager``, ``compiled``, or, for ``auto``
    with ``rent=True``, ski rental (eager, timing calls on at least ``COMPILE_MIN_NUMEL``
    elements, until they have cost ``COMPILE_AFTER_SECONDS``; compiled from then on). With
    ``rent=False`` (the optimizer core's runners) ``auto`` stays eager. A compilation that
    fails (no C++ compiler, an unsupported platform) warns once and leaves the stream eager
    for good."""

    def __init__(self, backend: str, rent: bool = True) -> None:
        self.backend = check(backend)
        self.rent = rent
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
        renting = (self.rent and self.backend == "auto"
                   and numel >= COMPILE_MIN_NUMEL)
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
    c = broadcast(coefficients, param)
    for key, value in c.items():  # once per step, not once per op and chunk
        if isinstance(value, torch.Tensor) and value.dim() == 0 and value.is_floating_point():
            c[key] = value.to(param.dtype)
    return param, grad, state, c, opts, segments


def chunks(length: int, rows: int, per_chunk: int, unit: int = 1) -> Iterator[slice]:
    """Slices of ``length`` positions (each ``rows × unit`` elements) of at most ``per_chunk``
    elements each (at least one position)."""
    step = max(1, per_chunk // (rows * unit))
    for start in range(0, length, step):
        yield slice(start, min(start + step, length))


def _eager_chunked(algorithm: Any, param, grad, state, c, opts, segments) -> None:
    """The rule's in-place update, chunk by chunk along the flat dimension (the last one; the
    block dimension of a segmented rule), so every temporary is chunk-sized."""
    maximize = opts.get("maximize", False)
    per_chunk = chunk_numel(param.numel())
    if segments is None:
        rows = param[..., 0].numel()
        for cut in chunks(param.shape[-1], rows, per_chunk):
            g = grad[..., cut]
            algorithm.update(param[..., cut], -g if maximize else g,
                             {k: v[..., cut] for k, v in state.items()}, c, opts)
        return
    rows, block = param[..., 0, 0].numel(), param.shape[-1]
    cuts = list(chunks(param.shape[-2], rows, per_chunk, block))

    def parts(cut):
        g = grad[..., cut, :]
        return (param[..., cut, :], -g if maximize else g,
                {k: v[..., cut, :] for k, v in state.items()})

    sums = [algorithm.measure(*parts(cut), c, opts) for cut in cuts]
    totals = [segments.total(torch.cat(parts_, dim=-1)) for parts_ in zip(*sums)]
    factor = segments.spread(algorithm.combine(*totals))
    for cut in cuts:
        algorithm.apply(*parts(cut), c, opts, factor[..., cut, :])


def run_flat(algorithm: Any, runner: Runner, bucket: Any, grad, hp,
             opts: dict[str, Any]) -> None:
    """One step of ``algorithm`` (a class with ``coefficients`` and ``update``) on a flat
    bucket: the coefficients eagerly (a few 0-d or ``[P]`` ops, computed once even when a
    compilation fails), the elementwise update as ``runner`` says: compiled over the whole
    bucket, or eagerly: an algorithm's ``fused_rows`` (torch's own fused kernel) where it
    applies, else the in-place update in chunks. ``auto`` never compiles here."""
    fused = getattr(algorithm, "fused_rows", None)
    if runner.mode == "eager" and fused is not None and fused(bucket, grad, hp, opts):
        return
    args = _prepare(algorithm, bucket, grad, hp, opts)
    if runner.mode == "compiled":
        runner.run(lambda: _eager_chunked(algorithm, *args),
                   lambda: _update(algorithm, compiled, *args), bucket.param.numel())
    else:
        _eager_chunked(algorithm, *args)


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
