"""Gradient transforms: torch's clipping utilities, AGC and annealed noise, per member."""

import copy
import io

import pytest
import torch
from optim_cases import problem

import metaopt
from metaopt.optim import SGD, Adam, Lookahead
from metaopt.transforms import AdaptiveClip, ClipByGlobalNorm, ClipByValue, GradientNoise

STEPS = 10
TOL = dict(rtol=1e-12, atol=1e-12)


def train(make_opt, params, loss, steps=STEPS, before_step=None):
    """``steps`` of ``make_opt(ps)`` on copies of ``params``; ``before_step(ps)`` runs between
    backward and step (where torch's clipping utilities go)."""
    ps = [p.detach().clone().requires_grad_(True) for p in params]
    opt = make_opt(ps)
    for _ in range(steps):
        opt.zero_grad()
        loss(ps).backward()
        if before_step is not None:
            before_step(ps)
        opt.step()
    return ps, opt


def assert_all_close(xs, ys, **tol):
    for x, y in zip(xs, ys):
        torch.testing.assert_close(x.detach(), y.detach(), **(tol or TOL))


# -- clipping equals torch's utilities ----------------------------------------------------
@pytest.mark.parametrize("max_norm,norm_type", [(0.1, 2.0), (0.5, 2.0), (100.0, 2.0),
                                                (0.05, float("inf")), (0.3, 1.0)])
@pytest.mark.parametrize("backend", ["reference", "eager"])
def test_clip_by_global_norm_equals_clip_grad_norm(max_norm, norm_type, backend):
    params, loss = problem()
    ours, _ = train(lambda ps: Adam(ps, lr=0.01, backend=backend).add_transform(
        ClipByGlobalNorm(max_norm, norm_type=norm_type)), params, loss)
    theirs, _ = train(lambda ps: torch.optim.Adam(ps, lr=0.01), params, loss,
                      before_step=lambda ps: torch.nn.utils.clip_grad_norm_(
                          ps, max_norm, norm_type=norm_type))
    assert_all_close(ours, theirs)


@pytest.mark.parametrize("clip_value", [0.01, 0.1, 10.0])
def test_clip_by_value_equals_clip_grad_value(clip_value):
    params, loss = problem()
    ours, _ = train(lambda ps: SGD(ps, lr=0.1, momentum=0.9).add_transform(
        ClipByValue(clip_value)), params, loss)
    theirs, _ = train(lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9), params, loss,
                      before_step=lambda ps: torch.nn.utils.clip_grad_value_(ps, clip_value))
    assert_all_close(ours, theirs)


def test_transforms_leave_the_users_grads_alone():
    params, loss = problem()
    ps = [p.detach().clone().requires_grad_(True) for p in params]
    opt = SGD(ps, lr=0.1)
    for t in (ClipByGlobalNorm(1e-3), ClipByValue(1e-3), AdaptiveClip(0.01), GradientNoise()):
        opt.add_transform(t)
    loss(ps).backward()
    grads = [p.grad.clone() for p in ps]
    opt.step()
    for p, g in zip(ps, grads):
        assert torch.equal(p.grad, g)


# -- adaptive gradient clipping -----------------------------------------------------------
def agc_reference(params, grads, clipping, eps):
    """Brock et al. 2021, section 4.1, unit by unit: rows of matrices, whole vectors."""
    out = []
    for p, g in zip(params, grads):
        g = g.clone()
        units = range(p.shape[0]) if p.dim() >= 2 else [...]
        for u in units:
            w_norm = max(float(p[u].detach().norm()), eps)
            g_norm = float(g[u].norm())
            if g_norm / w_norm > clipping:
                g[u] = g[u] * (clipping * w_norm / g_norm)
        out.append(g)
    return out


