"""The population trainer: P stacked members == P separate runs; divergence; reset; fallback."""

import dataclasses
import math

import pytest
import torch
from torch import nn

import metaopt
from metaopt.population import Population, train_population
from metaopt.tasks import Task


def _tiny_task() -> Task:
    """A float64 regression MLP small enough to compare runs exactly."""
    g = torch.Generator().manual_seed(123)
    x = torch.randn(64, 3, generator=g, dtype=torch.float64)
    y = torch.sin(x.sum(1, keepdim=True))

    def model():
        return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)).double()

    def loss(module, batch):
        xb, yb = batch
        return ((module(xb) - yb) ** 2).mean()

    def data(generator):
        while True:
            idx = torch.randint(0, 64, (16,), generator=generator)
            yield x[idx], y[idx]

    @torch.no_grad()
    def evaluate(module):
        return float(loss(module, (x, y)))

    return Task("tiny", model, loss, data, evaluate, steps=30)


def _single_run(task, name, hparams, seed, steps):
    """One separate ``metaopt.train`` run: its trained module and validation loss."""
    result = metaopt.train(task, name, hparams, steps=steps, seed=seed, progress=False)
    assert result.ok
    return result.module, result.value


HPARAMS = [{"lr": 0.01, "betas": (0.9, 0.999)}, {"lr": 0.05, "betas": (0.8, 0.99)},
           {"lr": 0.002, "betas": (0.5, 0.9)}]


@pytest.mark.parametrize("name,forward", [("adamw", "vmap"), ("sgd", "vmap"),
                                          ("adafactor", "vmap"), ("adamw", "members"),
                                          ("adamw", "batched"), ("sgd", "batched")])
def test_members_equal_separate_runs(name, forward):
    task = _tiny_task()
    hparams = HPARAMS if name != "sgd" else [{"lr": h["lr"], "momentum": h["betas"][0]}
                                             for h in HPARAMS]
    if name == "adafactor":
        hparams = [{"lr": h["lr"]} for h in HPARAMS]
    pop = Population(task, name, hparams, seeds=[3, 4, 5], forward=forward)
    result = pop.run(25)
    assert result.engine == "stacked" and pop.engine.forward == forward
    for i, h in enumerate(hparams):
        module, value = _single_run(task, name, h, [3, 4, 5][i], 25)
        assert result.members[i].value == pytest.approx(value, rel=1e-10, abs=1e-12)
        for pname, p in module.named_parameters():
            torch.testing.assert_close(pop.engine.params[pname][i], p, rtol=1e-10, atol=1e-12)


def _shared_data_task() -> Task:
    """A float64 MLP on fixed minibatches (the built-in datasets' iterator), so members with
    one data seed draw the same rows and the engine broadcasts one batch."""
    from metaopt.tasks.datasets import minibatches

    g = torch.Generator().manual_seed(7)
    x = torch.randn(96, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (96,), generator=g)

    def model():
        return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).double()

    def loss(module, batch):
        return nn.functional.cross_entropy(module(batch[0]), batch[1])

    @torch.no_grad()
    def evaluate(module):
        return float(loss(module, (x, y)))

    return Task("shared", model, loss, lambda gen: minibatches(x, y, 16, gen), evaluate,
                steps=20)


@pytest.mark.parametrize("seeds", [[2, 2, 2], [2, 3, 4]], ids=["shared", "own"])
@pytest.mark.parametrize("forward", ["auto", "vmap", "members"])
def test_shared_and_own_data_seeds_equal_separate_runs(seeds, forward):
    """``auto`` batches the MLP by hand; with one data seed every member gets the same
    batch, drawn once and broadcast; either way member i == its own metaopt.train run."""
    task = _shared_data_task()
    pop = Population(task, "adamw", HPARAMS, seeds=seeds, forward=forward)
    result = pop.run(12)
    assert pop.engine.shared_batch == (len(set(seeds)) == 1)
    assert pop.engine.forward == ("batched" if forward == "auto" else forward)
    for i, h in enumerate(HPARAMS):
        module, value = _single_run(task, "adamw", h, seeds[i], 12)
        assert result.members[i].value == pytest.approx(value, rel=1e-10, abs=1e-12)
        for pname, p in module.named_parameters():
            torch.testing.assert_close(pop.engine.params[pname][i], p, rtol=1e-10, atol=1e-12)


def test_a_model_without_a_batched_form_is_vmapped_and_says_why():
    task = _tiny_task()
    conv = Task("conv", lambda: nn.Sequential(nn.Unflatten(1, (1, 3)), nn.Conv1d(1, 2, 2),
                                              nn.Flatten(), nn.Linear(4, 1)).double(),
                task.loss, task.data, task.evaluate, steps=5)
    pop = Population(conv, "adamw", HPARAMS, seeds=[1, 2, 3])
    result = pop.run(2)
    assert pop.engine.forward == "vmap"
    assert "not batched by hand: layer 0 (Unflatten)" in result.note
    with pytest.raises(ValueError, match="forward='batched': layer 0"):
        Population(conv, "adamw", HPARAMS, seeds=[1, 2, 3], forward="batched")


