"""metaopt.train: the single-model training loop."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from torch import nn

import metaopt.schedules as schedules
from metaopt.monitor import CSVWriter, TensorBoardWriter
from metaopt.tasks import Task
from metaopt.train import TrainResult, train


@pytest.fixture(autouse=True, scope="module")
def _cpu_settings():
    torch.set_flush_denormal(True)


def torch_sgd(params, **hparams):
    return torch.optim.SGD(params, **hparams)


def test_train_by_name() -> None:
    result = train("quadratic", "sgd", {"lr": 0.005}, steps=30, eval_every=10)
    assert isinstance(result, TrainResult)
    assert result.status == "ok" and result.reason is None and result.diverged_at is None
    assert result.steps == 30 and result.evaluations == 30
    assert [k for k, _ in result.curve] == list(range(30))
    assert [n for n, _ in result.val_curve] == [10, 20, 30]
    assert result.value == result.val_curve[-1][1] < result.curve[0][1]
    assert result.final_hparams["lr"] == pytest.approx(0.005)
    assert isinstance(result.final_hparams["lr"], float)
    assert result.task == "quadratic" and result.optimizer == "sgd"
    assert len(result.diagnostics) == 30 and result.seconds > 0


def test_train_by_factory_matches_registry_name() -> None:
    by_name = train("quadratic", "sgd", {"lr": 0.005, "momentum": 0.9}, steps=20)
    by_factory = train("quadratic", torch_sgd, {"lr": 0.005, "momentum": 0.9}, steps=20)
    assert by_factory.status == "ok" and by_factory.optimizer == "torch_sgd"
    torch.testing.assert_close([v for _, v in by_factory.curve],
                               [v for _, v in by_name.curve], rtol=1e-5, atol=1e-6)


def test_task_defaults_used_without_hparams() -> None:
    task = Task(name="tiny", model=lambda: nn.Linear(2, 1),
                loss=lambda m, b: m(b).pow(2).mean(), data=_constant_batches,
                evaluate=lambda m: float(m(torch.ones(1, 2)).detach().pow(2).mean()), steps=7,
                default_optimizer="sgd", default_hparams={"lr": 0.125})
    result = train(task, None)
    assert result.steps == 7 and result.final_hparams["lr"] == 0.125


def _constant_batches(generator: torch.Generator):
    while True:
        yield torch.ones(4, 2)


def test_same_seed_same_run_other_seed_other_run() -> None:
    runs = [train("logistic_breast_cancer", "adam", {"lr": 0.01}, steps=25, seed=s)
            for s in (3, 3, 4)]
    assert runs[0].curve == runs[1].curve and runs[0].value == runs[1].value
    assert runs[0].val_curve == runs[1].val_curve
    assert runs[0].curve != runs[2].curve


def test_seeding_contract() -> None:
    """The construction the population trainer reproduces: manual_seed before model(), data
    from a fresh generator seeded with the run's seed."""
    task = Task(name="probe", model=lambda: nn.Linear(3, 1), loss=lambda m, b: m(b).mean(),
                data=_random_batches, evaluate=lambda m: 0.0, steps=3)
    result = train(task, "sgd", {"lr": 0.1}, steps=3, seed=11)
    torch.manual_seed(11)
    module = task.model()
    batches = task.data(torch.Generator().manual_seed(11))
    for k in range(3):
        batch = next(batches)
        assert result.curve[k][1] == float(module(batch).detach().mean())
        module.zero_grad()
        module(batch).mean().backward()
        with torch.no_grad():
            for p in module.parameters():
                p -= 0.1 * p.grad


def _random_batches(generator: torch.Generator):
    while True:
        yield torch.randn(5, 3, generator=generator)


def test_lbfgs_uses_the_closure() -> None:
    def lbfgs(params, **hparams):
        return torch.optim.LBFGS(params, **hparams)

    result = train("quadratic", lbfgs, {"lr": 1.0, "max_iter": 10}, steps=3)
    assert result.status == "ok"
    assert result.evaluations > result.steps  # several closure calls per step
    assert result.value < 1e-3 * result.curve[0][1]


def test_gan_train_step_counts_two_evaluations() -> None:
    result = train("gan_mixture", "adam", {"lr": 1e-3, "betas": (0.5, 0.999)}, steps=3)
    assert result.status == "ok" and result.evaluations == 6


def test_divergence_is_reported_not_raised() -> None:
    result = train("quadratic", "sgd", {"lr": 1e3}, steps=50)
    assert result.status == "diverged" and not result.ok
    assert math.isnan(result.value)
    assert isinstance(result.diverged_at, int) and result.steps < 50
    assert f"step {result.diverged_at}" in result.reason
    assert "loss" in result.reason


def test_nan_loss_names_the_step() -> None:
    """log θ with θ pushed below zero: the loss is NaN at step 2."""
    task = Task(name="log", model=lambda: _Scalar(1.0), loss=lambda m, b: m.theta.log(),
                data=_constant_batches, evaluate=lambda m: float(m.theta.detach().log()), steps=10)
    result = train(task, "sgd", {"lr": 0.6}, eval_every=10)
    assert result.status == "diverged"
    assert result.reason == "loss is nan at step 2" and result.diverged_at == 2


class _Scalar(nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.tensor(value))


