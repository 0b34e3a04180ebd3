"""``metaopt.search(task, optimizer=..., space=..., trials=...)``: one whole search.

    result = metaopt.search("digits_mlp", "adamw", "adamw", trials=64, population=16)
    result.best.hparams, result.best.value, result.study   # the Optuna study, for its tools

It opens (or resumes) the Optuna study, checks that a resumed study searches the same thing,
and runs :class:`~metaopt.search.study.Search` on it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import optuna

from metaopt import tasks
from metaopt.search.space import Space, load_space
from metaopt.search.study import Search, SearchResult, best_of, make_pruner, make_sampler

FINGERPRINT = "metaopt:fingerprint"


class ResumeMismatch(ValueError):
    """A resumed study was started with another ``key`` (task, optimizer, space, ...)."""

    def __init__(self, key: str, was: Any, now: Any) -> None:
        super().__init__(f"the study was started with another {key} ({was!r}); "
                         f"this run has {now!r}: use another name or --out to start anew")
        self.key = key


def fingerprint(task: Any, space: Space, steps: int, seed: int) -> dict[str, str]:
    """What a resumed study must share with the run resuming it, key by key."""
    return {"task": task.name, "optimizer": ",".join(space.optimizers),
            "space": repr(sorted(space.optimizers.items())), "schedule": repr(space.schedule),
            "steps": str(steps), "seed": str(seed)}


def check_fingerprint(study: optuna.Study, mine: Mapping[str, str]) -> None:
    saved = study.user_attrs.get(FINGERPRINT)
    if saved is None:
        study.set_user_attr(FINGERPRINT, dict(mine))
        return
    for key, value in mine.items():
        if saved.get(key) != value:
            raise ResumeMismatch(key, saved.get(key), value)


def open_study(name: str, storage: Any, sampler: optuna.samplers.BaseSampler,
               pruner: optuna.pruners.BasePruner) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(study_name=name, storage=storage, sampler=sampler,
                               pruner=pruner, direction="minimize", load_if_exists=True)


def search(task: Any, optimizer: str | list[str] | None = None,
           space: str | Mapping[str, Any] | Space | None = None, *,
           schedule: str | Mapping[str, Any] | None = None, trials: int = 64,
           population: int = 16, steps: int | None = None, seed: int = 0,
           sampler: Any = "tpe", pruner: str = "hyperband", storage: Any = None,
           study_name: str = "metaopt", eval_every: int | None = None, device: str = "cpu",
           progress: bool | None = None) -> SearchResult:
    """Search ``optimizer``'s hyperparameters (and a schedule) for ``task``.

    Args:
        task: a Task or a built-in task's name.
        optimizer: a registry name, or a list of them (a categorical choice); default: the
            task's default optimizer.
        space: a search-space file or name (``search_spaces/<name>.yaml``), an inline mapping,
            a loaded :class:`~metaopt.search.Space`, or None for each optimizer's shipped space.
        schedule: a schedule space (``search_spaces/schedules/<family>.yaml``) searched too.
        trials: finished trials to end with (complete, pruned or diverged), over all workers.
        population: trials trained together as one stacked population.
        steps: training steps per trial (default ``task.steps``); ``seed``: every trial's
            initialisation and data seed (all trials see the same batches).
        sampler: ``tpe`` | ``cmaes`` | ``gp`` | ``random`` | ``auto`` (see
            :func:`~metaopt.search.study.auto_sampler`), or an Optuna sampler instance;
            ``pruner``: ``hyperband`` | ``median`` | ``none``, fed the validation loss every
            ``eval_every`` steps (default ``steps // 10``).
        storage: None (in memory), an Optuna storage or an SQLAlchemy URL; a study of the
            same ``study_name`` there is resumed (ResumeMismatch if it searched something else).
    """
    started = time.perf_counter()
    task = tasks.get(task) if isinstance(task, str) else task
    steps = int(steps or task.steps)
    if not isinstance(space, Space):
        space = load_space(space, optimizer or task.default_optimizer, schedule=schedule)
    eval_every = eval_every or max(1, steps // 10)
    study = open_study(study_name, storage, make_sampler(sampler, seed, space, trials, population),
                       make_pruner(pruner, steps, eval_every))
    check_fingerprint(study, fingerprint(task, space, steps, seed))
    run = Search(study, task, space, trials=trials, population=population, steps=steps,
                 seed=seed, eval_every=eval_every, device=device, progress=progress)
    run.run()
    return SearchResult(study, best_of(study), run.evaluations, time.perf_counter() - started,
                        run.notes)
