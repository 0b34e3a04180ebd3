"""Search spaces for ``metaopt tune``: load and check them, turn Optuna trials into configs.

    space = load_space("adamw", "adamw", file=experiment.file,
                       schedule="warmup_cosine")
    config = suggest(trial, space, steps=300)
    opt = metaopt.optim.create(config.optimizer, model.parameters(), **config.hparams)

Layout: ``params.py`` the parameter kinds and space files, ``schedule_space.py`` schedule
spaces, ``space.py`` optimizer spaces, :func:`suggest` and :func:`describe`.
"""

from metaopt.search.params import Categorical, Fixed, FloatParam, IntParam, Param
from metaopt.search.schedule_space import ScheduleSpace, load_schedule_space
from metaopt.search.space import Config, Space, describe, load_space, suggest

__all__ = ["Categorical", "Config", "Fixed", "FloatParam", "IntParam", "Param", "ScheduleSpace",
           "Space", "describe", "load_schedule_space", "load_space", "suggest"]

# ``metaopt.search(task, ...)`` runs a search, while ``metaopt.search.load_space`` and the other
# names stay reachable: the package module is callable (DESIGN.md's contract).
import sys as _sys  # noqa: E402
import types as _types  # noqa: E402

from metaopt.search.tune import ResumeMismatch, search  # noqa: E402


class _CallableModule(_types.ModuleType):
    def __call__(self, *args, **kwargs):
        return search(*args, **kwargs)


_sys.modules[__name__].__class__ = _CallableModule
__all__ += ["ResumeMismatch", "search"]
