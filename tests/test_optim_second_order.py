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
        assert a.keys() == b.keys()
        assert all((a[k] is None and b[k] is None) or torch.equal(a[k], b[k]) for k in a)
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


# -- Shampoo and SOAP ---------------------------------------------------------------------
def _matrix_problem(m=6, n=6, seed=1):
    """A least-squares loss of one m×n matrix (full-rank gradients when m == n)."""
    g = torch.Generator().manual_seed(seed)
    w0 = torch.randn(m, n, generator=g, dtype=torch.float64)
    x = torch.randn(16, n, generator=g, dtype=torch.float64)
    y = torch.randn(16, m, generator=g, dtype=torch.float64)
    return w0, lambda w: ((x @ w.T - y) ** 2).mean()


@pytest.mark.parametrize("grafting,twin", [
    ("adam", lambda ps: metaopt.optim.AdamW(ps, lr=0.01, weight_decay=0.1, backend="reference")),
    ("sgd", lambda ps: metaopt.optim.SGD(ps, lr=0.01, momentum=0.9, backend="reference"))])
def test_shampoo_without_preconditioning_is_its_grafted_optimizer_exactly(grafting, twin):
    params, loss = problem()
    wd = 0.1 if grafting == "adam" else 0.0
    ours, _ = run_steps(lambda ps: metaopt.optim.Shampoo(
        ps, lr=0.01, weight_decay=wd, grafting=grafting, start_preconditioning_step=10 ** 9),
        params, loss, 8)
    theirs, _ = run_steps(twin, params, loss, 8)
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)
    torch_twin = (torch.optim.AdamW(_copies(params), lr=0.01, weight_decay=0.1)
                  if grafting == "adam" else torch.optim.SGD(_copies(params), lr=0.01,
                                                             momentum=0.9))
    ref, _ = run_steps(lambda ps: torch_twin, torch_twin.param_groups[0]["params"], loss, 8,
                       copy=False)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def _copies(params):
    return [p.detach().clone().requires_grad_(True) for p in params]


def run_steps(make, params, loss, steps, copy=True):
    ps = _copies(params) if copy else params
    opt = make(ps)
    for _ in range(steps):
        opt.zero_grad()
        loss(ps).backward()
        opt.step()
    return ps, opt


@pytest.mark.parametrize("block_size,shape", [(4, (7, 5)), (16, (6, 6)), (3, (5,))])
def test_shampoo_preconditioner_equals_a_dense_float64_reference(block_size, shape):
    """Raw Shampoo (no grafting, no momentum), roots every step, blocks of ``block_size``
    (padded at the edges): each block B moves by -lr·L^(-1/4) B R^(-1/4) with L = Σ B Bᵀ,
    R = Σ BᵀB, or -lr·(Σ b bᵀ + εI)^(-1/2) b for a vector (powers by numpy's eigh on each
    unpadded block)."""
    import numpy as np

    def fractional_matrix_power(a, power):
        values, vectors = np.linalg.eigh(a)
        return (vectors * values ** power) @ vectors.T

    g = torch.Generator().manual_seed(1)
    w0 = torch.randn(shape, generator=g, dtype=torch.float64)
    target = torch.randn(shape, generator=g, dtype=torch.float64)
    mix = torch.randn(shape[-1], shape[-1], generator=g, dtype=torch.float64)

    def loss(w):
        return (((w - target) @ mix) ** 2 * (1 + w ** 2)).sum()

    lr, eps = 0.05, 1e-6
    w = w0.clone().requires_grad_(True)
    opt = metaopt.optim.Shampoo([w], lr=lr, grafting="none", betas=(0.0, 0.999), eps=eps,
                                precondition_frequency=1, start_preconditioning_step=1,
                                block_size=block_size)
    ref = w0.clone()
    sums: dict = {}
    for _ in range(4):
        opt.zero_grad()
        loss(w).backward()
        opt.step()
        r = ref.clone().requires_grad_(True)
        loss(r).backward()
        grad = r.grad.reshape(shape[0], -1).numpy()  # a vector as a column
        update = np.zeros_like(grad)
        for i in range(0, grad.shape[0], block_size):
            for j in range(0, grad.shape[1], block_size):
                b = grad[i:i + block_size, j:j + block_size]
                left, right = sums.get((i, j), (0, 0))
                left, right = left + b @ b.T, right + b.T @ b
                sums[(i, j)] = (left, right)
                root = -0.25 if len(shape) == 2 else -0.5
                u = fractional_matrix_power(left + eps * np.eye(len(left)), root) @ b
                if len(shape) == 2:
                    u = u @ fractional_matrix_power(right + eps * np.eye(len(right)), root)
                update[i:i + block_size, j:j + block_size] = u
        ref = ref - lr * torch.from_numpy(update).reshape(shape)
        torch.testing.assert_close(w.detach(), ref, rtol=0, atol=1e-10)