def test_checkpoint_resume_is_exact(tmp_path) -> None:
    """A run interrupted at step 50 (mid-epoch) and resumed matches an uninterrupted one."""
    kwargs = dict(task="logistic_breast_cancer", optimizer="adam", hparams={"lr": 0.01},
                  eval_every=10, schedule={"lr": {"name": "cosine", "T_max": 100},
                                           "beta1": {"name": "exponential", "gamma": 0.999}})
    full = train(steps=100, **kwargs)
    path = tmp_path / "run.pt"
    first = train(steps=50, checkpoint=path, **kwargs)
    assert first.steps == 50 and path.exists()
    state = torch.load(path, weights_only=True)
    assert state["step"] == 50 and state["generator"].dtype == torch.uint8
    resumed = train(steps=100, checkpoint=path, resume=True, **kwargs)
    for a, b in zip(full.module.parameters(), resumed.module.parameters()):
        assert torch.equal(a, b)
    assert resumed.curve == full.curve and resumed.val_curve == full.val_curve
    assert resumed.value == full.value and resumed.evaluations == full.evaluations == 100
    assert resumed.final_hparams == full.final_hparams
    assert resumed.diagnostics == full.diagnostics and resumed.warnings == full.warnings


def test_resume_without_checkpoint_file_starts_fresh(tmp_path) -> None:
    result = train("quadratic", "sgd", {"lr": 0.01}, steps=5, checkpoint=tmp_path / "c.pt",
                   resume=True)
    assert result.steps == 5 and (tmp_path / "c.pt").exists()
    with pytest.raises(ValueError, match="cannot resume"):
        train("quadratic", "sgd", {"lr": 0.01}, steps=8, seed=1,
              checkpoint=tmp_path / "c.pt", resume=True)


def test_schedule_values_reach_the_optimizer() -> None:
    spec = {"name": "cosine", "T_max": 20, "eta_min": 1e-4, "base_lr": 0.01}
    result = train("quadratic", "sgd", {"lr": 0.5}, schedule=spec, steps=20)
    s = schedules.create(spec)
    assert [r["lr"] for r in result.diagnostics] == pytest.approx(
        [s(k) for k in range(20)], rel=1e-12)


def test_several_schedules_default_base_from_optimizer() -> None:
    result = train("quadratic", torch_sgd, {"lr": 0.02, "momentum": 0.9}, steps=12, schedule={
        "lr": {"name": "step", "step_size": 5, "gamma": 0.5},
        "momentum": {"name": "linear_warmup", "start_factor": 0.5, "total_iters": 4}})
    lrs = [r["lr"] for r in result.diagnostics]
    momenta = [r["momentum"] for r in result.diagnostics]
    assert lrs == pytest.approx([0.02 * 0.5 ** (k // 5) for k in range(12)])
    warm = schedules.create({"name": "linear_warmup", "start_factor": 0.5, "total_iters": 4,
                             "base_lr": 0.9})
    assert momenta == pytest.approx([warm(k) for k in range(12)])


def test_reduce_on_plateau_steps_with_validation_loss() -> None:
    # a threshold of 99%: no evaluation after the first counts as an improvement
    spec = {"name": "reduce_on_plateau", "patience": 0, "factor": 0.5, "threshold": 0.99}
    result = train("quadratic", "sgd", {"lr": 0.004}, schedule=spec, steps=10, eval_every=2)
    assert result.final_hparams["lr"] == pytest.approx(0.004 * 0.5 ** 4)


def test_writers_csv_and_tensorboard(tmp_path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    csv_writer = CSVWriter(tmp_path / "log.csv")
    tb_writer = TensorBoardWriter(tmp_path / "tb")
    train("quadratic", "sgd", {"lr": 0.005}, steps=20, eval_every=5,
          writers=[csv_writer, tb_writer])
    csv_writer.close()
    tb_writer.close()
    with open(tmp_path / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {"step", "loss", "grad_norm", "update_ratio", "lr", "val_loss"} <= set(rows[0])
    assert [int(r["step"]) for r in rows] == list(range(21))
    assert float(rows[5]["val_loss"]) > 0 and rows[4]["val_loss"] == ""
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert {"loss", "grad_norm", "lr", "val_loss"} <= set(events.Tags()["scalars"])
    assert len(events.Scalars("loss")) == 20 and len(events.Scalars("val_loss")) == 4


def test_progress_bar_and_log_every(capsys) -> None:
    result = train("quadratic", "sgd", {"lr": 0.005}, steps=10, log_every=4, progress=True)
    assert [r["step"] for r in result.diagnostics] == [0, 4, 8]
    assert "train quadratic" in capsys.readouterr().err


def test_record_path() -> None:
    result = train("quadratic", "sgd", {"lr": 0.005}, steps=10, record_path_every=4)
    assert len(result.path) == 4  # steps 0, 4, 8 and the final 10
    final = torch.cat([p.detach().reshape(-1) for p in result.module.parameters()])
    assert torch.equal(result.path[-1], final)


def test_transforms_are_added(tmp_path) -> None:
    from metaopt.transforms import ClipByGlobalNorm

    result = train("quadratic", "sgd", {"lr": 0.01}, steps=5,
                   transforms=[ClipByGlobalNorm(1.0)], checkpoint=tmp_path / "c.pt")
    for record in result.diagnostics:  # raw gradients are large; the updates are clipped
        assert record["grad_norm"] > 1.0
        assert record["update_norm"] == pytest.approx(0.01, rel=1e-4)
    resumed = train("quadratic", "sgd", {"lr": 0.01}, steps=8,
                    transforms=[ClipByGlobalNorm(1.0)], checkpoint=tmp_path / "c.pt",
                    resume=True)
    assert resumed.steps == 8 and resumed.curve[:5] == result.curve
    with pytest.raises(TypeError, match="metaopt optimizer"):
        train("quadratic", torch_sgd, {"lr": 0.01}, steps=2, transforms=[ClipByGlobalNorm(1.0)])
