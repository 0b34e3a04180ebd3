"""The compiled backend: equal to the reference, and no recompilation when values change.

These tests compile (a few seconds per optimizer on a cold cache); the rest of the suite
stays on the eager and reference backends.
"""

import inspect

import pytest
import torch
from optim_cases import CASES, member_kwargs, population_kwargs, problem, run, stacked_problem
from torch._dynamo.utils import counters

import metaopt

ELEMENTWISE = [c for c in CASES if getattr(metaopt.optim.lookup(c.name), "flat_ok", False)]
BUILD = {"sgd": {"momentum": 0.9}}  # momentum on from the start: its buffer is structure


def _build_kwargs(name):
    """Structure fixed from the start: SGD's momentum buffer, and a non-zero weight decay (a
    decay of 0 is skipped through a Python flag, one compiled variant each; a write that
    switches it on specialises once, by design)."""
    kwargs = dict(BUILD.get(name, {}))
    if "weight_decay" in inspect.signature(metaopt.optim.lookup(name)).parameters:
        kwargs["weight_decay"] = 0.01
    return kwargs
WRITES = {"lr": 3e-3, "eps": 1e-5, "weight_decay": 0.02, "betas": (0.8, 0.95),
          "momentum": 0.5, "alpha": 0.9, "rho": 0.8}


def _train(case, backend, dtype=torch.float32):
    """Five steps, a write to every tensor hyperparameter the group has, five more."""
    params, loss = problem(case.matrices_only, dtype=dtype)
    ps = [p.detach().clone().requires_grad_(True) for p in params]
    opt = metaopt.optim.create(case.name, ps, backend=backend, **_build_kwargs(case.name))
    graphs = []
    for k in range(10):
        if k == 5:
            graphs.append(counters["stats"]["unique_graphs"])
            for key, value in WRITES.items():
                if key in opt.param_groups[0]:
                    opt.param_groups[0][key] = value
        opt.zero_grad()
        loss(ps).backward()
        opt.step()
    graphs.append(counters["stats"]["unique_graphs"])
    return ps, opt, graphs


@pytest.mark.parametrize("case", ELEMENTWISE, ids=str)
def test_compiled_equals_reference_and_never_recompiles(case):
    ours, opt, graphs = _train(case, "compiled")
    assert {r.mode for r in opt._runners.values()} == {"compiled"}
    assert graphs[0] == graphs[1], "a hyperparameter write recompiled the step"
    reference, _, _ = _train(case, "reference")
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-6)


def test_compiled_population_equals_separate_reference_runs():
    case = next(c for c in CASES if c.name == "adamw")
    stacked, loss, members = stacked_problem(case, 3)
    stacked = [s.float() for s in stacked]
    pop, opt = run(lambda ps: metaopt.optim.create("adamw", ps, population=3,
                                                   backend="compiled",
                                                   **population_kwargs(case)),
                   stacked, lambda ps: loss([p.double() for p in ps]).float(), 6)
    assert {r.mode for r in opt._runners.values()} == {"compiled"}
    before = counters["stats"]["unique_graphs"]
    opt.hparams[0]["lr"].copy_(torch.tensor([1e-3, 2e-3, 5e-3]))
    opt.zero_grad()
    loss([p.double() for p in pop]).backward()
    opt.step()
    assert counters["stats"]["unique_graphs"] == before
    for i, (params, member_loss) in enumerate(members):
        kwargs = member_kwargs(case, i)
        single, single_opt = run(lambda ps, kw=kwargs: metaopt.optim.create(
            "adamw", ps, backend="reference", **kw), [p.float() for p in params],
            lambda ps, f=member_loss: f([p.double() for p in ps]).float(), 6)
        single_opt.hparams[0]["lr"].fill_([1e-3, 2e-3, 5e-3][i])
        single_opt.zero_grad()
        member_loss([p.double() for p in single]).backward()
        single_opt.step()
        for s, p in zip(pop, single):
            torch.testing.assert_close(s[i], p, rtol=2e-5, atol=2e-6)


def test_auto_never_compiles_an_optimizer_and_runners_elsewhere_still_rent(monkeypatch):
    """``auto`` runs an optimizer's eager in-place path from the first step and never
    compiles (no step waits for a compiler, no choice depends on timing); a Runner built to
    rent (the learned optimizer's) still switches once eager time has paid for compiling."""
    from metaopt.optim import backends

    params, loss = problem()
    ps = [p.detach().clone().float().requires_grad_(True) for p in params]
    opt = metaopt.optim.AdamW(ps, lr=1e-2)
    monkeypatch.setattr(backends, "COMPILE_MIN_NUMEL", 1)
    monkeypatch.setattr(backends, "COMPILE_AFTER_SECONDS", 0.0)
    graphs = counters["stats"]["unique_graphs"]
    for _ in range(3):
        opt.zero_grad()
        loss([p.double() for p in ps]).float().backward()
        opt.step()
        assert {r.mode for r in opt._runners.values()} == {"eager"}
    assert counters["stats"]["unique_graphs"] == graphs
    renting = backends.Runner("auto")
    calls = []
    renting.run(lambda: calls.append("eager"), lambda: calls.append("compiled"), 10)
    renting.run(lambda: calls.append("eager"), lambda: calls.append("compiled"), 10)
    assert calls == ["eager", "compiled"]
