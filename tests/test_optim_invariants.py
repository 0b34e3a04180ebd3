"""Invariants every optimizer keeps, run over the one list of optimizers."""

import copy
import io

import pytest
import torch
from optim_cases import CASES, TORCH_CASES, problem, run

import metaopt


@pytest.mark.parametrize("case", CASES, ids=str)
def test_state_dict_round_trip_continues_identically(case):
    params, loss = problem(case.matrices_only)
    kwargs = copy.deepcopy(case.variants[-1])
    ps, opt = run(lambda ps: metaopt.optim.create(case.name, ps, **kwargs), params, loss, 5)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    qs = [p.detach().clone().requires_grad_(True) for p in ps]
    restored = metaopt.optim.create(case.name, qs, **copy.deepcopy(case.variants[0]))
    restored.load_state_dict(saved)
    for a, b in zip(opt.hparams, restored.hparams):
        assert a.keys() == b.keys()
        for k in a:
            assert (a[k] is None and b[k] is None) or torch.equal(a[k], b[k]), k
    for params_, opt_ in ((ps, opt), (qs, restored)):
        for _ in range(5):
            opt_.zero_grad()
            loss(params_).backward()
            opt_.step()
    for a, b in zip(ps, qs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_dtype_is_kept(case, dtype):
    params, loss = problem(case.matrices_only, dtype=dtype)
    ps, opt = run(lambda ps: metaopt.optim.create(case.name, ps), params, loss, 3)
    for p in ps:
        assert p.dtype == dtype
        for key, value in opt.state[p].items():
            if value.shape == p.shape or key in ("row_var", "col_var"):
                assert value.dtype == dtype, key
        assert torch.isfinite(p.float()).all()


@pytest.mark.parametrize("case", CASES, ids=str)
def test_reaches_a_quadratics_optimum(case):
    g = torch.Generator().manual_seed(0)
    target = torch.randn(6, 4, generator=g, dtype=torch.float64)
    scale = torch.rand(6, 4, generator=g, dtype=torch.float64) + 0.5
    x = torch.zeros(6, 4, dtype=torch.float64, requires_grad=True)
    opt = metaopt.optim.create(case.name, [x], **case.quadratic)
    start = float(((x.detach() - target) ** 2 * scale).sum())
    for _ in range(case.quadratic_steps):
        opt.zero_grad()
        ((x - target) ** 2 * scale).sum().backward()
        opt.step()
    final = float(((x.detach() - target) ** 2 * scale).sum())
    assert final < 1e-3 * start, (case.name, start, final)


def _step_lr(opt):
    return torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)


def _one_cycle(opt, cycle):
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=12,
                                               cycle_momentum=cycle is not None)


@pytest.mark.parametrize("case", TORCH_CASES, ids=str)
@pytest.mark.parametrize("scheduler", ["StepLR", "OneCycleLR"])
def test_torch_schedulers_drive_it_as_they_drive_torch(case, scheduler):
    params, loss = problem(case.matrices_only)
    kwargs = dict(case.quadratic)
    if case.cycles == "momentum":
        kwargs.setdefault("momentum", 0.9)
    make_sched = (_step_lr if scheduler == "StepLR"
                  else (lambda opt: _one_cycle(opt, case.cycles)))
    ours, ours_opt = run(lambda ps: metaopt.optim.create(case.name, ps, **kwargs), params,
                         loss, 12, make_sched)
    theirs, theirs_opt = run(lambda ps: case.torch_cls(ps, **kwargs), params, loss, 12,
                             make_sched)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    for key in ("lr", "betas", "momentum"):
        if key in theirs_opt.param_groups[0]:
            ours_value = ours_opt.state_dict()["param_groups"][0][key]
            assert ours_value == pytest.approx(theirs_opt.param_groups[0][key], rel=1e-12)


@pytest.mark.parametrize("case", TORCH_CASES, ids=str)
def test_writing_hparams_in_place_reaches_the_step(case):
    """opt.hparams[0]['lr'].fill_(v) == torch writing group['lr'] = v."""
    params, loss = problem(case.matrices_only)

    def train(opt_factory, write):
        ps = [p.detach().clone().requires_grad_(True) for p in params]
        opt = opt_factory(ps)
        for k in range(8):
            if k == 4:
                write(opt)
            opt.zero_grad()
            loss(ps).backward()
            opt.step()
        return ps

    ours = train(lambda ps: metaopt.optim.create(case.name, ps, lr=0.01),
                 lambda opt: opt.hparams[0]["lr"].fill_(0.003))
    theirs = train(lambda ps: case.torch_cls(ps, lr=0.01),
                   lambda opt: opt.param_groups[0].__setitem__("lr", 0.003))
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_closures_hooks_and_zero_grad():
    x = torch.tensor([3.0, -2.0], requires_grad=True)
    opt = metaopt.optim.Adam([x], lr=0.1)
    calls = []
    opt.register_step_pre_hook(lambda o, args, kwargs: calls.append("pre"))
    opt.register_step_post_hook(lambda o, args, kwargs: calls.append("post"))

    def closure():
        opt.zero_grad()
        loss = (x**2).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert float(loss.detach()) == pytest.approx(13.0)
    assert calls == ["pre", "post"]
    opt.zero_grad()
    assert x.grad is None


@pytest.mark.parametrize("case", CASES, ids=str)
def test_deepcopy_mid_training_continues_identically(case):
    params, loss = problem(case.matrices_only)
    ps, opt = run(lambda ps: metaopt.optim.create(case.name, ps), params, loss, 3)
    twin = copy.deepcopy(opt)
    qs = twin.param_groups[0]["params"] if len(twin.param_groups) == 1 else None
    if qs is None or len(qs) != len(ps):
        pytest.skip("several groups")
    for params_, opt_ in ((ps, opt), (qs, twin)):
        for _ in range(3):
            opt_.zero_grad()
            loss(params_).backward()
            opt_.step()
    for a, b in zip(ps, qs):
        assert torch.equal(a, b)