def test_shampoo_grafts_each_block_onto_adams_step_norm():
    w0, loss = _matrix_problem(7, 5)
    w = w0.clone().requires_grad_(True)
    twin = w0.clone().requires_grad_(True)
    opt = metaopt.optim.Shampoo([w], lr=0.01, precondition_frequency=1,
                                start_preconditioning_step=1, block_size=4)
    adam = metaopt.optim.Adam([twin], lr=0.01)
    for x, o in ((w, opt), (twin, adam)):
        o.zero_grad()
        loss(x).backward()
        o.step()
    for rows in (slice(0, 4), slice(4, 7)):
        for cols in (slice(0, 4), slice(4, 5)):
            ours = (w.detach() - w0)[rows, cols].norm()
            adams = (twin.detach() - w0)[rows, cols].norm()
            torch.testing.assert_close(ours, adams, rtol=1e-12, atol=0)
    assert not torch.allclose(w.detach(), twin.detach())  # same norms, other directions


@pytest.mark.parametrize("shape", [(6, 6), (3, 4, 2)])
def test_soap_with_frequency_one_matches_a_dense_float64_reference(shape):
    """SOAP as one big Kronecker-rotated AdamW: with Q = Q₁ ⊗ Q₂ (⊗ Q₃) the eigenbases of the
    factors' EMAs, v carried into each new basis (v ← ((Q_oldᵀQ)²)ᵀ v), v ← β₂v + (1-β₂)(Qᵀg)²,
    u = Q(Qᵀm / (√v̂ + ε)), from the second step on (the first only builds the basis).
    ε = 1e-3: the rotated
    gradient is near-diagonal early on, and ε⁻¹ amplifies rounding in its zero entries (at
    ε = 1e-8 the two agree to ~1e-8 only)."""
    g = torch.Generator().manual_seed(2)
    w0 = torch.randn(shape, generator=g, dtype=torch.float64)
    target = torch.randn(shape, generator=g, dtype=torch.float64)

    def loss(w):
        return ((w - target) ** 2 * (1 + w ** 2)).sum() + (w.sum(0) ** 2).sum()

    b1, b2, bs, lr, eps, wd = 0.9, 0.95, 0.8, 0.05, 1e-3, 0.01
    w = w0.clone().requires_grad_(True)
    opt = metaopt.optim.SOAP([w], lr=lr, betas=(b1, b2), shampoo_beta=bs, eps=eps,
                             weight_decay=wd, precondition_frequency=1)
    ref = w0.clone()
    factors = [torch.zeros(d, d, dtype=torch.float64) for d in shape]
    m = torch.zeros(w0.numel(), dtype=torch.float64)
    v = torch.zeros(w0.numel(), dtype=torch.float64)
    old = torch.eye(w0.numel(), dtype=torch.float64)
    for t in range(1, 7):
        opt.zero_grad()
        loss(w).backward()
        opt.step()
        r = ref.clone().requires_grad_(True)
        loss(r).backward()
        grad = r.grad
        q = torch.ones(1, 1, dtype=torch.float64)
        for i, d in enumerate(shape):
            unfolded = grad.movedim(i, 0).reshape(d, -1)
            factors[i] = bs * factors[i] + (1 - bs) * unfolded @ unfolded.T
            q = torch.kron(q, torch.linalg.eigh(factors[i]).eigenvectors)
        v = ((old.T @ q) ** 2).T @ v  # the second moment carried into the new basis
        old = q
        if t == 1:  # the first gradient only builds the basis
            torch.testing.assert_close(w.detach(), ref, rtol=0, atol=0)
            continue
        flat = grad.reshape(-1)
        m = b1 * m + (1 - b1) * flat
        v = b2 * v + (1 - b2) * (q.T @ flat) ** 2
        u = q @ ((q.T @ m) / ((v / (1 - b2 ** (t - 1))).sqrt() + eps))
        ref = ref * (1 - lr * wd) - lr / (1 - b1 ** (t - 1)) * u.reshape(shape)
        torch.testing.assert_close(w.detach(), ref, rtol=0, atol=1e-10)


def test_soap_without_a_basis_is_adamw_exactly():
    params, loss = problem()
    ours, _ = run_steps(lambda ps: metaopt.optim.SOAP(ps, lr=0.01, betas=(0.9, 0.999),
                                                      max_precond_dim=1), params, loss, 8)
    theirs, _ = run_steps(lambda ps: metaopt.optim.AdamW(ps, lr=0.01, betas=(0.9, 0.999),
                                                         backend="reference"), params, loss, 8)
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name,kwargs", [
    ("shampoo", {"precondition_frequency": 3, "start_preconditioning_step": 2,
                 "block_size": 4}),
    ("soap", {"precondition_frequency": 3, "precondition_1d": True, "block_size": 4})])
