"""The selection's last step: a short tune of the winner, started from what halving learnt.

The winner's shipped search space, its learning rate narrowed to ``10^±TUNE_SPREAD`` around
the best probe, and its fixed settings (SGD's momentum) kept. Its full-length probes from the
last halving round enter the Optuna study first as finished trials (their other
hyperparameters at the defaults they trained with), and TPE models from them at once
(``n_startup_trials`` = their number) instead of sampling its first ten trials at random: the
few trials a selection can afford start where halving ended.
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any

import optuna

from metaopt import optim
from metaopt.search.params import Fixed, FloatParam, IntParam
from metaopt.search.schedule_space import load_schedule_space
from metaopt.search.space import Space, load_space
from metaopt.search.tune import search
from metaopt.select.portfolio import Candidate

TUNE_SPREAD = 0.5  # the tune's lr range: best probe lr x 10^[-0.5, 0.5]
TUNE_POPULATION = 32  # tune trials trained together at most
PRIOR = "metaopt:prior"  # user attribute marking a trial that halving trained


def space_for(c: Candidate, lr: float, steps: int) -> Space:
    shipped = load_space(None, c.optimizer).optimizers[c.optimizer]
    params = {**shipped, **{k: Fixed(v) for k, v in c.hparams.items()},
              "lr": FloatParam(lr * 10 ** -TUNE_SPREAD, lr * 10 ** TUNE_SPREAD, log=True)}
    schedule = None if c.schedule is None else load_schedule_space(c.schedule_for(steps))
    return Space({c.optimizer: params}, schedule)


def distribution(p: Any) -> optuna.distributions.BaseDistribution:
    if isinstance(p, FloatParam):
        return optuna.distributions.FloatDistribution(p.low, p.high, log=p.log, step=p.step)
    if isinstance(p, IntParam):
        return optuna.distributions.IntDistribution(p.low, p.high, log=p.log, step=p.step)
    return optuna.distributions.CategoricalDistribution(list(p.choices))


def defaults(optimizer: str) -> dict[str, Any]:
    """Every constructor default of ``optimizer`` by flat name (tensor ones and options)."""
    out = {n: info.default for n, info in optim.hyperparameters(optimizer).items()}
    for n, p in inspect.signature(optim.lookup(optimizer)).parameters.items():
        if p.default is not inspect.Parameter.empty:
            out.setdefault(n, p.default)
    return out


def prior_trials(space: Space, c: Candidate, probes: list[Any], schedule: Any
                 ) -> list[optuna.trial.FrozenTrial]:
    """The probes as finished Optuna trials of ``space``. A hyperparameter whose value in
    the probes (its default) lies outside the space (a weight decay of 0 under a log range)
    is left out of the trial: TPE's group decomposition models the others from it."""
    params = space.optimizers[c.optimizer]
    base = defaults(c.optimizer)
    out = []
    for p in probes:
        values = {**base, **c.hparams, "lr": p.lr}
        chosen, dists = {}, {}
        for name, param in params.items():
            value = values.get(name)
            if isinstance(param, Fixed) or value is None:
                continue
            dist = distribution(param)
            if _inside(dist, value):
                chosen[name], dists[name] = value, dist
        hparams = {k: values[k] for k in params if k in values}
        config = {"optimizer": c.optimizer, "hparams": hparams, "schedule": schedule}
        out.append(optuna.trial.create_trial(params=chosen, distributions=dists,
                                             value=p.value,
                                             user_attrs={"config": config, PRIOR: True}))
    return out


def _inside(dist: Any, value: Any) -> bool:
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return value in dist.choices
    return dist.low <= float(value) <= dist.high


def tune_winner(task: Any, c: Candidate, probes: list[Any], trials: int, *, steps: int,
                seed: int, storage: Any, device: str) -> Any:
    """``trials`` new full-length trials of ``c`` (its probes ``probes`` counted as prior
    trials); returns the search result."""
    best = min(probes, key=lambda p: p.value)
    space = space_for(c, best.lr, steps)
    storage = storage if storage is not None else optuna.storages.InMemoryStorage()
    name = f"select-{task.name}-{c.name}"
    priors = prior_trials(space, c, probes, c.schedule_for(steps))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=storage, direction="minimize",
                                load_if_exists=True)
    if not any(t.user_attrs.get(PRIOR) for t in study.get_trials(deepcopy=False)):
        study.add_trials(priors)  # once: a resumed tune finds them there
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True,
                                             constant_liar=True,
                                             n_startup_trials=max(1, len(priors)))
    return search(task, c.optimizer, space, trials=trials + len(priors),
                  population=min(trials, TUNE_POPULATION), steps=steps, seed=seed,
                  sampler=sampler, pruner="none", storage=storage, study_name=name,
                  device=device, progress=False)
