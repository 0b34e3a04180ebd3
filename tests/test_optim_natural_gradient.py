"""NaturalGradient (diagonal and dense, empirical and sampled Fisher) and K-FAC's sampled
Fisher, checked against per-example gradients from torch.func and exact expectations."""

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

import metaopt
from metaopt.optim.natural_gradient import per_example_gradients


@pytest.fixture
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _per_example_reference(module, x, target):
    """Each example's gradient of [W, b] (flattened as out × (fan_in + 1)) by torch.func, for
    the squared error against its own target (the batch loss: the mean of these)."""
    params = {k: v.detach() for k, v in module.named_parameters()}

    def one(p, xi, ti):
        return ((functional_call(module, p, (xi[None],)) - ti[None]) ** 2).sum()

    grads = vmap(grad(one), in_dims=(None, 0, 0))(params, x, target)
    w = grads["weight"].reshape(x.shape[0], module.weight.shape[0], -1)
    return torch.cat([w, grads["bias"][..., None]], dim=2).reshape(x.shape[0], -1)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_per_example_gradients_equal_torch_func(kind, float64):
    torch.manual_seed(0)
    if kind == "linear":
        module, x = nn.Linear(4, 3), torch.randn(6, 4)
    else:
        module, x = nn.Conv2d(2, 3, 3, stride=2, padding=1), torch.randn(5, 2, 6, 6)
    target = torch.randn_like(module(x))
    caught = {}
    out = module(x)
    out.register_hook(lambda g: caught.update(g=g))
    ((out - target) ** 2).sum().div(x.shape[0]).backward()
    torch.testing.assert_close(per_example_gradients(module, x, caught["g"]),
                               _per_example_reference(module, x, target),
                               rtol=1e-12, atol=1e-12)


def _problem():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    x, y = torch.randn(8, 3), torch.randn(8, 2)
    return net, x, y


def _one_step(structure, **kwargs):
    net, x, y = _problem()
    opt = metaopt.optim.NaturalGradient(net.parameters(), structure=structure, lr=0.1,
                                        **kwargs)
    plain = {}

    def closure():
        opt.zero_grad()
        loss = ((net(x) - y) ** 2).mean()
        loss.backward()
        plain.update({id(p): p.grad.clone() for p in net.parameters()})
        return loss

    before = [p.detach().clone() for p in net.parameters()]
    opt.step(closure)
    return net, x, y, opt, plain, before


def _reference_vectors(net, x, y):
    """Per-example gradients of both layers, concatenated: [n, D]."""
    params = {k: v.detach() for k, v in net.named_parameters()}

    def one(p, xi, yi):  # the batch loss is the mean of these
        return ((functional_call(net, p, (xi[None],)) - yi[None]) ** 2).mean()

    grads = vmap(grad(one), in_dims=(None, 0, 0))(params, x, y)
    parts = []
    for layer in ("0", "2"):
        w = grads[f"{layer}.weight"].reshape(x.shape[0], grads[f"{layer}.weight"].shape[1], -1)
        parts.append(torch.cat([w, grads[f"{layer}.bias"][..., None]], dim=2)
                     .reshape(x.shape[0], -1))
    return torch.cat(parts, dim=1)


def _flat_plain(net, plain):
    parts = []
    for layer in (net[0], net[2]):
        parts.append(torch.cat([plain[id(layer.weight)], plain[id(layer.bias)][:, None]], 1)
                     .reshape(-1))
    return torch.cat(parts)


def _flat_step(net, before, lr=0.1):
    after = [p.detach() for p in net.parameters()]
    d = [(b - a) / lr for a, b in zip(after, before)]  # SGD: p -= lr · natural
    return torch.cat([torch.cat([d[0], d[1][:, None]], 1).reshape(-1),
                      torch.cat([d[2], d[3][:, None]], 1).reshape(-1)])


def test_diagonal_fisher_and_step_equal_the_per_example_reference(float64):
    net, x, y, opt, plain, before = _one_step("diagonal", damping=1e-2)
    v = _reference_vectors(_rebuilt(before), x, y)
    fisher = v.square().mean(0)
    ours = torch.cat([opt.curvature[0]["fisher"].reshape(-1),
                      opt.curvature[2]["fisher"].reshape(-1)])
    torch.testing.assert_close(ours, fisher, rtol=1e-10, atol=1e-14)
    expected = _flat_plain(net, plain) / (fisher + 1e-2)
    torch.testing.assert_close(_flat_step(net, before), expected, rtol=1e-9, atol=1e-12)