@pytest.mark.parametrize("clipping,eps", [(0.01, 1e-3), (0.05, 1e-3), (0.2, 0.5), (10.0, 1e-3)])
def test_adaptive_clip_matches_reference(clipping, eps):
    params, loss = problem()
    params[1] = torch.zeros_like(params[1])  # a zero bias: max(||W||, eps) = eps
    ours, _ = train(lambda ps: SGD(ps, lr=0.5).add_transform(AdaptiveClip(clipping, eps)),
                    params, loss)

    def clip(ps):
        for p, g in zip(ps, agc_reference(ps, [p.grad for p in ps], clipping, eps)):
            p.grad = g

    theirs, _ = train(lambda ps: torch.optim.SGD(ps, lr=0.5), params, loss, before_step=clip)
    assert_all_close(ours, theirs)


def test_adaptive_clip_units():
    """Conv filters are clipped per output channel; a [P] population per member and unit."""
    w = torch.ones(2, 3, 2, 2, dtype=torch.float64)  # ||filter|| = sqrt(12)
    g = torch.zeros_like(w)
    g[0] = 1.0  # filter 0: ratio 1 > 0.1: scaled to 0.1 ||W||; filter 1 untouched (0)
    out = AdaptiveClip(0.1)([w], [g], None)[0]
    torch.testing.assert_close(out[0].norm(), 0.1 * w[0].norm())
    assert torch.equal(out[1], g[1])
    clip = AdaptiveClip(clipping=[0.1, 10.0])
    clip.bind(SGD([w.clone().requires_grad_()], population=2))
    out = clip([w], [torch.ones_like(w)], 2)[0]  # member 0 clipped, member 1 not
    torch.testing.assert_close(out[0, 0].norm(), 0.1 * w[0, 0].norm())
    assert torch.equal(out[1], torch.ones_like(w[1]))


# -- populations: per member equals separate runs -----------------------------------------
P = 3
POPULATION_TRANSFORMS = [
    (ClipByGlobalNorm, {"max_norm": [0.05, 0.3, 100.0]}),
    (ClipByValue, {"clip_value": [0.01, 0.05, 10.0]}),
    (AdaptiveClip, {"clipping": [0.01, 0.05, 10.0], "eps": [1e-3, 0.1, 1e-3]}),
]


@pytest.mark.parametrize("cls,members", POPULATION_TRANSFORMS, ids=lambda x: getattr(
    x, "__name__", ""))
@pytest.mark.parametrize("backend", ["reference", "eager"])
def test_population_clipping_equals_separate_runs(cls, members, backend):
    runs = [problem(seed=i) for i in range(P)]
    stacked = [torch.stack(ps) for ps in zip(*(r[0] for r in runs))]

    def total(ps):
        return sum(r[1]([p[i] for p in ps]) for i, r in enumerate(runs))

    lrs = [0.01, 0.03, 0.02]
    pop, _ = train(lambda ps: Adam(ps, lr=lrs, population=P, backend=backend).add_transform(
        cls(**members)), stacked, total)
    for i, (params, loss) in enumerate(runs):
        single, _ = train(lambda ps, i=i: Adam(ps, lr=lrs[i]).add_transform(
            cls(**{k: v[i] for k, v in members.items()})), params, loss)
        for s, p in zip(pop, single):
            torch.testing.assert_close(s[i].detach(), p.detach(), **TOL)


def test_hparams_become_per_member_on_bind_and_in_place_writes_reach_the_step():
    x = [torch.zeros(3, 4, dtype=torch.float64, requires_grad=True)]
    clip = ClipByGlobalNorm(1.0)
    assert clip.hparams["max_norm"].shape == ()
    SGD(x, population=3).add_transform(clip)
    assert clip.hparams["max_norm"].tolist() == [1.0, 1.0, 1.0]
    params, loss = problem()
    ps = [p.detach().clone().requires_grad_(True) for p in params]
    clip = ClipByGlobalNorm(0.5)
    opt = SGD(ps, lr=0.1).add_transform(clip)
    qs = [p.detach().clone().requires_grad_(True) for p in params]
    ref = torch.optim.SGD(qs, lr=0.1)
    for k in range(6):
        if k == 3:
            clip.hparams["max_norm"].fill_(0.05)
        for group, opt_ in ((ps, opt), (qs, ref)):
            opt_.zero_grad()
            loss(group).backward()
        torch.nn.utils.clip_grad_norm_(qs, 0.5 if k < 3 else 0.05)
        opt.step()
        ref.step()
    assert_all_close(ps, qs)


