"""The flat (eager) backend: skipped parameters, replaced storage, migration."""

import copy

import pytest
import torch

import metaopt


def _two_players(seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(5, 4, generator=g, dtype=torch.float64)
    b = torch.randn(4, generator=g, dtype=torch.float64)
    return a, b


def _alternate(opt, a, b, steps=6):
    """A GAN-like loop: each step updates one player; the other's grad is None."""
    for k in range(steps):
        opt.zero_grad()
        loss = (torch.tanh(a).sum(0) * b).sum() ** 2
        loss.backward()
        (b if k % 2 else a).grad = None
        opt.step()


def test_parameters_without_gradients_are_skipped_like_torch():
    a0, b0 = _two_players()
    ours = [a0.clone().requires_grad_(), b0.clone().requires_grad_()]
    theirs = [a0.clone().requires_grad_(), b0.clone().requires_grad_()]
    opt = metaopt.optim.Adam(ours, lr=0.1, backend="eager")
    ref = torch.optim.Adam(theirs, lr=0.1)
    _alternate(opt, *ours)
    _alternate(ref, *theirs)
    for x, y in zip(ours, theirs):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)
    sd = opt.state_dict()  # the counters differ per parameter, as torch's do
    assert [float(sd["state"][i]["step"]) for i in (0, 1)] == [3.0, 3.0]


def test_replaced_parameter_storage_is_picked_up():
    a0, b0 = _two_players()
    ps = [a0.clone().requires_grad_(), b0.clone().requires_grad_()]
    opt = metaopt.optim.SGD(ps, lr=0.1, momentum=0.9, backend="eager")
    (ps[0].sum() + ps[1].sum()).backward()
    opt.step()
    with torch.no_grad():
        ps[0].data = torch.zeros(5, 4, dtype=torch.float64)  # user swaps the storage
    opt.zero_grad()
    (ps[0].sum() + ps[1].sum()).backward()
    opt.step()
    # momentum continued: buffer 1 + 0.9 * 1 = 1.9, applied from zeros
    torch.testing.assert_close(ps[0], torch.full((5, 4), -0.19, dtype=torch.float64))


def test_flat_state_dict_loads_into_torch_with_separate_counters():
    a0, b0 = _two_players()
    ps = [a0.clone().requires_grad_(), b0.clone().requires_grad_()]
    opt = metaopt.optim.Adam(ps, lr=0.01, backend="eager")
    for _ in range(3):
        opt.zero_grad()
        (torch.tanh(ps[0]).sum(0) * ps[1]).sum().backward()
        opt.step()
    sd = copy.deepcopy(opt.state_dict())
    assert sd["state"][0]["step"] is not sd["state"][1]["step"]
    twin = torch.optim.Adam([p.detach().clone().requires_grad_() for p in ps], lr=0.01)
    twin.load_state_dict(sd)
    for group in (opt, twin):
        params = group.param_groups[0]["params"]
        group.zero_grad()
        (torch.tanh(params[0]).sum(0) * params[1]).sum().backward()
        group.step()
    for x, y in zip(opt.param_groups[0]["params"], twin.param_groups[0]["params"]):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)


def test_compiled_backend_falls_back_to_eager_when_compilation_fails(monkeypatch):
    from torch._dynamo.exc import BackendCompilerFailed

    from metaopt.optim import backends

    def broken(fn):
        def call(*args, **kwargs):
            raise BackendCompilerFailed(lambda *a: None, RuntimeError("no C++ compiler"), None)
        return call

    monkeypatch.setattr(backends, "compiled", broken)
    a0, b0 = _two_players()
    ps = [a0.clone().requires_grad_(), b0.clone().requires_grad_()]
    qs = [a0.clone().requires_grad_(), b0.clone().requires_grad_()]
    opt = metaopt.optim.RMSprop(ps, lr=0.01, backend="compiled")
    ref = metaopt.optim.RMSprop(qs, lr=0.01, backend="reference")
    with pytest.warns(UserWarning, match="using the eager backend"):
        for o, xs in ((opt, ps), (ref, qs)):
            o.zero_grad()
            (torch.tanh(xs[0]).sum(0) * xs[1]).sum().backward()
            o.step()
    assert {r.mode for r in opt._runners.values()} == {"eager"}
    for x, y in zip(ps, qs):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)