def test_dense_step_is_the_damped_fisher_solve(float64):
    net, x, y, opt, plain, before = _one_step("dense", damping=0.05)
    v = _reference_vectors(_rebuilt(before), x, y)
    fisher = v.T @ v / v.shape[0]
    torch.testing.assert_close(opt.curvature[0]["fisher"], fisher, rtol=1e-10, atol=1e-14)
    g = _flat_plain(net, plain)
    expected = torch.linalg.solve(fisher + 0.05 * torch.eye(len(g)), g)
    torch.testing.assert_close(_flat_step(net, before), expected, rtol=1e-8, atol=1e-10)


def _rebuilt(before):
    net, _, _ = _problem()
    with torch.no_grad():
        for p, b in zip(net.parameters(), before):
            p.copy_(b)
    return net


def test_a_dense_fisher_too_large_is_refused_before_allocating():
    big = nn.Sequential(nn.Linear(300, 300), nn.Linear(300, 10))
    with pytest.raises(ValueError, match=r"dense Fisher .* 93310 x 93310 .*structure='diagonal'"):
        metaopt.optim.NaturalGradient(big.parameters(), structure="dense", model=big)


def test_bad_options_give_clear_errors():
    net, _, _ = _problem()
    with pytest.raises(ValueError, match="structure must be one of diagonal, dense"):
        metaopt.optim.NaturalGradient(net.parameters(), structure="full")
    with pytest.raises(ValueError, match="fisher='sampled' .* give model="):
        metaopt.optim.NaturalGradient(net.parameters(), fisher="sampled")
    with pytest.raises(ValueError, match="likelihood must be one of"):
        metaopt.optim.KFAC(net.parameters(), likelihood="poisson")


def _repeated_softmax_problem(n=4000):
    """One input repeated n times into a linear softmax layer: a batch mean of sampled
    per-example quantities then estimates their exact expectation."""
    torch.manual_seed(3)
    layer = nn.Linear(3, 4)
    x = torch.randn(1, 3).expand(n, 3).clone()
    y = torch.zeros(n, dtype=torch.long)
    return layer, x, y


def _sampled_step(cls, layer, x, y, **kwargs):
    opt = cls(layer.parameters(), fisher="sampled", model=layer, lr=0.0, **kwargs)

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(layer(x), y)
        loss.backward()
        return loss

    torch.manual_seed(4)
    opt.step(closure)
    return opt


def test_sampled_diagonal_fisher_estimates_the_true_fisher(float64):
    """E_y[(∇ log p(y|x))²] = Σ_c p_c ((p - e_c) ⊗ [x, 1])², here exactly computable."""
    layer, x, y = _repeated_softmax_problem()
    opt = _sampled_step(metaopt.optim.NaturalGradient, layer, x, y)
    with torch.no_grad():
        p = layer(x[:1]).softmax(-1)[0]
        a = torch.cat([x[0], torch.ones(1)])
        exact = sum(p[c] * torch.outer(p - torch.eye(4)[c], a).square() for c in range(4))
    torch.testing.assert_close(opt.curvature[0]["fisher"].reshape(4, 4), exact,
                               rtol=0.08, atol=1e-3)
    empirical = torch.outer(p - torch.eye(4)[0], a).square()  # the training labels' version
    assert (opt.curvature[0]["fisher"].reshape(4, 4) - empirical).abs().max() > 0.05


def test_kfac_sampled_output_factor_estimates_the_softmax_fisher(float64):
    """K-FAC's G from sampled targets: E[(p - e_y)(p - e_y)ᵀ] = diag(p) - p pᵀ."""
    layer, x, y = _repeated_softmax_problem()
    opt = _sampled_step(metaopt.optim.KFAC, layer, x, y, kl_clip=None)
    with torch.no_grad():
        p = layer(x[:1]).softmax(-1)[0]
    torch.testing.assert_close(opt.kfac[0]["G"], torch.diag(p) - torch.outer(p, p),
                               rtol=0.1, atol=5e-3)


def test_sampled_fisher_leaves_the_training_gradient_to_the_base(float64):
    """With a damping so large that the natural gradient is ∇/λ, the step is the training
    loss's gradient (not the sampled loss's) over λ."""
    layer, x, y = _repeated_softmax_problem(64)
    before = layer.weight.detach().clone()
    opt = metaopt.optim.NaturalGradient(layer.parameters(), fisher="sampled", model=layer,
                                        lr=1.0, damping=1e6)
    loss = nn.functional.cross_entropy(layer(x), y)
    (g,) = torch.autograd.grad(loss, [layer.weight])
    opt.zero_grad()
    nn.functional.cross_entropy(layer(x), y).backward()
    opt.step()
    torch.testing.assert_close((before - layer.weight.detach()) * 1e6, g, rtol=1e-4, atol=1e-9)


def test_natural_gradient_trains_a_classifier_through_metaopt_train():
    result = metaopt.train("digits_mlp", "natural_gradient", {"lr": 0.01, "momentum": 0.9,
                                                               "damping": 0.1},
                           steps=60, seed=0, progress=False)
    assert result.status == "ok" and result.value < 1.0
