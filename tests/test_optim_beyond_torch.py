"""AdaBound, LAMB, Lion and Lookahead against float64 references written from their papers.

Each reference is a plain loop over steps and parameters that shares no code with the update
rules. The shared invariant and population tests run over these optimizers through
``BEYOND_TORCH_CASES`` in optim_cases.py.
"""

import copy
import math

import pytest
import torch
from optim_cases import T, problem, run

import metaopt
from metaopt.optim import LAMB, SGD, AdaBound, Adam, Lion, Lookahead, create

STEPS = 12
TOL = dict(rtol=1e-12, atol=1e-12)


def assert_params_equal(ours, theirs):
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.detach(), b.detach(), **TOL)


def reference_run(update, params, loss, steps, lr_at=None):
    """Apply ``update(t, ps, grads, lr)`` for t = 1..steps (lr_at(t) gives the lr of step t)."""
    ps = [p.detach().clone().requires_grad_(True) for p in params]
    for t in range(1, steps + 1):
        grads = torch.autograd.grad(loss(ps), ps)
        with torch.no_grad():
            update(t, ps, grads, lr_at(t) if lr_at else None)
    return ps


# -- AdaBound -----------------------------------------------------------------------------
def adabound_reference(lr=1e-3, betas=(0.9, 0.999), final_lr=0.1, gamma=1e-3, eps=1e-8,
                       weight_decay=0.0, amsbound=False, maximize=False):
    """Luo et al. 2019 as the authors implement it (Luolc/AdaBound): Adam's bias-corrected
    step size α_t = lr √(1-β2ᵗ)/(1-β1ᵗ), then η_t = clip(α_t / (√v_t + ε), η_l(t), η_u(t)),
    η_l = f (1 - 1/(γt+1)), η_u = f (1 + 1/(γt)), f = final_lr · lr_t / lr_0; x -= η_t m_t."""
    b1, b2 = (float(b) for b in betas)
    m, v, v_max = {}, {}, {}
    base_lr = float(lr)

    def update(t, ps, grads, lr_t):
        lr_t = float(lr) if lr_t is None else lr_t
        final = float(final_lr) * lr_t / base_lr
        lower = final * (1 - 1 / (gamma * t + 1))
        upper = final * (1 + 1 / (gamma * t)) if gamma > 0 else math.inf
        alpha_t = lr_t * math.sqrt(1 - b2**t) / (1 - b1**t)
        for i, (p, g) in enumerate(zip(ps, grads)):
            g = -g if maximize else g
            g = g + weight_decay * p
            m[i] = b1 * m.get(i, 0) + (1 - b1) * g
            v[i] = b2 * v.get(i, 0) + (1 - b2) * g * g
            second = v[i]
            if amsbound:
                v_max[i] = torch.maximum(v_max.get(i, torch.zeros_like(p)), v[i])
                second = v_max[i]
            eta = (alpha_t / (second.sqrt() + eps)).clamp(lower, upper)
            p -= eta * m[i]

    return update


ADABOUND_VARIANTS = [{}, {"lr": 0.01, "final_lr": 0.05, "gamma": 0.1},
                     {"amsbound": True, "weight_decay": 0.1, "lr": 0.02},
                     {"betas": (0.5, 0.9), "eps": 1e-4, "gamma": 0.0, "maximize": True},
                     {"lr": T(0.003), "final_lr": T(0.01), "gamma": 0.5}]