def test_diverging_member_is_reported_and_others_are_untouched():
    task = _tiny_task()
    good = train_population(task, "sgd", [{"lr": 0.05}, {"lr": 0.02}], 20, seeds=[0, 1])
    mixed = train_population(task, "sgd", [{"lr": 0.05}, {"lr": 1e3}, {"lr": 0.02}], 20,
                             seeds=[0, 7, 1])
    bad = mixed.members[1]
    assert bad.status == "diverged" and bad.diverged_at is not None and "step" in bad.reason
    assert math.isnan(bad.value)
    assert mixed.members[0].value == good.members[0].value
    assert mixed.members[2].value == good.members[1].value
    assert mixed.best.hparams == {"lr": 0.05} or mixed.best.hparams == {"lr": 0.02}


def test_reset_member_trains_like_a_fresh_run():
    task = _tiny_task()
    pop = Population(task, "adam", [{"lr": 0.01}, {"lr": 0.03}], seeds=[0, 1])
    pop.run(10)
    pop.reinit(1, seed=9, hparams={"lr": 0.02})
    result = pop.run(15)
    _, fresh = _single_run(task, "adam", {"lr": 0.02}, 9, 15)
    assert result.members[1].value == pytest.approx(fresh, rel=1e-10)
    assert result.members[1].steps == 15
    _, untouched = _single_run(task, "adam", {"lr": 0.01}, 0, 25)
    assert result.members[0].value == pytest.approx(untouched, rel=1e-10)


def test_copy_member_and_set_hparams():
    task = _tiny_task()
    pop = Population(task, "adam", [{"lr": 0.01}, {"lr": 0.03}], seeds=[0, 1])
    pop.run(5)
    pop.copy_member(0, 1)
    assert pop.hparams[1] == {"lr": 0.01}
    for p in pop.engine.params.values():
        assert torch.equal(p[0], p[1])
    pop.set_hparams(1, {"lr": 0.5})
    assert float(pop.engine.read_hparam("lr")[1]) == 0.5


def test_tasks_vmap_cannot_serve_fall_back_to_a_loop_and_say_so():
    """An own train_step that isn't phased: member by member; the GAN's phased one stacks."""
    task = _tiny_task()

    def train_step(module, optimizer, batch):
        optimizer.zero_grad()
        value = task.loss(module, batch)
        value.backward()
        optimizer.step()
        return value.detach()

    own = dataclasses.replace(task, train_step=train_step, grad_evals_per_step=2)
    result = train_population(own, "adam", [{"lr": 1e-2}] * 2, steps=3)
    assert result.engine == "loop" and "own train_step (not phased)" in result.note
    assert result.evaluations == 2 * 2 * 3
    gan = train_population("gan_mixture", "adam", [{"lr": 2e-3, "betas": (0.5, 0.999)}] * 2,
                           steps=3)
    assert gan.engine == "stacked" and gan.evaluations == 2 * 2 * 3


def test_schedule_writes_per_member_values():
    task = _tiny_task()
    pop = Population(task, "sgd", [{"lr": 0.1}, {"lr": 0.01}], seeds=[0, 1],
                     schedule={"name": "cosine", "T_max": 10})
    seen = []
    for _ in range(3):
        pop.step()
        seen.append(pop.engine.read_hparam("lr").clone())
    cos = [0.5 * (1 + math.cos(math.pi * k / 10)) for k in range(3)]
    for k in range(3):
        torch.testing.assert_close(seen[k], torch.tensor([0.1, 0.01], dtype=torch.float64)
                                   * cos[k])


def test_auto_for_large_members_times_stacked_against_a_loop_and_members_stay_exact():
    """Members of ≥ 2¹⁶ parameters: ``auto`` steps a stacked and a looped copy, keeps the
    faster and builds it afresh, so each member still equals its separate run."""
    base = _shared_data_task()
    wide = Task("wide", lambda: nn.Sequential(nn.Linear(4, 300), nn.ReLU(),
                                              nn.Linear(300, 220), nn.ReLU(),
                                              nn.Linear(220, 3)).double(),
                base.loss, base.data, base.evaluate, steps=5)
    pop = Population(wide, "adamw", HPARAMS[:2], seeds=[5, 6])
    assert pop.engine.mode in ("stacked", "loop") and "a step, estimated: stacked" in pop.note
    result = pop.run(4)
    for i, h in enumerate(HPARAMS[:2]):
        module, value = _single_run(wide, "adamw", h, [5, 6][i], 4)
        assert result.members[i].value == pytest.approx(value, rel=1e-10, abs=1e-12)
