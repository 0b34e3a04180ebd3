"""Look optimizers up by lower-case name, as experiment YAML files name them.

Optimizers defined outside :mod:`metaopt.optim` (the learned LSTM, a user's own) join through
the ``metaopt.optimizers`` entry-point group of their package's metadata::

    [project.entry-points."metaopt.optimizers"]
    lstm = "learned.optimizer:LSTMOptimizer"

They are imported on the first look-up that needs them, so the core imports nothing above it.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable, Iterable
from importlib.metadata import entry_points
from typing import Any

import torch

from metaopt.optim.hyperparams import HyperInfo, describe, fold

ENTRY_POINTS = "metaopt.optimizers"
Factory = Callable[..., torch.optim.Optimizer]
_REGISTRY: dict[str, Factory] = {}
_PLUGINS: dict[str, Any] = {}  # name -> entry point not loaded yet
_SCANNED: list[bool] = []  # non-empty once the entry points were read


def register(name: str, cls: Factory) -> Factory:
    """Make ``cls`` (a class or a factory ``(params, **hparams)``) available as
    ``create(name, ...)``; returns ``cls``. Re-registering a name replaces it."""
    _REGISTRY[name.lower()] = cls
    return cls


def _discover() -> None:
    """Note the entry points of installed plugins (once; :func:`rescan` looks again)."""
    if _SCANNED:
        return
    _SCANNED.append(True)
    for ep in entry_points(group=ENTRY_POINTS):
        if ep.name.lower() not in _REGISTRY:
            _PLUGINS[ep.name.lower()] = ep


def rescan() -> None:
    """Look for plugins again (after installing one in a running process)."""
    _PLUGINS.clear()
    _SCANNED.clear()
    _discover()


def _known() -> list[str]:
    return sorted({*_REGISTRY, *_PLUGINS})


def names() -> list[str]:
    """Registered optimizer names (plugins included), sorted."""
    _discover()
    return _known()


def lookup(name: str) -> Factory:
    """The optimizer class registered as ``name`` (case-insensitive); ValueError otherwise."""
    _discover()
    key = str(name).lower()
    if key not in _REGISTRY and key in _PLUGINS:
        register(key, _PLUGINS.pop(key).load())
    if key not in _REGISTRY:
        known = _known()
        close = difflib.get_close_matches(key, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown optimizer {name!r}{hint}; expected one of {', '.join(known)}")
    return _REGISTRY[key]


def create(name: str, params: Iterable, **hparams: Any) -> torch.optim.Optimizer:
    """Build the optimizer registered as ``name`` over ``params`` with ``hparams``.

    Flat names of tuple elements (``beta1``/``beta2``, ``eps1``/``eps2``, as searches name
    them) are folded into the class's own keyword with its own defaults for the rest; the
    other keywords are the class's own.
    """
    cls = lookup(name)
    try:
        return cls(params, **fold(cls, hparams))
    except TypeError as err:
        raise ValueError(f"optimizer {name!r}: {err}") from None


def hyperparameters(name: str, **options: Any) -> dict[str, HyperInfo]:
    """The tensor hyperparameters of optimizer ``name`` by flat name, each with the class's
    default, its allowed range and a log-scale hint: what search spaces are checked against.
    ``options`` are constructor options that change the set (Lookahead's ``base``)."""
    return dict(_hyperparameters(name.lower(), tuple(sorted(options.items()))))


@functools.cache
def _hyperparameters(name: str, options: tuple) -> dict[str, HyperInfo]:
    probe = torch.zeros(2, 2, requires_grad=True)
    return describe(create(name, [probe], **dict(options)).param_groups[0])