# -- gradient noise -----------------------------------------------------------------------
def test_noise_is_reproducible_for_a_seed():
    params, loss = problem()
    runs = [train(lambda ps, s=s: SGD(ps, lr=0.1).add_transform(GradientNoise(0.1, seed=s)),
                  params, loss)[0] for s in (7, 7, 8)]
    for a, b in zip(runs[0], runs[1]):
        assert torch.equal(a, b)
    assert not torch.equal(runs[0][0], runs[2][0])


def test_noise_variance_follows_the_annealing_schedule():
    eta, gamma = 0.3, 0.55
    noise = GradientNoise(eta, gamma, seed=0)
    zero = [torch.zeros(40_000, dtype=torch.float64)]
    for t in range(50):
        out = noise([zero[0]], zero, None)[0]
        if t in (0, 1, 9, 49):
            expected = eta / (1 + t) ** gamma
            assert float(out.var()) == pytest.approx(expected, rel=0.03), t
            assert abs(float(out.mean())) < 4 * (expected / 40_000) ** 0.5
    assert float(noise.step) == 50


def test_noise_steps_are_counted_per_member():
    w = torch.zeros(3, 20_000, dtype=torch.float64, requires_grad=True)
    opt = SGD([w], lr=0.0, population=3)
    noise = GradientNoise(eta=[1.0, 0.5, 2.0], gamma=0.5, seed=1)
    opt.add_transform(noise)
    for _ in range(3):
        w.grad = torch.zeros_like(w)
        opt.step()
    noise.reset_member(1)
    assert noise.step.tolist() == [3.0, 0.0, 3.0]
    out = noise([w], [torch.zeros_like(w)], 3)[0]
    expected = [1.0 / 4**0.5, 0.5, 2.0 / 4**0.5]
    for i in range(3):
        assert float(out[i].var()) == pytest.approx(expected[i], rel=0.05)
    noise.copy_member(0, 2)
    assert noise.step.tolist() == [4.0, 1.0, 4.0] and noise.hparams["eta"][2].item() == 1.0


# -- checkpoints --------------------------------------------------------------------------
def with_transforms(seed):
    def make(ps):
        return Adam(ps, lr=0.01).add_transform(AdaptiveClip(0.05)).add_transform(
            GradientNoise(0.01, seed=seed)).add_transform(ClipByGlobalNorm(0.5))
    return make


@pytest.mark.parametrize("wrap", [False, True], ids=["adam", "lookahead"])
def test_state_dict_round_trip_with_transforms(wrap):
    params, loss = problem()

    def make(seed):
        inner = with_transforms(seed)
        return (lambda ps: Lookahead(inner(ps), k=2)) if wrap else inner

    ps, opt = train(make(3), params, loss, steps=3)
    opt.transforms[2].hparams["max_norm"].fill_(0.2)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    qs = [p.detach().clone().requires_grad_(True) for p in ps]
    restored = make(99)(qs)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.transforms[2].hparams["max_norm"].item() == pytest.approx(0.2)
    assert float(restored.transforms[1].step) == 3
    for xs, o in ((ps, opt), (qs, restored)):
        for _ in range(3):
            o.zero_grad()
            loss(xs).backward()
            o.step()
    for a, b in zip(ps, qs):
        assert torch.equal(a, b)
    wrong = Adam([p.detach().clone().requires_grad_(True) for p in ps])
    with pytest.raises(ValueError, match="3 gradient transforms"):
        wrong.load_state_dict(copy.deepcopy(opt.state_dict()))