def test_preconditioned_members_equal_separate_runs_and_reset_on_their_own_clock(name,
                                                                               kwargs):
    """Population members with preconditioning on (the shared population tests run the
    defaults, which precondition later): equal to separate runs, and a member reset at step 4
    follows its own root schedule from there, like a fresh optimizer."""
    from optim_cases import BY_NAME, member_kwargs, population_kwargs, stacked_problem

    case = BY_NAME[name]
    stacked, loss, members = stacked_problem(case, 3)
    pop, opt = run_steps(lambda ps: metaopt.optim.create(name, ps, population=3, **kwargs,
                                                         **population_kwargs(case)),
                         stacked, loss, 4)
    with torch.no_grad():
        pop[0][1] = stacked[0][1]
        for p, init in zip(pop[1:], stacked[1:]):
            p[1] = init[1]
    opt.reset_member(1)
    assert opt.param_groups[0]["clock"] == [4, 0, 4]
    for _ in range(5):
        opt.zero_grad()
        loss(pop).backward()
        opt.step()
    for i, steps in ((0, 9), (1, 5), (2, 9)):
        single, _ = run_steps(lambda ps, i=i: metaopt.optim.create(
            name, ps, **kwargs, **member_kwargs(case, i)), members[i][0], members[i][1], steps)
        for s, p in zip(pop, single):
            torch.testing.assert_close(s[i].detach(), p.detach(), rtol=1e-11, atol=1e-12)


# -- K-FAC ----------------------------------------------------------------------------------
def _kfac_step(module_list, loss_fn, **kwargs):
    """One K-FAC step (kl_clip off unless given) over ``module_list``'s parameters; returns
    the optimizer and the gradients before preconditioning."""
    params = [p for m in module_list for p in m.parameters()]
    opt = metaopt.optim.KFAC(params, **{"kl_clip": None, "lr": 0.1, **kwargs})
    grads = {}

    def closure():
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        grads.update({id(p): p.grad.clone() for p in params})
        return loss

    opt.step(closure)
    return opt, grads


