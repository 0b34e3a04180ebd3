"""Population-based training (Jaderberg et al. 2017, "Population Based Training of Neural
Networks", arXiv:1711.09846), vectorised in one process.

    result = metaopt.pbt("digits_mlp", "adamw", "adamw", population=16, interval=25)
    result.best.hparams, result.best.schedule     # the discovered schedule, for metaopt.train

Layout: ``policy.py`` exploit and explore as pure functions (values, hyperparameters, rng ->
moves); ``space.py`` a search space as the values a member carries; ``local.py`` the run over
one stacked :class:`~metaopt.population.Population`; ``lineage.py`` who copied whom, the
discovered schedule and the figures; ``checkpoint.py`` the population's state, written
atomically every interval, for exact resumes; ``report.py`` the run directory's files.
"""

import sys as _sys
import types as _types

from metaopt.pbt.checkpoint import ResumeMismatch
from metaopt.pbt.lineage import Lineage, discovered
from metaopt.pbt.local import PBT, Best, PBTResult, run_pbt
from metaopt.pbt.policy import Move, choose, explore, sample
from metaopt.pbt.space import MemberSpace, member_space

__all__ = ["PBT", "Best", "Lineage", "MemberSpace", "Move", "PBTResult", "ResumeMismatch",
           "choose", "discovered", "explore", "member_space", "run_pbt", "sample"]


class _CallableModule(_types.ModuleType):
    """``metaopt.pbt(task, ...)`` is :func:`run_pbt`; the package's names stay reachable."""

    def __call__(self, *args, **kwargs):
        return run_pbt(*args, **kwargs)


_sys.modules[__name__].__class__ = _CallableModule
