"""metaopt.select: it picks the optimizer that wins, keeps to its budget (counted outside the
selector), warm-starts as the meta-features say, ranks diverged candidates last, never pairs
Schedule-Free with a decaying schedule, and its plan and report hold together."""

import math

import pytest
import torch
from torch import nn

import metaopt
from metaopt.select import features, plan, store
from metaopt.select.portfolio import COSINE, Candidate, check_pairing, lr_grid, resolve
from metaopt.select.selector import candidates_of
from metaopt.tasks import Task


def ill_conditioned(steps: int = 90, vmap_ok: bool = True, counter: list | None = None
                    ) -> Task:
    """Least squares with features over 1.5 decades of scale (curvatures over three): plain
    SGD must take a step small enough for the steepest direction and crawls along the flat
    ones; Adam rescales each coordinate."""
    g = torch.Generator().manual_seed(3)
    scales = torch.logspace(-1.5, 0, 8, dtype=torch.float64)
    x = torch.randn(128, 8, generator=g, dtype=torch.float64) * scales
    y = x @ torch.randn(8, 1, generator=g, dtype=torch.float64)

    def model():
        return nn.Linear(8, 1, bias=False).double()

    def mse(module, batch):
        xb, yb = batch
        return ((module(xb) - yb) ** 2).mean()

    def loss(module, batch):
        if counter is not None:
            counter[0] += 1  # one call is one gradient evaluation (loop engine, no vmap)
        return mse(module, batch)

    def data(generator):
        while True:
            idx = torch.randint(0, 128, (32,), generator=generator)
            yield x[idx], y[idx]

    @torch.no_grad()
    def evaluate(module):
        return float(mse(module, (x, y)))

    return Task("ill_conditioned", model, loss, data, evaluate, steps=steps, vmap_ok=vmap_ok)


def test_picks_the_optimizer_that_wins_by_far():
    choice = metaopt.select(ill_conditioned(), candidates=["sgd", "adam"], budget=4000,
                            store=False, progress=False)
    assert choice.best.optimizer == "adam"
    assert [e.candidate for e in choice.ranking] == ["adam", "sgd"]
    sgd = choice.ranking[1]
    assert sgd.value > 3 * choice.best.value
    assert "rank" in str(choice.ranking) and "adam" in str(choice.ranking)


def test_budget_is_never_exceeded_counted_outside_the_selector():
    counter = [0]
    task = ill_conditioned(steps=30, vmap_ok=False, counter=counter)
    budget = 2500
    choice = metaopt.select(task, candidates=["sgd", "adam", "rmsprop"], budget=budget,
                            store=False, progress=False)
    assert 0 < counter[0] <= budget
    assert counter[0] <= choice.evaluations <= budget  # charged at least what was spent
    assert choice.tune is not None  # the budget paid for a tune too: still within it


def test_plan_fits_the_budget_and_shrinks_in_order():
    full = plan.make_plan(13, 300, 1, plan.default_budget(300, 1), warm=False,
                          features_cost=features.COST)
    assert [r.steps for r in full.rounds] == [34, 100, 300]
    assert [r.candidates for r in full.rounds] == [13, 5, 2]
    assert full.cost() <= plan.default_budget(300, 1)
    small = plan.make_plan(13, 300, 1, 1000, warm=False, features_cost=features.COST)
    assert small.rounds[0].candidates == (1000 - features.COST) // (7 * 34)
    assert small.cost() <= 1000
    with pytest.raises(plan.BudgetTooSmall):
        plan.make_plan(13, 300, 1, 100, warm=False, features_cost=features.COST)


def _record(name: str, feats: dict, first: str, others: list[str], lr: float) -> store.Record:
    order = [first, *others]
    return store.Record(name, dict(feats), {c: {"lr": lr, "value": 0.1 * (i + 1),
                                                "rung": 2, "rank": i + 1, "status": "ok"}
                                            for i, c in enumerate(order)},
                        store.learned_hash())


def test_warm_start_orders_candidates_as_the_nearest_task_says():
    task = ill_conditioned()
    feats = features.measure(task)
    far = {k: v + 5.0 for k, v in feats.items()}
    names = ["sgd", "adam", "rmsprop"]
    near_rmsprop = [_record("near", feats, "rmsprop", ["adam", "sgd"], 3e-3),
                    _record("far", far, "sgd", ["adam", "rmsprop"], 0.5)]
    warm = store.warm_start(feats, names, near_rmsprop, k=1)
    assert warm.order[0] == "rmsprop" and warm.sources[0][0] == "near"
    assert warm.lrs["rmsprop"] == pytest.approx(3e-3)
    swapped = [_record("near", far, "rmsprop", ["adam", "sgd"], 3e-3),
               _record("far", feats, "sgd", ["adam", "rmsprop"], 0.5)]
    assert store.warm_start(feats, names, swapped, k=1).order[0] == "sgd"
    # the selection probes in that order, its first probes centred on the record's lr
    choice = metaopt.select(task, candidates=names, budget=80, store=near_rmsprop,
                            tune=False, progress=False)
    assert choice.order[0] == "rmsprop" and choice.warm_start[0][0] == "near"
    first = [p for p in choice.probes if p.candidate == "rmsprop" and p.round == 0][:3]
    centre = math.exp(sum(math.log(p.lr) for p in first) / 3)
    assert centre == pytest.approx(store.warm_start(feats, names, near_rmsprop).lrs["rmsprop"])
    assert 3e-3 <= centre < 4.5e-3  # the near record's lr, pulled a little towards the far one
    assert {p.candidate for p in choice.probes} == {"rmsprop"}  # the budget reached one


def test_stale_records_lose_the_learned_outcome(tmp_path):
    record = _record("old", {"log_params": 1.0}, "lstm", ["adam"], 1.0)
    record.learned_checkpoint = "not-the-shipped-one"
    store.write(record, tmp_path)
    loaded = store.load(tmp_path)
    assert loaded[0].stale and "lstm" not in loaded[0].candidates
    assert store.stale(tmp_path) == ["old"]
    assert store.load(tmp_path, exclude=("old",)) == []


def test_diverging_candidate_ranked_last_with_its_reason():
    wild = Candidate("sgd_wild", "sgd", lr=1e6, spread=0.1)
    choice = metaopt.select(ill_conditioned(), candidates=["adam", wild], budget=3000,
                            store=False, progress=False)
    last = choice.ranking[-1]
    assert last.candidate == "sgd_wild" and last.status == "diverged"
    assert last.reason and ("non-finite" in last.reason or "loss" in last.reason)
    assert choice.best.candidate == "adam"


def test_schedule_free_is_never_paired_with_a_decaying_schedule():
    names = [n for n in metaopt.optim.names()
             if getattr(metaopt.optim.lookup(n), "schedule_free", False)]
    assert names, "the registry has Schedule-Free optimizers"
    for n in names:
        assert resolve(n).schedule is None
        with pytest.raises(ValueError, match="schedule-free"):
            check_pairing(Candidate("sf", n, schedule=COSINE))
        with pytest.raises(ValueError, match="schedule-free"):
            candidates_of([Candidate("sf", n, schedule=COSINE)])
    assert resolve("adam").schedule == COSINE


def test_unknown_candidate_is_named():
    with pytest.raises(ValueError, match="unknown candidate 'adamm'"):
        candidates_of(["adam", "adamm"])


def test_lr_grid_is_log_spaced_around_its_centre():
    grid = lr_grid(1e-2, 5, 1.0)
    assert grid[0] == pytest.approx(1e-3) and grid[2] == pytest.approx(1e-2)
    assert grid[-1] == pytest.approx(1e-1)
