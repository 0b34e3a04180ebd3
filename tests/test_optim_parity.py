"""metaopt's optimizers follow torch.optim's trajectories (float64), and migrate both ways."""

import copy
import inspect

import pytest
import torch
from optim_cases import TORCH_CASES, problem, run

import metaopt

STEPS = 12


def assert_same(a, b, tol=1e-12):
    for x, y in zip(a, b):
        torch.testing.assert_close(x.detach(), y.detach(), rtol=tol, atol=tol)


@pytest.mark.parametrize("case", TORCH_CASES, ids=str)
def test_signature_matches_torch(case):
    ours = inspect.signature(metaopt.optim.lookup(case.name).__init__).parameters
    theirs = inspect.signature(case.torch_cls.__init__).parameters
    for name, p in theirs.items():
        assert name in ours, f"{case.name} lacks torch's argument {name}"
        assert ours[name].default == p.default, f"{case.name}.{name} default differs"
        assert ours[name].kind == p.kind, f"{case.name}.{name} kind differs"
    extra = set(ours) - set(theirs)
    assert extra <= {"population", "backend"}, extra


@pytest.mark.parametrize("case", TORCH_CASES, ids=str)
@pytest.mark.parametrize("backend", ["reference", "eager"])
def test_trajectory_matches_torch(case, backend):
    params, loss = problem(case.matrices_only)
    for kwargs in case.variants:
        ours, _ = run(lambda ps, kw=kwargs: metaopt.optim.create(case.name, ps, backend=backend,
                                                                  **copy.deepcopy(kw)),
                      params, loss, STEPS)
        theirs, _ = run(lambda ps, kw=kwargs: case.torch_cls(ps, **copy.deepcopy(kw)),
                        params, loss, STEPS)
        assert_same(ours, theirs)


@pytest.mark.parametrize("case", TORCH_CASES, ids=str)
@pytest.mark.parametrize("direction", ["torch_to_metaopt", "metaopt_to_torch"])
def test_state_dict_migrates(case, direction):
    params, loss = problem(case.matrices_only)
    kwargs = copy.deepcopy(case.variants[-1])
    ours_cls = metaopt.optim.lookup(case.name)
    first, second = ((case.torch_cls, ours_cls) if direction == "torch_to_metaopt"
                     else (ours_cls, case.torch_cls))
    ps, opt = run(lambda ps: first(ps, **copy.deepcopy(kwargs)), params, loss, 5)
    saved = copy.deepcopy(opt.state_dict())
    # the original continues ...
    for _ in range(5):
        opt.zero_grad()
        loss(ps).backward()
        opt.step()
    # ... and so does a copy of the other library's class loaded from the checkpoint
    qs = [p.detach().clone().requires_grad_(True) for p in params]
    qs_opt = first(qs, **copy.deepcopy(kwargs))
    for _ in range(5):  # reach the same weights the checkpoint was taken at
        qs_opt.zero_grad()
        loss(qs).backward()
        qs_opt.step()
    other = second(qs, **copy.deepcopy(kwargs))
    other.load_state_dict(saved)
    for _ in range(5):
        other.zero_grad()
        loss(qs).backward()
        other.step()
    assert_same(qs, ps, tol=1e-10)