# -- mixed precision: torch.amp.GradScaler ------------------------------------------------
def scaled_run(params, loss, steps, unscale_first=False, inf_at=None):
    ps = [p.detach().clone().requires_grad_(True) for p in params]
    opt = Adam(ps, lr=0.01).add_transform(ClipByGlobalNorm(0.1)).add_transform(
        GradientNoise(1e-4, seed=0))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    skipped = []
    for k in range(steps):
        opt.zero_grad()
        scaler.scale(loss(ps)).backward()
        if k == inf_at:
            ps[0].grad[0, 0] = float("inf")
            before = [p.detach().clone() for p in ps]
            steps_before = opt.state[ps[0]]["step"].clone()
        if unscale_first:
            scaler.unscale_(opt)  # as torch documents for clipping: unscale, then step
        scaler.step(opt)
        scale = scaler.get_scale()
        scaler.update()
        if k == inf_at:
            skipped = [torch.equal(p, b) for p, b in zip(ps, before)]
            assert torch.equal(opt.state[ps[0]]["step"], steps_before)
            assert scaler.get_scale() == scale / 2
    return ps, opt, skipped


@pytest.mark.parametrize("unscale_first", [False, True])
def test_grad_scaler_with_a_clipping_transform_equals_an_unscaled_run(unscale_first):
    params, loss = problem(dtype=torch.float32)
    scaled, _, _ = scaled_run(params, loss, 6, unscale_first)
    plain, _ = train(lambda ps: Adam(ps, lr=0.01).add_transform(ClipByGlobalNorm(0.1))
                     .add_transform(GradientNoise(1e-4, seed=0)), params, loss, steps=6)
    for a, b in zip(scaled, plain):
        assert torch.equal(a, b)


def test_grad_scaler_skips_a_step_whose_grads_contain_inf():
    params, loss = problem(dtype=torch.float32)
    _, opt, skipped = scaled_run(params, loss, 4, inf_at=2)
    assert skipped and all(skipped)
    assert float(opt.transforms[1].step) == 3  # the noise transform did not run either


# -- bad values ---------------------------------------------------------------------------
@pytest.mark.parametrize("make,match", [
    (lambda: ClipByGlobalNorm(-1.0), r"ClipByGlobalNorm: max_norm = -1 .*out of range"),
    (lambda: ClipByGlobalNorm(1.0, norm_type=0), r"norm_type must be > 0"),
    (lambda: ClipByValue(float("nan")), r"clip_value = nan .*out of range"),
    (lambda: AdaptiveClip(clipping=-0.01), r"clipping = -0.01 .*out of range"),
    (lambda: AdaptiveClip(eps=[1e-3, -1.0]), r"eps = -1 \(member 1\) .*out of range"),
    (lambda: GradientNoise(eta=-0.1), r"eta = -0.1 .*out of range"),
    (lambda: GradientNoise(seed=0.5), r"seed must be an int"),
    (lambda: ClipByValue("big"), r"clip_value must be a number"),
])
def test_bad_values_raise_clear_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bind_checks_member_counts_and_set_validates():
    x = [torch.zeros(3, 4, requires_grad=True)]
    with pytest.raises(ValueError, match=r"max_norm has shape \(2,\), expected .*\[3\]"):
        SGD(x, population=3).add_transform(ClipByGlobalNorm([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"max_norm has 3 values .*no population"):
        SGD(x).add_transform(ClipByGlobalNorm([1.0, 2.0, 3.0]))
    clip = ClipByGlobalNorm([1.0, 2.0, 3.0])
    SGD(x, population=3).add_transform(clip)
    with pytest.raises(ValueError, match=r"max_norm = -2 \(member 1\)"):
        clip.set(max_norm=[1.0, -2.0, 3.0])
    assert clip.hparams["max_norm"].tolist() == [1.0, 2.0, 3.0]
    clip.set(max_norm=0.5)
    assert clip.hparams["max_norm"].tolist() == [0.5, 0.5, 0.5]
    with pytest.raises(ValueError, match="unknown hyperparameter 'clip'"):
        clip.set(clip=1.0)
    assert "ClipByGlobalNorm(max_norm=" in repr(clip)
    assert metaopt.transforms.GradientNoise is GradientNoise
