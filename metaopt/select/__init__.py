"""AutoML selection: ``metaopt.select(task, budget=None, candidates=None)`` picks the best
optimizer, hyperparameters and schedule for a task within a budget of gradient evaluations.

Layout: ``portfolio.py`` the candidates, ``features.py`` a task's meta-features, ``store.py``
the results store and warm starts, ``plan.py`` the budget's rounds, ``selector.py`` the run,
``report.py`` the ranking table and figures.
"""

import sys as _sys
import types as _types

from metaopt.select.plan import BudgetTooSmall
from metaopt.select.portfolio import Candidate, default_portfolio, known, resolve
from metaopt.select.selector import Best, Entry, Ranking, Selection, SelectionMismatch, select

__all__ = ["Best", "BudgetTooSmall", "Candidate", "Entry", "Ranking", "Selection",
           "SelectionMismatch", "default_portfolio", "known", "resolve", "select"]


class _CallableModule(_types.ModuleType):
    def __call__(self, *args, **kwargs):
        return select(*args, **kwargs)


_sys.modules[__name__].__class__ = _CallableModule
