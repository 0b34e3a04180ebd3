"""Bad input raises ValueError saying which value and why; composite and group helpers."""

import copy

import pytest
import torch

import metaopt
from metaopt.optim import Adam, Composite, Muon, create, muon_groups, weight_decay_groups


def params(*shape):
    return [torch.zeros(*shape, requires_grad=True)]


@pytest.mark.parametrize("name", metaopt.optim.names())
def test_negative_lr(name):
    shape = (3, 4) if name == "muon" else (4,)
    with pytest.raises(ValueError, match=r"lr = -0.1 .*out of range"):
        create(name, params(*shape), lr=-0.1)


@pytest.mark.parametrize("betas,bad", [((0.9, 1.0), "beta2"), ((-0.1, 0.99), "beta1"),
                                       ((1.5, 0.9), "beta1")])
@pytest.mark.parametrize("name", ["adam", "adamw", "adamax", "nadam", "radam"])
def test_betas_outside_unit_interval(name, betas, bad):
    with pytest.raises(ValueError, match=rf"{bad} = .* expected a value in \[0, 1\)"):
        create(name, params(4), betas=betas)


def test_population_hparam_of_wrong_length():
    with pytest.raises(ValueError, match=r"lr has shape \(2,\), expected .*\[3\]"):
        Adam(params(3, 4), lr=[0.1, 0.2], population=3)


def test_member_values_without_population():
    with pytest.raises(ValueError, match="no population"):
        Adam(params(3, 4), lr=[0.1, 0.2, 0.3])


def test_parameter_without_member_dimension():
    with pytest.raises(ValueError, match=r"parameter 1 has shape \(4, 5\).*population=3"):
        Adam([torch.zeros(3, 2, requires_grad=True), torch.zeros(4, 5, requires_grad=True)],
             population=3)


def test_torch_scheduler_on_population_group():
    opt = Adam(params(3, 4), lr=[0.1, 0.2, 0.3], population=3)
    with pytest.raises(ValueError, match="metaopt.schedules"):
        torch.optim.lr_scheduler.StepLR(opt, step_size=2)
    with pytest.raises(ValueError, match="metaopt.schedules"):
        torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=10)


def test_bad_write_through_param_groups_changes_nothing():
    opt = Adam(params(4), lr=0.1)
    with pytest.raises(ValueError, match="beta2"):
        opt.param_groups[0]["betas"] = (0.8, 1.2)
    assert opt.param_groups[0]["betas"][0].item() == pytest.approx(0.9)
    with pytest.raises(ValueError, match="lr"):
        opt.param_groups[0]["lr"] = float("nan")
    assert opt.hparams[0]["lr"].item() == pytest.approx(0.1)


def test_unknown_optimizer_name():
    with pytest.raises(ValueError, match=r"unknown optimizer 'adamm' \(did you mean 'adam'"):
        create("adamm", params(4))


def test_muon_refuses_vectors_and_differentiable_is_refused():
    with pytest.raises(ValueError, match="2-D"):
        Muon(params(4))
    with pytest.raises(ValueError, match="differentiable"):
        Adam(params(4), differentiable=True)
    with pytest.raises(ValueError, match="nesterov"):
        metaopt.optim.SGD(params(4), nesterov=True)


def test_composite_runs_muon_and_adamw_like_separate_torch_optimizers():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.LayerNorm(8), torch.nn.Tanh(),
                                torch.nn.Linear(8, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    model = model.double()
    twin = copy.deepcopy(model)
    groups = muon_groups(model, lr=0.02, adamw_lr=0.01)
    assert [g["optimizer"] for g in groups] == ["muon", "adamw", "adamw"]
    muon_params = groups[0]["params"]  # the matrices of every Linear but the head
    assert len(muon_params) == 2
    assert muon_params[0] is model[0].weight and muon_params[1] is model[3].weight
    opt = Composite(groups)
    tw = dict(twin.named_parameters())
    names = {id(p): n for n, p in model.named_parameters()}
    torch_opts = [
        torch.optim.Muon([tw[names[id(p)]] for p in groups[0]["params"]], lr=0.02,
                         weight_decay=0.1),
        torch.optim.AdamW([{"params": [tw[names[id(p)]] for p in g["params"]],
                            "weight_decay": g["weight_decay"]} for g in groups[1:]], lr=0.01),
    ]
    x = torch.randn(16, 5, dtype=torch.float64)
    for _ in range(5):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
        for o in torch_opts:
            o.zero_grad()
        twin(x).pow(2).mean().backward()
        for o in torch_opts:
            o.step()
    for (n, a), b in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=n)
    state = opt.state_dict()
    opt.load_state_dict(state)
    assert len(opt.param_groups) == 3 and len(opt.state) == len(list(model.parameters()))


def test_weight_decay_groups_exclude_biases_and_norms():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4),
                                torch.nn.Linear(4, 2))
    decay, no_decay = weight_decay_groups(model, 0.1)
    assert decay["params"] == [model[0].weight, model[2].weight]
    assert no_decay["weight_decay"] == 0.0 and len(no_decay["params"]) == 4
