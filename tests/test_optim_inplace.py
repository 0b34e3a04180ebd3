"""The eager flat path (the default) equals the per-parameter reference, and it runs in place.

Every flat optimizer over the kwarg variants of ``optim_cases``, single model and population,
in float64: torch's fused kernels where they apply (SGD, Adagrad, Adam, AdamW), and the
chunked in-place update (fused kernels off, chunks of a few elements so chunk boundaries cut
through parameters). Then the memory bound: on a bucket 16× the bound, one step allocates no
temporary above ``max(2¹⁸, numel / 16)`` elements, and no more than that in all.
"""

import copy

import pytest
import torch
from optim_cases import CASES, population_kwargs, problem, run, stacked_problem

import metaopt
from metaopt.optim import backends, elementwise

STEPS = 8


def _elementwise(cls) -> bool:
    """A flat rule written as coefficients + update (or a segmented one): the core's
    elementwise optimizers, and any new one that follows ``metaopt.optim.elementwise``."""
    return (getattr(cls, "flat_ok", False) and hasattr(cls, "coefficients")
            and (hasattr(cls, "update") or getattr(cls, "segmented", False)))


FLAT = [c for c in CASES if _elementwise(metaopt.optim.lookup(c.name))]
FUSED = {"sgd", "adagrad", "adam", "adamw"}
PATHS = ["fused", "in place"]


def _same(ours, reference, exact: bool) -> None:
    for a, b in zip(ours, reference):
        if exact:
            assert torch.equal(a, b), f"max |diff| {(a - b).abs().max():.3g}"
        else:
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def _path(monkeypatch, case, path: str) -> None:
    if path == "fused":
        if case.name not in FUSED:
            pytest.skip("torch has no fused kernel for this algorithm")
        monkeypatch.setattr(elementwise, "FUSED_ROW_MIN", 1)  # populations too
    else:
        monkeypatch.setattr(metaopt.optim.lookup(case.name), "fused_rows", None, raising=False)
        monkeypatch.setattr(backends, "TEMPORARY_FLOOR", 16)  # chunks of 4 elements


def _build(case, backend, **extra):
    return lambda ps, kw: metaopt.optim.create(case.name, ps, backend=backend,
                                               **copy.deepcopy(kw), **extra)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", FLAT, ids=str)
def test_eager_equals_reference(case, path, monkeypatch):
    """Bit for bit on the in-place path (the same update function, the same ops, chunked);
    within 1e-12 through torch's fused kernels (their own op order)."""
    _path(monkeypatch, case, path)
    params, loss = problem(case.matrices_only)
    for kwargs in case.variants:
        ours, opt = run(lambda ps, kw=kwargs: _build(case, "eager")(ps, kw), params, loss, STEPS)
        reference, _ = run(lambda ps, kw=kwargs: _build(case, "reference")(ps, kw), params, loss,
                           STEPS)
        assert opt._buckets, "the eager backend did not run on flat buckets"
        _same(ours, reference, exact=path == "in place" and case.name not in INEXACT)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", FLAT, ids=str)
def test_eager_population_equals_reference(case, path, monkeypatch):
    """P = 3 stacked members with [P] hyperparameters: eager (one fused call per member row,
    or the chunked in-place update over all rows) equals the reference population."""
    _path(monkeypatch, case, path)
    stacked, loss, _ = stacked_problem(case, 3)
    kwargs = population_kwargs(case)
    ours, _ = run(lambda ps: metaopt.optim.create(case.name, ps, population=3, backend="eager",
                                                  **copy.deepcopy(kwargs)), stacked, loss, STEPS)
    reference, _ = run(lambda ps: metaopt.optim.create(case.name, ps, population=3,
                                                       backend="reference",
                                                       **copy.deepcopy(kwargs)),
                       stacked, loss, STEPS)
    _same(ours, reference, exact=path == "in place" and case.name not in INEXACT)


# Per-tensor sums of a segmented rule add block sums on the flat path (one sum per parameter
# on the reference path): the rounding of the trust ratio differs.
INEXACT = {"lamb"}

# The variants with the most temporaries alive at once (weight decay, maximize, centered...).
HEAVY = {"sgd": {"momentum": 0.9, "nesterov": True, "weight_decay": 0.1, "maximize": True},
         "adagrad": {"weight_decay": 0.1, "maximize": True},
         "rmsprop": {"centered": True, "momentum": 0.5, "weight_decay": 0.1, "maximize": True},
         "adam": {"amsgrad": True, "weight_decay": 0.1, "maximize": True},
         "adamw": {"amsgrad": True, "maximize": True},
         "adamax": {"weight_decay": 0.1, "maximize": True},
         "nadam": {"weight_decay": 0.1, "maximize": True},
         "radam": {"weight_decay": 0.1, "maximize": True},
         "adadelta": {"weight_decay": 0.1, "maximize": True},
         "adabound": {"amsbound": True, "weight_decay": 0.1, "maximize": True},
         "lion": {"weight_decay": 0.1, "maximize": True},
         "lamb": {"weight_decay": 0.1, "maximize": True}}


def _allocations(step) -> tuple[int, int]:
    """(peak bytes allocated during ``step`` above its start, largest single allocation)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    current = peak = largest = 0
    for _, nbytes in events:
        current += nbytes
        peak, largest = max(peak, current), max(largest, nbytes)
    return peak, largest


@pytest.mark.parametrize("population", [None, 4], ids=["single", "population"])
@pytest.mark.parametrize("case", FLAT, ids=str)
def test_step_allocates_no_temporary_above_the_bound(case, population):
    """2²² float32 elements in three tensors (16× the bound of 2¹⁸ elements), default and
    heaviest settings: neither the largest allocation nor the peak of one step exceeds the
    bound (a full-size temporary would be 16× over)."""
    n = 1 << 22
    lead = (population,) if population else ()
    shapes = [(1024, 2048 - 1), (1024,), (1024, 2048)]  # boundaries off the chunk grid
    shapes = [(s[0] // population, *s[1:]) if population else s for s in shapes]
    bound = backends.temporary_bound(n) * 4
    assert sum(torch.Size((*lead, *s)).numel() for s in shapes) == n
    for kwargs in ({}, HEAVY.get(case.name, {})):
        g = torch.Generator().manual_seed(0)
        params = [torch.randn(*lead, *s, generator=g).requires_grad_() for s in shapes]
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        extra = {"population": population} if population else {}
        opt = metaopt.optim.create(case.name, params, **copy.deepcopy(kwargs), **extra)
        opt.step()  # the state exists from here on
        peak, largest = _allocations(opt.step)
        assert largest <= bound, f"{kwargs}: a {largest / 2**20:.1f} MiB temporary"
        assert peak <= bound, f"{kwargs}: {peak / 2**20:.1f} MiB of temporaries at once"
