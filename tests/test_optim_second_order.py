"""Second-order and curvature optimizers: L-BFGS against torch.optim.LBFGS, Newton and
Hessian-free against dense solves, Shampoo and SOAP against dense float64 references.

The shared invariants (state dicts, dtypes, deep copies, a quadratic's optimum) run here for
the optimizers that need a closure (``CLOSURE_CASES`` in optim_cases.py); Shampoo and SOAP
are in the shared list itself (``CASES``).
"""

import copy
import io

import pytest
import torch
from optim_cases import CLOSURE_CASES, problem

import metaopt
from metaopt.optim.lbfgs import LBFGS
from metaopt.optim.newton import HessianFree, Newton, conjugate_gradient


def closure_run(make, params, loss, steps, create_graph=False):
    """Train copies of ``params`` with ``opt.step(closure)``; returns params, optimizer and
    the losses step() returned."""
    ps = [p.detach().clone().requires_grad_(True) for p in params]
    opt = make(ps)
    losses = [float(opt.step(_closure(opt, ps, loss, create_graph))) for _ in range(steps)]
    return ps, opt, losses


def _closure(opt, ps, loss, create_graph=False):
    def closure():
        opt.zero_grad()
        value = loss(ps)
        value.backward(create_graph=create_graph)
        return value.detach()
    return closure


