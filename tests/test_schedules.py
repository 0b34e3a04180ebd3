"""metaopt.schedules against torch.optim.lr_scheduler, step by step, in float64."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import pytest
import torch
from torch.optim import lr_scheduler as L

from metaopt import schedules

N = 120


def torch_trace(make: Callable, n: int = N, lr: float = 1.0) -> tuple[list, list]:
    """lr and momentum after 0..n-1 calls of ``scheduler.step()`` on a one-parameter SGD."""
    p = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([p], lr=lr, momentum=0.9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sched = make(opt)
        lrs, moms = [], []
        for i in range(n):
            lrs.append(opt.param_groups[0]["lr"])
            moms.append(opt.param_groups[0]["momentum"])
            if i < n - 1:
                opt.step()
                sched.step()
    return lrs, moms


def assert_same(s: schedules.Schedule, expected: list[float]) -> None:
    """Equal to float64 rounding, for int k and for a tensor of steps."""
    want = torch.tensor(expected, dtype=torch.float64)
    # torch updates most schedules recursively (lr *= ratio), which loses relative accuracy
    # where the value crosses zero; allow one part in 1e13 of the schedule's scale there.
    atol = 1e-13 * float(want.abs().max())
    by_int = [s(k) for k in range(len(expected))]
    assert all(isinstance(v, float) for v in by_int)
    torch.testing.assert_close(torch.tensor(by_int, dtype=torch.float64), want, rtol=1e-12,
                               atol=atol)
    by_tensor = s(torch.arange(len(expected)))
    assert by_tensor.dtype == torch.float64
    torch.testing.assert_close(by_tensor, want, rtol=1e-12, atol=atol)


CASES = [
    ({"name": "step", "step_size": 7, "gamma": 0.5}, lambda o: L.StepLR(o, 7, 0.5)),
    ({"name": "step", "step_size": 1}, lambda o: L.StepLR(o, 1)),
    ({"name": "multistep", "milestones": [10, 25, 25, 60], "gamma": 0.5},
     lambda o: L.MultiStepLR(o, [10, 25, 25, 60], 0.5)),
    ({"name": "multistep", "milestones": [0, 40]}, lambda o: L.MultiStepLR(o, [0, 40])),
    ({"name": "exponential", "gamma": 0.95}, lambda o: L.ExponentialLR(o, 0.95)),
    ({"name": "exponential", "gamma": 1.01}, lambda o: L.ExponentialLR(o, 1.01)),
    ({"name": "cosine", "T_max": 10}, lambda o: L.CosineAnnealingLR(o, 10)),
    ({"name": "cosine", "T_max": 37, "eta_min": 0.01},
     lambda o: L.CosineAnnealingLR(o, 37, eta_min=0.01)),
    ({"name": "cosine", "T_max": 1}, lambda o: L.CosineAnnealingLR(o, 1)),
    ({"name": "cosine_restarts", "T_0": 5}, lambda o: L.CosineAnnealingWarmRestarts(o, 5)),
    ({"name": "cosine_restarts", "T_0": 3, "T_mult": 2},
     lambda o: L.CosineAnnealingWarmRestarts(o, 3, 2)),
    ({"name": "cosine_restarts", "T_0": 1, "T_mult": 3, "eta_min": 0.001},
     lambda o: L.CosineAnnealingWarmRestarts(o, 1, 3, eta_min=0.001)),
    ({"name": "cosine_restarts", "T_0": 4, "T_mult": 5},
     lambda o: L.CosineAnnealingWarmRestarts(o, 4, 5)),
    ({"name": "linear_warmup"}, lambda o: L.LinearLR(o)),
    ({"name": "linear_warmup", "start_factor": 0.1, "total_iters": 20},
     lambda o: L.LinearLR(o, 0.1, total_iters=20)),
    ({"name": "linear_warmup", "start_factor": 1.0, "end_factor": 0.0, "total_iters": 30},
     lambda o: L.LinearLR(o, 1.0, 0.0, 30)),
    ({"name": "constant"}, lambda o: L.ConstantLR(o)),
    ({"name": "constant", "factor": 0.5, "total_iters": 12},
     lambda o: L.ConstantLR(o, 0.5, 12)),
    ({"name": "polynomial"}, lambda o: L.PolynomialLR(o)),
    ({"name": "polynomial", "total_iters": 50, "power": 2.0},
     lambda o: L.PolynomialLR(o, 50, 2.0)),
    ({"name": "polynomial", "total_iters": 10, "power": 0.5},
     lambda o: L.PolynomialLR(o, 10, 0.5)),
]


@pytest.mark.parametrize("base_lr", [1.0, 0.3])
@pytest.mark.parametrize(("spec", "make"), CASES, ids=lambda c: str(c) if isinstance(c, dict)
                         else "")
def test_matches_torch(spec: dict, make: Callable, base_lr: float) -> None:
    expected, _ = torch_trace(make, lr=base_lr)
    assert_same(schedules.create({**spec, "base_lr": base_lr}), expected)


CYCLIC = [
    {"base_lr": 0.01, "max_lr": 0.1, "step_size_up": 5},
    {"base_lr": 0.01, "max_lr": 0.1, "step_size_up": 4, "step_size_down": 7,
     "mode": "triangular2"},
    {"base_lr": 0.02, "max_lr": 0.5, "step_size_up": 6, "step_size_down": 3, "mode": "exp_range",
     "gamma": 0.99, "base_momentum": 0.7, "max_momentum": 0.95},
]


@pytest.mark.parametrize("params", CYCLIC)
def test_cyclic_lr_and_momentum(params: dict) -> None:
    lrs, moms = torch_trace(lambda o: L.CyclicLR(o, **params))
    assert_same(schedules.create({"name": "cyclic", **params}), lrs)
    assert_same(schedules.create({"name": "cyclic", **params, "target": "momentum"}), moms)


ONE_CYCLE = [
    {"max_lr": 0.1, "total_steps": 100},
    {"max_lr": 0.5, "total_steps": 80, "pct_start": 0.25, "anneal_strategy": "linear",
     "div_factor": 10.0, "final_div_factor": 100.0},
    {"max_lr": 1.0, "total_steps": 90, "three_phase": True, "base_momentum": 0.8,
     "max_momentum": 0.9},
    {"max_lr": 1.0, "total_steps": 61, "pct_start": 0.4, "three_phase": True,
     "anneal_strategy": "linear"},
]


@pytest.mark.parametrize("params", ONE_CYCLE)
def test_one_cycle_lr_and_momentum(params: dict) -> None:
    n = params["total_steps"] + 1  # torch raises after total_steps steps
    lrs, moms = torch_trace(lambda o: L.OneCycleLR(o, **params), n=n)
    assert_same(schedules.create({"name": "one_cycle", **params}), lrs)
    assert_same(schedules.create({"name": "one_cycle", **params, "target": "momentum"}), moms)


SEQUENTIAL = [
    ([{"name": "linear_warmup", "start_factor": 0.1, "total_iters": 10},
      {"name": "cosine", "T_max": 50, "eta_min": 0.001}], [10],
     lambda o: [L.LinearLR(o, 0.1, total_iters=10), L.CosineAnnealingLR(o, 50, 0.001)]),
    ([{"name": "constant", "factor": 0.5, "total_iters": 8}, {"name": "exponential", "gamma": 0.9},
      {"name": "step", "step_size": 6, "gamma": 0.5}], [5, 30],
     lambda o: [L.ConstantLR(o, 0.5, 8), L.ExponentialLR(o, 0.9), L.StepLR(o, 6, 0.5)]),
    ([{"name": "linear_warmup", "total_iters": 5},
      {"name": "cosine_restarts", "T_0": 7, "T_mult": 2}], [5],
     lambda o: [L.LinearLR(o, total_iters=5), L.CosineAnnealingWarmRestarts(o, 7, 2)]),
]


@pytest.mark.parametrize(("children", "milestones", "make"), SEQUENTIAL)
def test_sequential_matches_torch(children: list, milestones: list, make: Callable) -> None:
    expected, _ = torch_trace(lambda o: L.SequentialLR(o, make(o), milestones), lr=0.2)
    spec = {"name": "sequential", "schedules": children, "milestones": milestones, "base_lr": 0.2}
    assert_same(schedules.create(spec), expected)


def scalar_columns(spec: dict, per_member: dict, n: int = N) -> torch.Tensor:
    """[n, P] values of P separate scalar schedules, member j taking entry j of each tensor."""
    p = len(next(iter(per_member.values())))
    cols = []
    for j in range(p):
        one = {key: float(v[j]) for key, v in per_member.items()}
        cols.append(schedules.create({**spec, **one})(torch.arange(n)))
    return torch.stack(cols, dim=-1)


TENSOR_PARAMS = [
    ({"name": "cosine", "eta_min": 0.01}, {"T_max": [10.0, 20.0, 35.0]}),
    ({"name": "cosine_restarts"}, {"T_0": [3.0, 4.0, 1.0], "T_mult": [1.0, 2.0, 3.0]}),
    ({"name": "linear_warmup", "start_factor": 0.1}, {"total_iters": [0.0, 5.0, 20.0]}),
    ({"name": "step"}, {"step_size": [3.0, 7.0, 11.0], "gamma": [0.5, 0.9, 0.1]}),
    ({"name": "wsd", "stable_steps": 20, "decay_steps": 30},
     {"warmup_steps": [0.0, 5.0, 10.0], "base_lr": [1.0, 0.1, 0.01]}),
    ({"name": "one_cycle", "max_lr": 1.0}, {"total_steps": [50.0, 100.0, 200.0]}),
    ({"name": "cyclic", "base_lr": 0.1, "max_lr": 1.0, "mode": "exp_range"},
     {"step_size_up": [3.0, 5.0, 8.0], "gamma": [0.99, 0.9, 1.0]}),
    ({"name": "polynomial"}, {"total_iters": [10.0, 60.0, 200.0], "power": [1.0, 2.0, 0.5]}),
]


@pytest.mark.parametrize(("spec", "per_member"), TENSOR_PARAMS)
def test_tensor_parameters_equal_separate_schedules(spec: dict, per_member: dict) -> None:
    tensors = {k: torch.tensor(v, dtype=torch.float64) for k, v in per_member.items()}
    stacked = schedules.create({**spec, **tensors})
    expected = scalar_columns(spec, per_member)
    torch.testing.assert_close(stacked(torch.arange(N).unsqueeze(-1)), expected, rtol=1e-12,
                               atol=1e-15)
    # one step per member, and an int step broadcast over the members
    steps = torch.tensor([0, 17, 90])
    torch.testing.assert_close(stacked(steps), expected[steps, torch.arange(3)], rtol=1e-12,
                               atol=1e-15)
    torch.testing.assert_close(stacked(17), expected[17], rtol=1e-12, atol=1e-15)


def test_tensor_milestones() -> None:
    ms = torch.tensor([[5.0, 20.0], [10.0, 10.0], [0.0, 50.0]])
    stacked = schedules.create({"name": "multistep", "milestones": ms, "gamma": 0.5})
    expected = torch.stack([schedules.create({"name": "multistep", "milestones": m.tolist(),
                                              "gamma": 0.5})(torch.arange(N)) for m in ms], -1)
    torch.testing.assert_close(stacked(torch.arange(N).unsqueeze(-1)), expected)
    seq = schedules.create({"name": "sequential", "milestones": torch.tensor([[3.0], [9.0]]),
                            "schedules": [{"name": "linear_warmup", "total_iters": 9},
                                          {"name": "cosine", "T_max": 40}]})
    for j, m in enumerate([3, 9]):
        one = schedules.create({**seq.spec, "milestones": [m]})
        torch.testing.assert_close(seq(torch.arange(N).unsqueeze(-1))[:, j],
                                   one(torch.arange(N)))


def test_return_types() -> None:
    s = schedules.create({"name": "cosine", "T_max": 10})
    assert isinstance(s(3), float)
    assert s(torch.tensor(3)).shape == () and s(torch.tensor(3)).dtype == torch.float64
    t = schedules.create({"name": "cosine", "T_max": torch.tensor([10, 20])})
    assert t(3).shape == (2,)
    assert set(schedules.names()) >= {"step", "cosine", "one_cycle", "wsd", "reduce_on_plateau"}


def test_compiles_without_graph_breaks() -> None:
    specs = [spec for spec, _ in CASES[::3]] + [
        {"name": "cyclic", **CYCLIC[1]}, {"name": "one_cycle", **ONE_CYCLE[2]},
        {"name": "wsd", "warmup_steps": torch.tensor([2.0, 4.0]), "stable_steps": 5,
         "decay_steps": 5, "decay": "cosine"},
        {"name": "cosine_restarts", "T_0": 3, "T_mult": torch.tensor([1.0, 2.0])},
        {"name": "sequential", "milestones": [10], "schedules": SEQUENTIAL[0][0]},
    ]
    built = [schedules.create(spec) for spec in specs]

    def all_values(k: torch.Tensor) -> list[torch.Tensor]:
        return [s(k) for s in built]

    k = torch.tensor([4.0, 13.0])
    compiled = torch.compile(all_values, backend="eager", fullgraph=True)
    for got, want in zip(compiled(k), all_values(k), strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("decay,points", [
    ("linear", {0: 0.25, 3: 1.0, 4: 1.0, 6: 1.0, 7: 0.775, 8: 0.55, 10: 0.1, 50: 0.1}),
    ("cosine", {1: 0.5, 7: 0.1 + 0.9 * (1 + math.cos(math.pi / 4)) / 2, 8: 0.55, 10: 0.1}),
    ("sqrt", {2: 0.75, 7: 0.55, 9: 0.1 + 0.9 * (1 - math.sqrt(0.75)), 10: 0.1, 11: 0.1}),
])
def test_wsd_points(decay: str, points: dict) -> None:
    s = schedules.create({"name": "wsd", "warmup_steps": 4, "stable_steps": 3, "decay_steps": 4,
                          "min_lr": 0.1, "decay": decay})
    for k, want in points.items():
        assert s(k) == pytest.approx(want, rel=1e-14), k


def test_wsd_without_warmup_or_decay() -> None:
    s = schedules.create({"name": "wsd", "stable_steps": 3, "decay_steps": 0, "base_lr": 2.0})
    assert [s(k) for k in range(5)] == [2.0, 2.0, 2.0, 0.0, 0.0]


PLATEAU = [
    {},
    {"patience": 2, "factor": 0.5, "cooldown": 2, "min_lr": 0.05},
    {"mode": "max", "patience": 1, "threshold": 0.05, "threshold_mode": "abs"},
    {"patience": 0, "factor": 0.5, "threshold": 0.1, "eps": 0.2},
]
LOSSES = [1.0, 0.9, 0.9, 0.95, 0.89, 0.9, 0.91, 0.92, 0.93, 0.5, 0.6, 0.7, 0.7, 0.7, 0.7, 0.7,
          0.7, 0.7, 0.7, 0.71, 0.72, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8] * 2


def torch_plateau(params: dict, losses: list[float], lr: float = 0.8) -> list[float]:
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    sched = L.ReduceLROnPlateau(opt, **params)
    out = []
    for loss in losses:
        sched.step(loss)
        out.append(opt.param_groups[0]["lr"])
    return out


@pytest.mark.parametrize("params", PLATEAU)
def test_reduce_on_plateau_matches_torch(params: dict) -> None:
    s = schedules.create({"name": "reduce_on_plateau", "base_lr": 0.8, **params})
    assert s.value == 0.8
    got = []
    for loss in LOSSES:
        s.step(loss)
        got.append(s.value)
    assert got == pytest.approx(torch_plateau(params, LOSSES), rel=1e-14)


def test_reduce_on_plateau_per_member() -> None:
    losses = torch.tensor([LOSSES, LOSSES[::-1], [1.0 - 0.01 * i for i in range(len(LOSSES))]],
                          dtype=torch.float64)
    base_lr = torch.full((3,), 0.8, dtype=torch.float64)
    s = schedules.create({"name": "reduce_on_plateau", "base_lr": base_lr,
                          "patience": torch.tensor([0, 2, 1]), "factor": 0.5, "cooldown": 1})
    for t in range(losses.shape[1]):
        s.step(losses[:, t])
    for j, patience in enumerate([0, 2, 1]):
        want = torch_plateau({"patience": patience, "factor": 0.5, "cooldown": 1},
                             losses[j].tolist())[-1]
        assert float(s.value[j]) == pytest.approx(want, rel=1e-14)
    state = s.state_dict()
    s.step(losses[:, 0])
    s.load_state_dict(state)
    assert torch.equal(s.lr, state["lr"])


def test_apply_writes_in_place() -> None:
    s = schedules.create({"name": "cosine", "T_max": 10, "base_lr": 0.5})
    hp = torch.zeros(3, dtype=torch.float32)
    schedules.apply(s, hp, 5)
    assert torch.equal(hp, torch.full((3,), 0.25))
    lr = torch.tensor(0.0, dtype=torch.float64)
    opt = type("Opt", (), {"param_groups": [{"lr": lr, "betas": (torch.tensor(0.9), 0.999)},
                                            {"lr": 1.0, "betas": (0.9, 0.999)}]})()
    schedules.apply(s, opt, 10)
    assert opt.param_groups[0]["lr"] is lr and float(lr) == 0.0
    assert opt.param_groups[1]["lr"] == 0.0
    mom = schedules.create({"name": "one_cycle", "max_lr": 1.0, "total_steps": 10,
                            "target": "momentum"})
    schedules.apply(mom, opt, 0, key="betas")
    assert float(opt.param_groups[0]["betas"][0]) == pytest.approx(0.95)
    assert opt.param_groups[1]["betas"] == (0.95, 0.999)
    sgd = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    schedules.apply(s, sgd, torch.tensor(5))
    assert sgd.param_groups[0]["lr"] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="per-member"):
        schedules.apply(schedules.create({"name": "cosine", "T_max": torch.tensor([2, 3])}),
                        sgd, 1)
    with pytest.raises(KeyError, match="'momentum'"):
        schedules.apply(s, opt, 1, key="momentum")


@pytest.mark.parametrize("spec,message", [
    ({"name": "cosin", "T_max": 3}, "unknown schedule 'cosin' (expected one of constant, cosine"),
    ({"name": "cosine", "tmax": 3},
     "schedule 'cosine': unknown parameter 'tmax' (expected one of T_max, eta_min, base_lr)"),
    ({"name": "cosine"}, "schedule 'cosine': missing parameter 'T_max' (required: T_max)"),
    ({"T_max": 3}, "unknown schedule None"),
    ({"name": "cosine", "T_max": "ten"},
     "schedule 'cosine': parameter 'T_max' must be a number or a tensor, got 'ten'"),
    ({"name": "cosine", "T_max": 0}, "schedule 'cosine': parameter 'T_max' must be > 0, got 0"),
    ({"name": "cosine", "T_max": 10, "target": "momentum"}, "unknown parameter 'target'"),
    ({"name": "cyclic", "base_lr": 0.1, "max_lr": 1.0, "mode": "triangle"},
     "schedule 'cyclic': parameter 'mode' must be one of triangular, triangular2, exp_range, "
     "got 'triangle'"),
    ({"name": "one_cycle", "max_lr": 1.0, "total_steps": 10, "target": "momentum",
      "cycle_momentum": False}, "target 'momentum' needs cycle_momentum=True"),
    ({"name": "one_cycle", "max_lr": 1.0, "total_steps": 10, "pct_start": 1.5},
     "parameter 'pct_start' must be between 0 and 1"),
    ({"name": "sequential", "schedules": [{"name": "cosine", "T_max": 5}], "milestones": [3]},
     "parameter 'milestones' must have 0 entries"),
    ({"name": "sequential", "milestones": [3],
      "schedules": [{"name": "constant"}, {"name": "cosine", "Tmax": 5}]},
     "schedule 'sequential': schedules[1]: schedule 'cosine': unknown parameter 'Tmax'"),
    ({"name": "reduce_on_plateau", "mode": "lowest"}, "parameter 'mode' must be one of min, max"),
])
def test_bad_input_messages(spec: dict, message: str) -> None:
    with pytest.raises(ValueError) as err:
        schedules.create(spec)
    assert message in str(err.value)


def test_yaml_style_numbers_and_spec_round_trip() -> None:
    s = schedules.create({"name": "exponential", "gamma": "0.5", "base_lr": "1e-2"})
    assert s(2) == pytest.approx(2.5e-3)
    assert schedules.create(s.spec)(2) == s(2)
    assert schedules.create("exponential", gamma=0.5)(1) == 0.5