def test_kfac_factors_of_a_linear_layer_equal_hand_computed_ones():
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    y = torch.randn(5, 2, dtype=torch.float64)
    out = layer(x)
    out.retain_grad()
    ((out - y) ** 2).mean().backward()
    a = torch.cat([x, torch.ones(5, 1, dtype=torch.float64)], dim=1)
    hand_a = sum(torch.outer(r, r) for r in a) / 5
    per_example = out.grad * 5  # each example's own output gradient
    hand_g = sum(torch.outer(r, r) for r in per_example) / 5
    opt, _ = _kfac_step([layer], lambda: ((layer(x) - y) ** 2).mean())
    torch.testing.assert_close(opt.kfac[0]["A"], hand_a, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(opt.kfac[0]["G"], hand_g, rtol=1e-12, atol=1e-14)


def test_kfac_factors_of_a_conv_layer_equal_hand_computed_ones():
    """Patches cut out by hand (stride 2, padding 1, 2×2 kernel), one row per position."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(2, 3, kernel_size=2, stride=2, padding=1).double()
    x = torch.randn(4, 2, 5, 5, dtype=torch.float64)
    out = conv(x)
    out.retain_grad()
    out.pow(2).mean().backward()
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    rows, grads = [], []
    for i in range(4):
        for r in range(out.shape[2]):
            for c in range(out.shape[3]):
                patch = padded[i, :, 2 * r:2 * r + 2, 2 * c:2 * c + 2].reshape(-1)
                rows.append(torch.cat([patch, torch.ones(1, dtype=torch.float64)]))
                grads.append(out.grad[i, :, r, c] * 4)  # times the batch size
    hand_a = sum(torch.outer(r, r) for r in rows) / len(rows)
    hand_g = sum(torch.outer(g, g) for g in grads) / 4  # summed over positions
    opt, _ = _kfac_step([conv], lambda: conv(x).pow(2).mean())
    torch.testing.assert_close(opt.kfac[0]["A"], hand_a, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(opt.kfac[0]["G"], hand_g, rtol=1e-12, atol=1e-14)


def test_kfac_step_is_the_damped_kronecker_solve_and_other_layers_fall_back():
    """SGD(lr) on (G ⊗ A + λI)⁻¹ vec([∇W, ∇b]) for the Linear; plain SGD for the
    LayerNorm's parameters, which no Kronecker block covers."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3)).double()
    x = torch.randn(8, 4, dtype=torch.float64)
    before = [p.detach().clone() for p in net.parameters()]
    opt, grads = _kfac_step([net], lambda: net(x).sin().sum() / 8, damping=0.05)
    s = opt.kfac[0]
    w, b = net[0].weight, net[0].bias
    m = torch.cat([grads[id(w)], grads[id(b)].reshape(-1, 1)], dim=1)
    solve = torch.linalg.solve(torch.kron(s["G"], s["A"]) + 0.05 * torch.eye(15,
                               dtype=torch.float64), m.reshape(-1)).reshape(3, 5)
    torch.testing.assert_close(before[0] - w.detach(), 0.1 * solve[:, :4], rtol=1e-10,
                               atol=1e-12)
    torch.testing.assert_close(before[1] - b.detach(), 0.1 * solve[:, 4], rtol=1e-10,
                               atol=1e-12)
    for p, p0 in zip(list(net.parameters())[2:], before[2:]):
        torch.testing.assert_close(p0 - p.detach(), 0.1 * grads[id(p)], rtol=1e-12, atol=0)


def test_kfac_with_a_model_needs_no_closure_and_checkpoints_continue():
    torch.manual_seed(0)
    x = torch.randn(16, 4, dtype=torch.float64)
    y = torch.randn(16, 2, dtype=torch.float64)

    def make():
        torch.manual_seed(1)
        return torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(),
                                   torch.nn.Linear(6, 2)).double()

    a, b = make(), make()
    opt_a = metaopt.optim.KFAC(a.parameters(), lr=0.05, momentum=0.9, update_freq=2)
    opt_b = metaopt.optim.KFAC(b.parameters(), lr=0.05, momentum=0.9, update_freq=2, model=b)

    def loss(net):
        return ((net(x) - y) ** 2).mean()

    for _ in range(3):
        opt_a.step(_closure(opt_a, None, lambda _: loss(a)))
        opt_b.zero_grad()
        loss(b).backward()
        opt_b.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)
    assert set(opt_a.kfac) == {0, 2}  # the two Linear weights
    c = make()
    opt_c = metaopt.optim.KFAC(c.parameters(), lr=0.05, momentum=0.9, update_freq=2)
    opt_c.load_state_dict(_saved(opt_a))
    with torch.no_grad():
        for p, q in zip(c.parameters(), a.parameters()):
            p.copy_(q)
    for _ in range(3):
        opt_a.step(_closure(opt_a, None, lambda _: loss(a)))
        opt_c.step(_closure(opt_c, None, lambda _: loss(c)))
    for p, q in zip(a.parameters(), c.parameters()):
        assert torch.equal(p, q)
    with pytest.raises(RuntimeError, match="closure"):
        opt_a.step()


# -- state memory -----------------------------------------------------------------------------
def test_state_bytes_counts_each_storage_once_for_any_optimizer():
    from metaopt.optim import state_bytes

    x = torch.zeros(10, 10, requires_grad=True)
    x.grad = torch.ones_like(x)
    adam = metaopt.optim.Adam([x], backend="reference")
    assert state_bytes(adam) == 0
    adam.step()
    assert state_bytes(adam) == 2 * 400 + 4  # two moments, a float32 step count
    flat = metaopt.optim.Adam([x, torch.zeros(5, requires_grad=True)], backend="eager")
    flat.param_groups[0]["params"][1].grad = torch.ones(5)
    flat.step()
    assert state_bytes(flat) <= 2 * 4 * 105 + 64  # views into flat buffers, counted once
    torch_adam = torch.optim.Adam([x])
    torch_adam.step()
    assert state_bytes(torch_adam) == 2 * 400 + 4
    shared = torch.zeros(7)

    class Fake(torch.optim.Optimizer):
        pass

    fake = Fake([x], {})
    fake.state[x] = {"a": shared, "b": [shared[:3], {"c": torch.zeros(2, dtype=torch.float64)}]}
    assert state_bytes(fake) == 28 + 16
    params, loss = problem(dtype=torch.float32)
    ours, opt, _ = closure_run(lambda ps: LBFGS(ps, history_size=3, max_iter=5), params, loss,
                               2)
    _, ref, _ = closure_run(lambda ps: torch.optim.LBFGS(ps, history_size=3, max_iter=5),
                            params, loss, 2)
    numel = sum(p.numel() for p in ours)
    assert state_bytes(ref) >= (2 * 3 + 2) * 4 * numel  # 3 (s, y) pairs, d, previous g
    assert 0 <= state_bytes(opt) - state_bytes(ref) <= 8  # our step length t is a tensor
