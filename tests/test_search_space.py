"""Search spaces: the shipped files load and build every optimizer, malformed spaces fail as one
ExperimentError naming the file and the key, optimizer lists are conditional spaces, and
schedule spaces resolve into specs metaopt.schedules accepts."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
import torch

from metaopt import optim, schedules
from metaopt.experiment import ExperimentError
from metaopt.search import (
    Categorical,
    Fixed,
    FloatParam,
    IntParam,
    describe,
    load_schedule_space,
    load_space,
    suggest,
)
from metaopt.search.params import ROOT

optuna.logging.set_verbosity(optuna.logging.WARNING)
SCHEDULE_FILES = ["constant", "warmup_cosine", "cosine", "cosine_restarts", "step",
                  "one_cycle", "wsd"]


def study(seed: int = 0) -> optuna.Study:
    return optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))


def build(config) -> torch.optim.Optimizer:
    return optim.create(config.optimizer, [torch.zeros(3, 3, requires_grad=True)],
                        **config.hparams)


def test_every_optimizer_has_a_space_file_that_builds_it():
    s = study()
    for name in optim.names():
        path = ROOT / "search_spaces" / f"{name}.yaml"
        assert path.read_text().startswith("#"), f"{path} needs a header citing its ranges"
        space = load_space(name, name)
        params = space.optimizers[name]
        assert "lr" in params, name
        config = suggest(s.ask(), space)
        assert config.optimizer == name and set(config.hparams) == set(params)
        build(config)
        infos = optim.hyperparameters(name, **({"base": "adam"} if name == "lookahead" else {}))
        for k, v in config.hparams.items():
            assert k not in infos or infos[k].contains(v), (name, k, v)


def test_fixed_trial_and_path_forms():
    space = load_space("search_spaces/adamw.yaml", "adamw")
    assert space == load_space("adamw", "adamw")
    values = {"lr": 3e-4, "beta1": 0.9, "beta2": 0.99, "eps": 1e-8, "weight_decay": 1e-2,
              "amsgrad": False}
    config = suggest(optuna.trial.FixedTrial(values), space)
    assert config.hparams == values and config.schedule is None
    opt = build(config)
    assert optim.hyperparams.values(opt)["beta2"] == pytest.approx(0.99)
    inline = load_space({"lr": {"low": "1e-5", "high": "1e-1", "log": True},
                         "lookahead_k": {"low": 3, "high": 10, "step": 1}, "base": "sgd",
                         "momentum": 0.9}, "lookahead")
    params = inline.optimizers["lookahead"]
    assert params["lr"] == FloatParam(1e-5, 1e-1, log=True)  # YAML's 1e-5 strings are numbers
    assert isinstance(params["lookahead_k"], IntParam)
    build(suggest(study().ask(), inline))


def test_structure_keys_the_non_tensor_choices():
    space = load_space("sgd", "sgd", schedule="wsd")
    s = study(1)
    configs = [suggest(s.ask(), space, steps=100) for _ in range(8)]
    for c in configs:
        hash(c.structure)
        assert c.structure == ("sgd", (("nesterov", c.hparams["nesterov"]),),
                               ("wsd", (("decay", c.schedule["decay"]),), ()))
    assert len({c.structure for c in configs}) > 1


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


BAD_INLINE = [
    ({"lr": {"low": 1e-5, "high": 1e-1}, "learning_rate": {"low": 1, "high": 2}},
     "search.space.learning_rate", "beta1"),  # lists the known names
    ({"lr": {"low": 1e-1, "high": 1e-5, "log": True}}, "search.space.lr.low", "<= high"),
    ({"lr": {"low": 0.0, "high": 1e-1, "log": True}}, "search.space.lr.low", "> 0"),
    ({"beta1": {"low": 0.8, "high": 1.0}}, "search.space.beta1.high", "[0, 1)"),
    ({"weight_decay": {"low": -1.0, "high": 0.1}}, "search.space.weight_decay.low", "[0, inf)"),
    ({"amsgrad": {"choices": []}}, "search.space.amsgrad.choices", "non-empty"),
    ({"amsgrad": {"choices": [1, 0]}}, "search.space.amsgrad.choices", "true or false"),
    ({"lr": {"low": 1e-5, "high": 1e-1, "lgo": True}}, "search.space.lr.lgo", "unknown key"),
    ({"lr": {"low": 1e-5}}, "search.space.lr.high", "a number"),
    ({"lr": {"low": 1e-5, "high": 1e-1, "log": True, "step": 1e-5}}, "search.space.lr.step",
     "log"),
    ({"maximize": True}, "search.space.maximize", "hyperparameter or option of adam"),
]


@pytest.mark.parametrize("spec, key, hint", BAD_INLINE)
def test_malformed_inline_space(tmp_path, spec, key, hint):
    exp = tmp_path / "exp.yaml"
    with pytest.raises(ExperimentError) as err:
        load_space(spec, "adam", file=exp)
    assert err.value.file == str(exp) and err.value.key == key
    assert str(err.value).startswith(f"{exp}: {key}: ") and hint in str(err.value)


def test_malformed_space_files(tmp_path):
    exp = tmp_path / "exp.yaml"
    cases = [
        ("missing.yaml", str(exp), "search.space"),  # unreadable: nowhere to be found
        (write(tmp_path, "broken.yaml", "lr: {low: 1\n"), "broken.yaml", "line"),
        (write(tmp_path, "list.yaml", "- lr\n"), "list.yaml", "(top level)"),
        (write(tmp_path, "typo.yaml", "lr: {low: 1.0e-5, high: 0.1}\nbeta3: 0.5\n"),
         "typo.yaml", "beta3"),
    ]
    for spec, file, key in cases:
        with pytest.raises(ExperimentError) as err:
            load_space(spec.name if isinstance(spec, Path) else spec, "adam", file=exp)
        assert err.value.file.endswith(file) and err.value.key.startswith(key), str(err.value)
        assert file in str(err.value)
    with pytest.raises(ExperimentError, match="search.optimizer"):
        load_space(None, ["adam", "adamm"], file=exp)
    with pytest.raises(ExperimentError, match=r"exp.yaml: search.schedule.name: .*cosine"):
        load_space(None, "adam", file=exp, schedule={"name": "cosinus"})
    with pytest.raises(ExperimentError, match=r"search.schedule: .*unknown parameter 'T_max2'"):
        load_space(None, "adam", file=exp, schedule={"name": "cosine", "T_max2": 3})


def test_relative_paths_are_found_beside_the_experiment(tmp_path):
    (tmp_path / "spaces").mkdir()
    write(tmp_path / "spaces", "mine.yaml", "lr: {low: 1.0e-3, high: 1.0e-2, log: true}\n")
    space = load_space("spaces/mine.yaml", "adam", file=tmp_path / "exp.yaml")
    assert space.optimizers["adam"] == {"lr": FloatParam(1e-3, 1e-2, log=True)}


def test_optimizer_list_is_a_categorical_with_conditional_subspaces():
    names = ["adam", "adamw", "sgd", "lion", "lookahead"]
    space = load_space(None, names)
    s = study(3)
    seen = set()
    for _ in range(30):
        trial = s.ask()
        config = suggest(trial, space)
        seen.add(config.optimizer)
        assert trial.params["optimizer"] == config.optimizer
        assert set(config.hparams) == set(space.optimizers[config.optimizer])
        for k, v in config.hparams.items():
            if isinstance(space.optimizers[config.optimizer][k], Fixed):  # lookahead's base
                assert space.optuna_name(config.optimizer, k) not in trial.params
            else:
                assert trial.params[space.optuna_name(config.optimizer, k)] == v
        others = {n for n in names if n != config.optimizer}
        assert not any(p.split(".")[0] in others for p in trial.params), trial.params
        s.tell(trial, 0.0)
    assert len(seen) >= 4
    for name in seen:  # every optimizer builds from one of its trials
        trial = optuna.trial.FixedTrial(next(t.params for t in s.trials
                                             if t.params["optimizer"] == name))
        build(suggest(trial, space))
    # a plain name only where every optimizer searching it uses the same distribution
    assert space.optuna_name("adam", "beta1") == space.optuna_name("lion", "beta1") == "beta1"
    assert space.optuna_name("adam", "lr") == "adam.lr"  # sgd's and lion's lr ranges differ
    assert space.optuna_name("sgd", "lr") == "sgd.lr"
    assert load_space(None, ["adam", "adamw"]).optuna_name("adamw", "lr") == "lr"
    assert isinstance(s.trials[0].distributions["optimizer"], optuna.distributions.
                      CategoricalDistribution)


def test_optimizer_list_with_a_space_each():
    space = load_space({"adam": {"lr": {"low": 1e-4, "high": 1e-2, "log": True}}, "sgd": "sgd"},
                       ["adam", "sgd", "rmsprop"])
    assert list(space.optimizers["adam"]) == ["lr"]
    assert "nesterov" in space.optimizers["sgd"] and "centered" in space.optimizers["rmsprop"]
    assert isinstance(space.optimizers["sgd"]["nesterov"], Categorical)
    text = describe(space)
    assert text.splitlines()[0] == "optimizer: choice of adam, sgd, rmsprop"
    assert "adam.lr: float [0.0001, 0.01] log" in text
    assert len(text.splitlines()) == 1 + sum(len(p) for p in space.optimizers.values())


@pytest.mark.parametrize("name", SCHEDULE_FILES)
def test_schedule_spaces_resolve_into_schedules(name):
    space = load_space("adamw", "adamw", schedule=name)
    assert space.schedule == load_schedule_space(f"search_spaces/schedules/{name}.yaml")
    assert (ROOT / "search_spaces/schedules" / f"{name}.yaml").read_text().startswith("#")
    s = study(5)
    for _ in range(3):
        config = suggest(s.ask(), space, steps=200)
        sched = schedules.create(schedules.with_base(config.schedule, config.hparams["lr"]))
        values = [sched(k) for k in (0, 100, 199)]
        assert all(math.isfinite(v) and 0 <= v <= 1.0 for v in values), (config.schedule, values)
        assert config.structure[2][0] == config.schedule["name"]
        assert not any(k.endswith(("_frac", "_rel")) for k in config.schedule)


def test_frac_lengths_turn_into_steps():
    space = load_space({"lr": {"low": 1e-4, "high": 1e-2, "log": True}}, "adamw",
                       schedule="warmup_cosine")
    values = {"lr": 1e-3, "schedule.linear_warmup.total_iters_frac": 0.1,
              "schedule.cosine.eta_min_rel": 0.01}
    config = suggest(optuna.trial.FixedTrial(values), space, steps=300)
    warm, cos = config.schedule["schedules"]
    assert config.schedule["milestones"] == [30] and warm["total_iters"] == 30
    assert cos["T_max"] == 270 and cos["eta_min"] == pytest.approx(1e-5)
    step = load_schedule_space({"name": "step", "step_size_frac": 0.25, "gamma": 0.5})
    config = suggest(optuna.trial.FixedTrial({"lr": 1e-3}),
                     load_space({"lr": {"low": 1e-4, "high": 1e-2}}, "adamw",
                                schedule={"name": "step", "step_size_frac": 0.25}), steps=80)
    assert config.schedule == {"name": "step", "step_size": 20}
    assert step.params["step_size_frac"].value == 0.25
    with pytest.raises(ValueError, match="steps"):
        suggest(optuna.trial.FixedTrial(values), space)