def convex_problem(n=8, seed=0):
    """A strictly convex quadratic ½xᵀAx - bᵀx (cond ≈ 30) with its minimiser."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    a = q @ torch.diag(torch.logspace(0, 1.5, n, dtype=torch.float64)) @ q.T
    b = torch.randn(n, generator=g, dtype=torch.float64)
    return a, b, torch.linalg.solve(a, b)


# -- L-BFGS: torch.optim.LBFGS's trajectory, state and state dicts -------------------------
LBFGS_VARIANTS = [
    {}, {"line_search_fn": "strong_wolfe"}, {"history_size": 3, "max_iter": 5},
    {"history_size": 1, "line_search_fn": "strong_wolfe", "max_iter": 7},
    {"lr": 0.5, "max_eval": 7, "line_search_fn": "strong_wolfe", "history_size": 2},
    {"lr": 0.3, "max_eval": 4, "max_iter": 6},
    {"tolerance_grad": 1e-3, "tolerance_change": 1e-4, "line_search_fn": "strong_wolfe"},
    {"tolerance_grad": 1e-2, "tolerance_change": 1e-3},
]


def _t(value):
    return torch.as_tensor(value, dtype=None if isinstance(value, torch.Tensor)
                           else torch.float64)


def _assert_same_state(ours, theirs):
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        mine = ours[key]
        if isinstance(value, list):
            assert len(mine) == len(value), key
            for a, b in zip(mine, value):
                if b is not None:
                    torch.testing.assert_close(_t(a), _t(b), rtol=1e-12, atol=0, msg=key,
                                               check_dtype=False)
        else:
            torch.testing.assert_close(_t(mine), _t(value),
                                       rtol=1e-12, atol=0, msg=key, check_dtype=False)


@pytest.mark.parametrize("kwargs", LBFGS_VARIANTS, ids=str)
@pytest.mark.parametrize("convex", [False, True], ids=["tanh-net", "quadratic"])
def test_lbfgs_equals_torch_lbfgs(kwargs, convex):
    if convex:
        a, b, _ = convex_problem()
        params = [torch.zeros(8, dtype=torch.float64)]

        def loss(ps):
            return 0.5 * ps[0] @ a @ ps[0] - b @ ps[0]
    else:
        params, loss = problem()
    ours, opt, ours_losses = closure_run(lambda ps: LBFGS(ps, **kwargs), params, loss, 4)
    theirs, ref, theirs_losses = closure_run(lambda ps: torch.optim.LBFGS(ps, **kwargs),
                                             params, loss, 4)
    assert ours_losses == pytest.approx(theirs_losses, rel=1e-12, abs=0)
    for x, y in zip(ours, theirs):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=0)
    _assert_same_state(opt.state[ours[0]], ref.state[theirs[0]])


def _saved(opt):
    """opt's state dict through torch.save / torch.load(weights_only=True): a copy, as a
    checkpoint is (state dicts share tensors with the optimizer)."""
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("kwargs", [LBFGS_VARIANTS[0], LBFGS_VARIANTS[4]], ids=str)
def test_a_torch_lbfgs_state_dict_loads_and_continues_both_ways(kwargs):
    params, loss = problem()
    theirs, ref, _ = closure_run(lambda ps: torch.optim.LBFGS(ps, **kwargs), params, loss, 2)
    ours = [p.detach().clone().requires_grad_(True) for p in theirs]
    opt = LBFGS(ours)
    opt.load_state_dict(_saved(ref))
    assert float(opt.param_groups[0]["lr"]) == float(kwargs.get("lr", 1))
    back = [p.detach().clone().requires_grad_(True) for p in theirs]
    ref2 = torch.optim.LBFGS(back, **kwargs)  # and ours -> torch
    for _ in range(2):
        ref.step(_closure(ref, theirs, loss))
        opt.step(_closure(opt, ours, loss))
    ref2.load_state_dict(_saved(opt))
    twin = [p.detach().clone().requires_grad_(True) for p in ours]
    for p, q in zip(back, twin):
        p.data.copy_(q)
    opt.step(_closure(opt, ours, loss))
    ref2.step(_closure(ref2, back, loss))
    ref.step(_closure(ref, theirs, loss))
    for x, y, z in zip(ours, theirs, back):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=0)
        torch.testing.assert_close(z, y, rtol=1e-12, atol=0)


def test_lbfgs_refuses_what_torch_refuses():
    x = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match="line_search_fn"):
        LBFGS([x], line_search_fn="armijo")
    with pytest.raises(ValueError, match="parameter groups"):
        LBFGS([{"params": [x]}, {"params": [torch.zeros(2, requires_grad=True)]}])
    with pytest.raises(ValueError, match="populations"):
        LBFGS([torch.zeros(2, 3, requires_grad=True)], population=2)
    with pytest.raises(RuntimeError, match="closure"):
        LBFGS([x]).step()


# -- Newton and Hessian-free --------------------------------------------------------------
@pytest.mark.parametrize("cls", [Newton, HessianFree])
@pytest.mark.parametrize("exact", [True, False], ids=["double-backward", "central-differences"])
def test_one_undamped_step_solves_a_strictly_convex_quadratic(cls, exact):
    a, b, solution = convex_problem()
    extra = {"cg_max_iter": 8, "cg_tol": 0.0} if cls is HessianFree else {}
    x = torch.zeros(8, dtype=torch.float64, requires_grad=True)
    opt = cls([x], damping=0.0, adaptive_damping=False, **extra)
    opt.step(_closure(opt, [x], lambda ps: 0.5 * ps[0] @ a @ ps[0] - b @ ps[0], exact))
    torch.testing.assert_close(x.detach(), solution, rtol=0, atol=1e-13 if exact else 1e-9)


def test_newton_descends_at_a_saddle_instead_of_climbing():
    """f = x² - y² + y⁴/4 (a saddle at 0, minima at y = ±√2): plain Newton from (1, 1e-3)
    jumps to the saddle; saddle-free damped Newton reaches a minimum, the loss never rising."""
    x = torch.tensor([1.0, 1e-3], dtype=torch.float64, requires_grad=True)
    opt = Newton([x])

    def f(ps):
        return ps[0][0] ** 2 - ps[0][1] ** 2 + ps[0][1] ** 4 / 4

    losses = [float(opt.step(_closure(opt, [x], f))) for _ in range(30)]
    assert all(b <= a + 1e-12 for a, b in zip(losses, losses[1:]))
    torch.testing.assert_close(x.detach().abs(), torch.tensor([0.0, 2 ** 0.5],
                                                              dtype=torch.float64),
                               rtol=0, atol=1e-6)


def test_adaptive_damping_rejects_a_step_that_raises_the_loss():
    x = torch.tensor([3.0], dtype=torch.float64, requires_grad=True)
    opt = Newton([x], lr=5.0, damping=0.0)  # 5 Newton steps overshoot: f rises, undone
    opt.step(_closure(opt, [x], lambda ps: (ps[0] ** 2).sum()))
    assert float(x) == 3.0
    assert float(opt.state[x]["damping"]) == 0.0  # boosted from zero stays zero
    opt = Newton([x], lr=5.0, damping=1.0)
    opt.step(_closure(opt, [x], lambda ps: (ps[0] ** 2).sum()))
    assert float(opt.state[x]["damping"]) == 1.5


def test_conjugate_gradient_equals_the_dense_solve():
    a, b, solution = convex_problem(12, seed=3)
    x = conjugate_gradient(lambda v: a @ v, b, max_iter=12, tol=0.0)
    torch.testing.assert_close(x, solution, rtol=0, atol=1e-10)
    warm = conjugate_gradient(lambda v: a @ v, b, x0=0.9 * solution, max_iter=12, tol=0.0)
    torch.testing.assert_close(warm, solution, rtol=0, atol=1e-10)
    few = conjugate_gradient(lambda v: a @ v, b, max_iter=40, tol=1e-8)  # stops, stays put
    torch.testing.assert_close(few, solution, rtol=0, atol=1e-6)


def test_hessian_free_step_is_the_damped_dense_solve():
    """On the tanh network (not a quadratic), the first HF step is -(H + λI)⁻¹ g with H the
    dense Hessian from torch.func."""
    params, loss = problem()
    ps = [p.detach().clone().requires_grad_(True) for p in params]
    sizes = [p.numel() for p in ps]

    def flat_loss(v):
        return loss([c.view_as(p) for c, p in zip(v.split(sizes), ps)])

    x0 = torch.cat([p.detach().reshape(-1) for p in ps])
    h = torch.func.hessian(flat_loss)(x0)
    g = torch.func.grad(flat_loss)(x0)
    damping = max(0.0, -float(torch.linalg.eigvalsh(h)[0])) + 0.1  # H + λI positive definite
    expected = x0 - torch.linalg.solve(h + damping * torch.eye(len(x0), dtype=h.dtype), g)
    opt = HessianFree(ps, damping=damping, adaptive_damping=False, cg_max_iter=len(x0),
                      cg_tol=0.0)
    opt.step(_closure(opt, ps, loss, create_graph=True))
    torch.testing.assert_close(torch.cat([p.detach().reshape(-1) for p in ps]), expected,
                               rtol=0, atol=1e-9)


def test_newton_refuses_a_hessian_that_would_not_fit_before_allocating():
    big = torch.zeros(100_000, requires_grad=True)  # 1e10 entries × 4 B
    with pytest.raises(ValueError, match=r"40,000,000,000 bytes.*HessianFree"):
        Newton([big])
    Newton([torch.zeros(100, requires_grad=True)], max_hessian_bytes=40_000)


# -- the shared invariants, with closures ----------------------------------------------------
def _make(case, **extra):
    return lambda ps: metaopt.optim.create(case.name, ps, **copy.deepcopy(case.variants[0]),
                                           **extra)


@pytest.mark.parametrize("case", CLOSURE_CASES, ids=str)
def test_closure_state_dict_round_trip_continues_identically(case):
    params, loss = problem()
    kwargs = copy.deepcopy(case.variants[-1])
    ps, opt, _ = closure_run(lambda ps: metaopt.optim.create(case.name, ps, **kwargs), params,
                             loss, 3)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    qs = [p.detach().clone().requires_grad_(True) for p in ps]
    restored = _make(case)(qs)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    for a, b in zip(opt.hparams, restored.hparams):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for params_, opt_ in ((ps, opt), (qs, restored)):
        for _ in range(3):
            opt_.step(_closure(opt_, params_, loss))
    for a, b in zip(ps, qs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("case", CLOSURE_CASES, ids=str)
def test_closure_deepcopy_mid_training_continues_identically(case):
    params, loss = problem()
    ps, opt, _ = closure_run(_make(case), params, loss, 2)
    twin = copy.deepcopy(opt)
    qs = twin.param_groups[0]["params"]
    for params_, opt_ in ((ps, opt), (qs, twin)):
        for _ in range(2):
            opt_.step(_closure(opt_, params_, loss))
    for a, b in zip(ps, qs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("case", CLOSURE_CASES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_closure_dtype_is_kept(case, dtype):
    params, loss = problem(dtype=dtype)
    ps, opt, _ = closure_run(_make(case), params, loss, 2)
    for p in ps:
        assert p.dtype == dtype and torch.isfinite(p).all()
    for value in opt.state[ps[0]].values():
        if isinstance(value, torch.Tensor) and value.dim() > 0:  # vectors, not scalars
            assert value.dtype == dtype


@pytest.mark.parametrize("case", CLOSURE_CASES, ids=str)
def test_closure_reaches_a_quadratics_optimum(case):
    g = torch.Generator().manual_seed(0)
    target = torch.randn(6, 4, generator=g, dtype=torch.float64)
    scale = torch.rand(6, 4, generator=g, dtype=torch.float64) + 0.5
    x = torch.zeros(6, 4, dtype=torch.float64, requires_grad=True)
    opt = metaopt.optim.create(case.name, [x], **case.quadratic)

    def loss(ps):
        return ((ps[0] - target) ** 2 * scale).sum()

    start = float(loss([x]))
    for _ in range(case.quadratic_steps):
        opt.step(_closure(opt, [x], loss))
    assert float(loss([x])) < 1e-3 * start


@pytest.mark.parametrize("case", CLOSURE_CASES, ids=str)
def test_closure_optimizers_train_through_metaopt_train_and_populations(case):
    from metaopt.population import Population
    from metaopt.search.study import loop_only

    assert loop_only(case.name)
    task = metaopt.tasks.get("quadratic")
    result = metaopt.train(task, case.name, case.quadratic, steps=5)
    assert result.status == "ok"
    pop = Population(task, case.name, [case.quadratic] * 2, seeds=[0, 1])
    assert pop.engine.mode == "loop"
    pop.run(3, progress=False)
