"""Diagnostics (metaopt.monitor), figures (metaopt.plots) and the loss landscape."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import metaopt.optim as optim
import metaopt.schedules as schedules
from metaopt import tasks
from metaopt.landscape import compute_landscape, filter_normalized_direction, loss_landscape
from metaopt.monitor import Monitor, hyperparameters
from metaopt.plots import plot_grad_norm, plot_loss, plot_schedule
from metaopt.train import train

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True, scope="module")
def _cpu_settings():
    torch.set_flush_denormal(True)


@pytest.fixture(scope="module")
def healthy():
    return train("logistic_breast_cancer", "adam", {"lr": 0.01}, steps=120, eval_every=20,
                 record_path_every=10)


def kinds(monitor: Monitor) -> set[str]:
    return {w.split(":")[0] for w in monitor.warnings}


def feed(losses, grad_norms=None, **options) -> Monitor:
    monitor = Monitor(**options)
    for k, loss in enumerate(losses):
        scalars = {} if grad_norms is None else {"grad_norm": grad_norms[k]}
        monitor.observe(k, loss, **scalars)
    return monitor


# -- warnings on synthetic sequences --------------------------------------------------------
def test_oscillation() -> None:
    monitor = feed([1.0 + 0.2 * (-1) ** k for k in range(100)])
    assert "oscillation" in kinds(monitor)
    assert sum(w.startswith("oscillation") for w in monitor.warnings) == 1  # once


def test_plateau_without_oscillation() -> None:
    monitor = feed([1.0] * 80)
    assert kinds(monitor) == {"plateau"}


def test_vanishing_gradients() -> None:
    monitor = feed([math.exp(-0.05 * k) for k in range(30)], [1e-10] * 30)
    assert kinds(monitor) == {"vanishing"}


def test_exploding_gradients_absolute_and_growth() -> None:
    losses = [math.exp(-0.05 * k) for k in range(60)]
    assert kinds(feed(losses, [1e5] * 60)) == {"exploding"}
    growing = feed(losses, [1.2 ** k for k in range(60)], exploding=math.inf)
    assert kinds(growing) == {"exploding"} and "grew" in growing.warnings[0]


def test_healthy_sequences_and_run_give_no_warnings(healthy) -> None:
    monitor = feed([math.exp(-0.03 * k) + 0.01 * (-1) ** k * 0.1 for k in range(200)],
                   [math.exp(-0.01 * k) for k in range(200)])
    assert monitor.warnings == []
    assert healthy.status == "ok" and healthy.warnings == []


def test_divergence_detection() -> None:
    monitor = Monitor()
    assert monitor.observe(0, 2.0) is None
    assert monitor.observe(1, 1.9e6) is None
    assert monitor.observe(2, 2.1e6) == "loss exceeded 1e+06 x max(|first loss|, 1) at step 2"
    assert monitor.diverged_at == 2
    assert feed([1.0, float("nan")]).diverged == "loss is nan at step 1"
    assert feed([1.0, float("inf")]).diverged == "loss is inf at step 1"
    # a negative first loss is judged by its size (metaopt.divergence: max(|first|, 1))
    assert feed([-1.0, 5e5]).diverged is None
    assert feed([-1.0, 1e9]).diverged == "loss exceeded 1e+06 x max(|first loss|, 1) at step 1"


def test_parameter_checks_and_records() -> None:
    module = nn.Linear(3, 2)
    opt = optim.SGD(module.parameters(), lr=0.1, momentum=0.5)
    monitor = Monitor(every=2)
    params = list(module.parameters())
    for k in range(3):
        monitor.before_step(k, params)
        opt.zero_grad()
        loss = module(torch.ones(4, 3)).pow(2).mean()
        value = loss.item()
        loss.backward()
        opt.step()
        assert monitor.after_step(k, value, params, opt) is None
    assert [r["step"] for r in monitor.records] == [0, 2]
    record = monitor.records[0]
    assert record["lr"] == pytest.approx(0.1) and record["momentum"] == 0.5
    assert record["effective_lr"] == pytest.approx(0.1, rel=1e-5)  # plain SGD's first step
    assert 0 < record["update_ratio"] < 1
    with torch.no_grad():
        module.weight[0, 0] = float("nan")
    assert monitor.check_params(3, params) == "parameters non-finite at step 3"


def test_monitor_state_round_trip() -> None:
    monitor = feed([1.0 + 0.2 * (-1) ** k for k in range(60)], [1.0] * 60)
    copy = Monitor()
    copy.load_state_dict(monitor.state_dict())
    assert copy.state_dict() == monitor.state_dict()


def test_hyperparameters_of_metaopt_and_torch_optimizers() -> None:
    params = [nn.Parameter(torch.zeros(2))]
    ours = hyperparameters(optim.Adam(params, lr=0.01, betas=(0.8, 0.99)))
    theirs = hyperparameters(torch.optim.Adam(params, lr=0.01, betas=(0.8, 0.99)))
    for hp in (ours, theirs):
        assert hp["lr"] == pytest.approx(0.01) and hp["beta1"] == pytest.approx(0.8)
        assert hp["beta2"] == pytest.approx(0.99) and all(isinstance(v, float)
                                                          for v in hp.values())


# -- figures ----------------------------------------------------------------------------------
def assert_png(path) -> None:
    assert path.exists() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_plots_are_written(tmp_path, healthy) -> None:
    diverged = train("quadratic", "sgd", {"lr": 1e3}, steps=20)
    assert_png(plot_loss(healthy, tmp_path / "loss.png"))
    assert_png(plot_loss({"adam": healthy, "sgd lr=1e3": diverged}, tmp_path / "two.png"))
    assert_png(plot_grad_norm(healthy, tmp_path / "sub" / "grad.png"))
    cosine = schedules.create({"name": "cosine_restarts", "T_0": 20, "base_lr": 0.1})
    assert_png(plot_schedule(cosine, 100, tmp_path / "schedule.png"))
    assert_png(plot_schedule([0.1 * 0.9 ** k for k in range(50)], None, tmp_path / "list.png"))
    assert_png(plot_schedule({"lr": cosine, "half": [0.05] * 100}, 100, tmp_path / "many.png"))


# -- loss landscape ---------------------------------------------------------------------------
def test_filter_normalisation() -> None:
    module = nn.Linear(4, 3)
    params = list(module.parameters())
    d = filter_normalized_direction(params, torch.Generator().manual_seed(0))
    weight, bias = d[:12].reshape(3, 4), d[12:]
    torch.testing.assert_close(weight.norm(dim=1), module.weight.detach().double().norm(dim=1))
    assert torch.equal(bias, torch.zeros(3, dtype=torch.float64))
    theta = [nn.Parameter(torch.randn(10))]  # no filters: the vector is normalised as one
    d = filter_normalized_direction(theta, torch.Generator().manual_seed(0))
    assert float(d.norm()) == pytest.approx(theta[0].norm().item(), rel=1e-6)


def test_landscape_from_a_task(tmp_path, healthy) -> None:
    task = tasks.get("logistic_breast_cancer")
    assert len(healthy.path) == 13  # initial weights, every 10 steps, final (step 120)
    data = compute_landscape(task, healthy, resolution=5)
    assert torch.equal(data.coords[-1], torch.zeros(2, dtype=torch.float64))
    assert data.losses.shape == (5, 5) and bool(torch.isfinite(data.losses).all())
    assert float(data.losses[2, 2]) == pytest.approx(healthy.value, rel=1e-5)  # the centre
    assert_png(loss_landscape(task, healthy, tmp_path / "landscape.png", resolution=7))


def test_landscape_from_module_loss_and_batch(tmp_path) -> None:
    result = train("quadratic", "sgd", {"lr": 0.005}, steps=30, record_path_every=5)
    task = tasks.get("quadratic")
    batch = next(task.data(torch.Generator()))
    before = [p.detach().clone() for p in result.module.parameters()]
    path = loss_landscape((result.module, task.loss, batch), result.path,
                          tmp_path / "quadratic.png", resolution=9, span=0.5)
    assert_png(path)
    for p, b in zip(result.module.parameters(), before):
        assert torch.equal(p, b)  # the module's weights are restored
