"""The search layer: Optuna studies trained as populations (metaopt.search, metaopt tune)."""

import math
from collections import Counter, defaultdict

import optuna
import pytest
from optuna.trial import TrialState
from toy_tasks import regression

import metaopt
from metaopt.search.study import Search
from metaopt.search.tune import ResumeMismatch, search
from metaopt.tasks import Task


def _task(steps: int = 20) -> Task:
    return regression("search-toy", steps)


def _finished(study):
    return [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
            or t.state == TrialState.FAIL and t.user_attrs.get("reason") not in ("lost",
                                                                                 "surplus")]


def test_a_population_trial_equals_the_configuration_trained_alone():
    task = _task(steps=24)
    result = search(task, "adamw", {"lr": {"low": 1e-3, "high": 3e-2, "log": True},
                                    "beta1": {"low": 0.8, "high": 0.95}},
                    schedule="warmup_cosine", trials=6, population=3, pruner="none",
                    sampler="random", seed=3, progress=False)
    done = [t for t in result.study.trials if t.state == TrialState.COMPLETE]
    assert len(done) == 6 and result.best.value == min(t.value for t in done)
    for t in done[:3]:
        config = t.user_attrs["config"]
        alone = metaopt.train(task, config["optimizer"], config["hparams"],
                              schedule=config["schedule"], steps=24, seed=3)
        assert alone.value == pytest.approx(t.value, rel=1e-9, abs=1e-12)
    assert result.evaluations == 6 * 24


def test_continuous_batching_refills_a_pruned_slot_at_once():
    class PruneEven(optuna.pruners.BasePruner):
        def prune(self, study, trial):  # prune even-numbered trials at their first report
            return trial.number % 2 == 0

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0),
                                pruner=PruneEven())
    space = metaopt.search.load_space({"lr": {"low": 1e-3, "high": 1e-2, "log": True}}, "sgd")
    Search(study, _task(), space, trials=10, population=3, steps=20, eval_every=5,
           progress=False).run()
    assert len(_finished(study)) == 10 == len(study.trials)
    by_slot = defaultdict(list)
    for t in study.trials:
        run = t.user_attrs["run"]
        by_slot[run["slot"]].append((run["entered"], run["left"], t.state))
    assert len(by_slot) == 3
    for runs in by_slot.values():
        runs.sort()
        for (_, left, _), (entered, _, _) in zip(runs, runs[1:]):
            assert entered == left  # the next trial took the slot at the very next step
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert pruned and all(t.last_step == 5 for t in pruned)


def test_diverged_trials_fail_with_their_reason_and_the_study_goes_on():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    space = metaopt.search.load_space({"lr": {"low": 1e4, "high": 1e6, "log": True}}, "sgd")
    Search(study, _task(), space, trials=5, population=2, steps=20, progress=False).run()
    assert Counter(t.state for t in study.trials) == {TrialState.FAIL: 5}
    assert all("loss" in t.user_attrs["reason"] or "validation" in t.user_attrs["reason"]
               for t in study.trials)


def test_optimizers_of_different_structure_train_in_their_own_populations():
    result = search(_task(), ["adam", "sgd"], trials=8, population=4, sampler="random",
                    pruner="none", progress=False)
    names = Counter(t.user_attrs["config"]["optimizer"] for t in result.study.trials)
    assert sum(names.values()) == 8 and set(names) == {"adam", "sgd"}
    assert len(result.notes) >= 2


def test_duplicate_suggestions_in_a_batch_are_not_trained_twice():
    space = {"nesterov": {"choices": [True, False]}, "lr": 0.01, "momentum": 0.9}
    result = search(_task(), "sgd", space, trials=6, population=4, sampler="random",
                    pruner="none", progress=False)
    done = [t for t in result.study.trials if t.state == TrialState.COMPLETE]
    assert len(done) == 6
    twins = [t for t in done if "duplicate_of" in t.user_attrs["run"]]
    assert twins and result.evaluations < 6 * 20
    for t in twins:
        assert t.value == result.study.trials[t.user_attrs["run"]["duplicate_of"]].value


@pytest.mark.parametrize("sampler", ["tpe", "cmaes", "gp", "auto"])
def test_every_sampler_runs(sampler):
    result = search(_task(steps=10), "adam", {"lr": {"low": 1e-3, "high": 1e-1, "log": True},
                                              "beta1": {"low": 0.8, "high": 0.95}},
                    trials=4, population=2, sampler=sampler, progress=False)
    assert result.best is not None and math.isfinite(result.best.value)


def test_resuming_with_another_space_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    search(_task(), "sgd", {"lr": {"low": 1e-3, "high": 1e-2}}, trials=2, population=2,
           storage=url, study_name="s", progress=False)
    again = search(_task(), "sgd", {"lr": {"low": 1e-3, "high": 1e-2}}, trials=3,
                   population=2, storage=url, study_name="s", progress=False)
    assert len(_finished(again.study)) == 3  # resumed: 2 kept, 1 more
    with pytest.raises(ResumeMismatch, match="space"):
        search(_task(), "sgd", {"lr": {"low": 1e-4, "high": 1e-2}}, trials=3, population=2,
               storage=url, study_name="s", progress=False)


def test_tasks_and_optimizers_that_cannot_stack_run_through_the_loop_engine():
    task = _task()
    task.vmap_ok = False
    result = search(task, "adam", {"lr": {"low": 1e-3, "high": 1e-2}}, trials=3, population=3,
                    progress=False)
    assert any("loop" in note for note in result.notes)

    class Solo(metaopt.optim.SGD):
        supports_population = False

    metaopt.optim.register("solo-sgd", Solo)
    try:
        result = search(_task(), "solo-sgd", {"lr": {"low": 1e-3, "high": 1e-2}}, trials=3,
                        population=3, progress=False)
        assert any("loop" in note for note in result.notes)
        assert len(_finished(result.study)) == 3
    finally:
        metaopt.optim.registry._REGISTRY.pop("solo-sgd")