@pytest.mark.parametrize("kwargs", ADABOUND_VARIANTS, ids=str)
@pytest.mark.parametrize("backend", ["reference", "eager"])
def test_adabound_matches_reference(kwargs, backend):
    params, loss = problem()
    ours, _ = run(lambda ps: AdaBound(ps, backend=backend, **copy.deepcopy(kwargs)), params,
                  loss, STEPS)
    floats = {k: (float(v) if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
    assert_params_equal(ours, reference_run(adabound_reference(**floats), params, loss, STEPS))


def test_adabound_bounds_follow_an_lr_schedule():
    """final_lr is scaled by lr / base_lr, base_lr being the lr at construction."""
    params, loss = problem()
    lr0 = torch.tensor(0.02, dtype=torch.float64)
    ours, opt = run(lambda ps: AdaBound(ps, lr=lr0, final_lr=0.05, gamma=0.2), params, loss,
                    STEPS, lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5))
    assert float(opt.hparams[0]["base_lr"]) == 0.02  # a copy: lr (lr0 itself) was halved
    assert float(lr0) == pytest.approx(0.02 * 0.5**4)
    ref = reference_run(adabound_reference(lr=0.02, final_lr=0.05, gamma=0.2), params, loss,
                        STEPS, lr_at=lambda t: 0.02 * 0.5 ** ((t - 1) // 3))
    assert_params_equal(ours, ref)


def test_adabound_base_lr_is_a_hyperparameter():
    x = [torch.zeros(3, requires_grad=True)]
    assert AdaBound(x, lr=0.1, base_lr=0.2).hparams[0]["base_lr"].item() == 0.2
    pop = AdaBound([torch.zeros(3, 2, requires_grad=True)], lr=[0.1, 0.2, 0.3], population=3)
    assert pop.hparams[0]["base_lr"].tolist() == pytest.approx([0.1, 0.2, 0.3])
    pop.param_groups[0]["lr"] = [0.05, 0.1, 0.15]  # base_lr keeps the construction values
    assert pop.hparams[0]["base_lr"].tolist() == pytest.approx([0.1, 0.2, 0.3])
    assert pop.state_dict()["param_groups"][0]["base_lr"].tolist() == pytest.approx(
        [0.1, 0.2, 0.3])


# -- LAMB ---------------------------------------------------------------------------------
def lamb_reference(lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0,
                   bias_correction=True, maximize=False):
    """You et al. 2020, Algorithm 2: m, v as Adam; r = m̂/(√v̂ + ε); u = r + λx;
    x -= η ‖x‖/‖u‖ u per layer, the ratio taken as 1 when either norm is 0."""
    b1, b2 = betas
    m, v = {}, {}

    def update(t, ps, grads, _):
        for i, (x, g) in enumerate(zip(ps, grads)):
            g = -g if maximize else g
            m[i] = b1 * m.get(i, 0) + (1 - b1) * g
            v[i] = b2 * v.get(i, 0) + (1 - b2) * g * g
            m_hat, v_hat = m[i], v[i]
            if bias_correction:
                m_hat, v_hat = m_hat / (1 - b1**t), v_hat / (1 - b2**t)
            u = m_hat / (v_hat.sqrt() + eps) + weight_decay * x
            x_norm, u_norm = float(x.norm()), float(u.norm())
            ratio = x_norm / u_norm if x_norm > 0 and u_norm > 0 else 1.0
            x -= lr * ratio * u

    return update


LAMB_VARIANTS = [{}, {"lr": 0.01, "weight_decay": 0.1}, {"bias_correction": False, "eps": 1e-3},
                 {"betas": (0.8, 0.99), "lr": 0.02, "maximize": True},
                 {"betas": (0.0, 0.5), "weight_decay": 0.01, "eps": 1e-8}]


@pytest.mark.parametrize("kwargs", LAMB_VARIANTS, ids=str)
def test_lamb_matches_reference(kwargs):
    params, loss = problem()
    ours, _ = run(lambda ps: LAMB(ps, **kwargs), params, loss, STEPS)
    assert_params_equal(ours, reference_run(lamb_reference(**kwargs), params, loss, STEPS))


def test_lamb_trust_ratio_is_one_where_a_norm_is_zero():
    x = torch.zeros(4, dtype=torch.float64, requires_grad=True)  # ||p|| = 0: an Adam step
    opt = LAMB([x], lr=0.1, eps=0.0)
    x.grad = torch.tensor([1.0, -2.0, 0.5, 0.25], dtype=torch.float64)
    opt.step()
    torch.testing.assert_close(x.detach(), -0.1 * torch.tensor([1.0, -1.0, 1.0, 1.0],
                                                               dtype=torch.float64))
    y = torch.ones(3, dtype=torch.float64, requires_grad=True)  # ||u|| = 0: no move, no NaN
    opt = LAMB([y], lr=0.1)
    y.grad = torch.zeros(3, dtype=torch.float64)
    opt.step()
    assert torch.equal(y.detach(), torch.ones(3, dtype=torch.float64))


def test_lamb_trust_ratio_is_per_member():
    """Member 1's weights are 10x member 0's: its step is 10x larger (the same direction)."""
    w = torch.tensor([[1.0, -2.0, 3.0], [10.0, -20.0, 30.0]], dtype=torch.float64)
    w.requires_grad_(True)
    opt = LAMB([w], lr=0.01, population=2)
    w.grad = torch.tensor([[0.5, 0.5, -1.0], [0.5, 0.5, -1.0]], dtype=torch.float64)
    before = w.detach().clone()
    opt.step()
    moved = before - w.detach()
    torch.testing.assert_close(moved[1], 10 * moved[0])


# -- Lion ---------------------------------------------------------------------------------
def lion_reference(lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, maximize=False):
    """Chen et al. 2023, Program 1: u = sign(β1 m + (1-β1) g); x ← x - lr (u + λx);
    m ← β2 m + (1-β2) g."""
    b1, b2 = betas
    m = {}

    def update(t, ps, grads, _):
        for i, (x, g) in enumerate(zip(ps, grads)):
            g = -g if maximize else g
            m_prev = m.get(i, torch.zeros_like(x))
            u = torch.sign(b1 * m_prev + (1 - b1) * g)
            x.copy_(x * (1 - lr * weight_decay) - lr * u)
            m[i] = b2 * m_prev + (1 - b2) * g

    return update


LION_VARIANTS = [{}, {"lr": 1e-3, "weight_decay": 0.1}, {"betas": (0.5, 0.9), "lr": 0.01},
                 {"betas": (0.0, 0.5), "lr": 3e-3, "maximize": True, "weight_decay": 1.0}]


@pytest.mark.parametrize("kwargs", LION_VARIANTS, ids=str)
@pytest.mark.parametrize("backend", ["reference", "eager"])
def test_lion_matches_reference(kwargs, backend):
    params, loss = problem()
    ours, _ = run(lambda ps: Lion(ps, backend=backend, **kwargs), params, loss, STEPS)
    assert_params_equal(ours, reference_run(lion_reference(**kwargs), params, loss, STEPS))


# -- Lookahead ----------------------------------------------------------------------------
def lookahead_reference(params, loss, steps, make_inner, k, alpha, scheduler_factory=None):
    """Zhang et al. 2019, Algorithm 1, over a torch.optim optimizer: every k inner steps
    φ ← φ + α (θ - φ), θ ← φ."""
    ps = [p.detach().clone().requires_grad_(True) for p in params]
    inner = make_inner(ps)
    sched = scheduler_factory(inner) if scheduler_factory else None
    slow = [p.detach().clone() for p in ps]
    for t in range(1, steps + 1):
        inner.zero_grad()
        loss(ps).backward()
        inner.step()
        if sched is not None:
            sched.step()
        if t % k == 0:
            with torch.no_grad():
                for p, s in zip(ps, slow):
                    s += alpha * (p - s)
                    p.copy_(s)
    return ps


LOOKAHEAD_VARIANTS = [({"lr": 0.05}, 5, 0.5), ({"lr": 0.05, "momentum": 0.9}, 3, 0.8),
                      ({"lr": 0.1, "momentum": 0.5, "nesterov": True}, 1, 0.3),
                      ({"lr": 0.02, "weight_decay": 0.1, "momentum": 0.9}, 4, 1.0),
                      ({"lr": 0.1}, 2, 0.0)]


@pytest.mark.parametrize("sgd,k,alpha", LOOKAHEAD_VARIANTS, ids=str)
@pytest.mark.parametrize("backend", ["reference", "eager"])
def test_lookahead_sgd_matches_hand_written_lookahead_over_torch_sgd(sgd, k, alpha, backend):
    params, loss = problem()
    ours, _ = run(lambda ps: Lookahead(SGD(ps, backend=backend, **sgd), k=k, alpha=alpha),
                  params, loss, STEPS)
    ref = lookahead_reference(params, loss, STEPS, lambda ps: torch.optim.SGD(ps, **sgd), k,
                              alpha)
    assert_params_equal(ours, ref)
    by_name, _ = run(lambda ps: create("lookahead", ps, base="sgd", k=k, alpha=alpha, **sgd),
                     params, loss, STEPS)
    assert_params_equal(by_name, ref)


def test_lookahead_adam_with_an_lr_scheduler_on_the_shared_groups():
    params, loss = problem()

    def sched(opt):
        return torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5)

    ours, opt = run(lambda ps: Lookahead(Adam(ps, lr=0.02), k=3, alpha=0.6), params, loss,
                    STEPS, sched)
    ref = lookahead_reference(params, loss, STEPS, lambda ps: torch.optim.Adam(ps, lr=0.02),
                              3, 0.6, sched)
    assert_params_equal(ours, ref)
    assert opt.param_groups is opt.optimizer.param_groups
    assert opt.param_groups[0]["lr"].item() == pytest.approx(0.02 * 0.5**3)


def test_lookahead_population_with_per_member_k_and_alpha():
    """[P] k and alpha (tensors, one written in place) equal P separate Lookahead runs."""
    P = 3
    members = [problem(seed=i) for i in range(P)]
    stacked = [torch.stack(ps) for ps in zip(*(m[0] for m in members))]

    def total(ps):
        return sum(m[1]([p[i] for p in ps]) for i, m in enumerate(members))

    k = torch.tensor([2, 3, 4])
    alpha = torch.tensor([0.5, 0.9, 0.2], dtype=torch.float64)
    pop = [p.clone().requires_grad_(True) for p in stacked]
    opt = Lookahead(SGD(pop, lr=[0.05, 0.1, 0.02], momentum=0.9, population=P), k=k,
                    alpha=alpha)
    opt.hparams[0]["lookahead_k"][2] = 5  # in-place writes reach the step
    for _ in range(STEPS):
        opt.zero_grad()
        total(pop).backward()
        opt.step()
    for i, (params, loss) in enumerate(members):
        single, _ = run(lambda ps, i=i: Lookahead(SGD(ps, lr=[0.05, 0.1, 0.02][i],
                                                      momentum=0.9),
                                                  k=[2, 3, 5][i], alpha=float(alpha[i])),
                        params, loss, STEPS)
        for s, p in zip(pop, single):
            torch.testing.assert_close(s[i].detach(), p.detach(), **TOL)
    assert opt.state[pop[0]]["slow_param"].shape == pop[0].shape


def test_lookahead_forwards_the_inner_optimizers_interface():
    x = torch.tensor([3.0, -2.0], dtype=torch.float64, requires_grad=True)
    inner = Adam([x], lr=0.1)
    opt = Lookahead(inner, k=2)
    assert isinstance(opt, torch.optim.Optimizer)
    for flag in ("needs_closure", "needs_model", "supports_population"):
        assert getattr(opt, flag) == getattr(inner, flag)
    assert opt.hparams is not None and set(opt.hparams[0]) >= {"lr", "lookahead_k"}

    def closure():
        opt.zero_grad()
        loss = (x**2).sum()
        loss.backward()
        return loss

    assert float(opt.step(closure).detach()) == pytest.approx(13.0)
    y = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt.add_param_group({"params": [y], "lr": 0.5, "lookahead_k": 7})
    assert opt.param_groups[1]["lookahead_k"].item() == 7
    assert opt.param_groups[1]["lookahead_alpha"].item() == 0.5
    assert len(inner.param_groups) == 2
    assert "Lookahead" in repr(opt)


def test_lookahead_state_dict_round_trip_and_plain_inner_state():
    params, loss = problem()
    ours, opt = run(lambda ps: Lookahead(Adam(ps, lr=0.01), k=3, alpha=0.4), params, loss, 5)
    sd = copy.deepcopy(opt.state_dict())
    assert set(sd["lookahead"]) == {0, 1, 2, 3}
    qs = [p.detach().clone().requires_grad_(True) for p in ours]
    twin = Lookahead(Adam(qs, lr=0.5), k=9, alpha=0.9)
    twin.load_state_dict(sd)
    assert twin.hparams[0]["lookahead_k"].item() == 3
    assert twin.hparams[0]["lookahead_alpha"].item() == pytest.approx(0.4)
    for ps, o in ((ours, opt), (qs, twin)):
        for _ in range(4):
            o.zero_grad()
            loss(ps).backward()
            o.step()
    for a, b in zip(ours, qs):
        assert torch.equal(a, b)
    torch.optim.Adam(qs, lr=0.01).load_state_dict(sd)  # the inner part is torch's format


def test_lookahead_create_by_name_routes_keywords():
    x = [torch.zeros(3, requires_grad=True)]
    opt = create("lookahead", x, base="rmsprop", alpha=0.9, lookahead_alpha=0.3, k=4)
    assert type(opt.optimizer).__name__ == "RMSprop"
    hp = opt.hparams[0]
    assert (hp["alpha"].item(), hp["lookahead_alpha"].item(), hp["lookahead_k"].item()) == (
        pytest.approx(0.9), pytest.approx(0.3), 4)
    assert type(create("lookahead", x).optimizer).__name__ == "Adam"
    assert "lookahead" in metaopt.optim.names()


@pytest.mark.parametrize("make,match", [
    (lambda x: AdaBound(x, gamma=1.0), r"gamma = 1 .*\[0, 1\)"),
    (lambda x: AdaBound(x, final_lr=-0.1), r"final_lr = -0.1 .*out of range"),
    (lambda x: LAMB(x, eps=-1e-6), r"eps = -1e-06 .*out of range"),
    (lambda x: LAMB(x, betas=(0.9, 1.0)), r"beta2 = 1 .*\[0, 1\)"),
    (lambda x: Lion(x, betas=(1.5, 0.99)), r"beta1 = 1.5 .*\[0, 1\)"),
    (lambda x: Lion(x, weight_decay=-1), r"weight_decay = -1 .*out of range"),
    (lambda x: Lookahead(Adam(x), k=0), r"lookahead_k = 0 .*\[1, inf\)"),
    (lambda x: Lookahead(Adam(x), k=2.5), r"lookahead_k = 2.5 must be a whole number"),
    (lambda x: Lookahead(Adam(x), alpha=1.5), r"lookahead_alpha = 1.5 .*\[0, 1\]"),
    (lambda x: Lookahead(Adam(x), k=[2, 3]), r"lookahead_k has 2 values .*no population"),
    (lambda x: create("lookahead", x, alpha=0.5, lookahead_alpha=0.5), r"not both"),
    (lambda x: create("lookahead", x, base="nope"), r"unknown optimizer 'nope'"),
])
def test_bad_values_raise_clear_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make([torch.zeros(3, requires_grad=True)])


def test_bad_writes_raise_and_lookahead_wraps_only_metaopt_optimizers():
    x = [torch.zeros(3, 2, requires_grad=True)]
    opt = Lookahead(Adam(x, population=3), k=[1, 2, 3])
    with pytest.raises(ValueError, match=r"lookahead_k = 2.5 \(member 1\) must be a whole"):
        opt.param_groups[0]["lookahead_k"] = [1, 2.5, 2]
    assert opt.hparams[0]["lookahead_k"].tolist() == [1, 2, 3]
    with pytest.raises(TypeError, match="MetaOptimizer"):
        Lookahead(torch.optim.SGD(x, lr=0.1))
    with pytest.raises(ValueError, match="already wrapped"):
        Lookahead(opt.optimizer)
