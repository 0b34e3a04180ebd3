"""Look optimizers up by lower-case name, as experiment YAML files name them. Optimizers from
other packages (the learned LSTM, a user's own) join through the ``metaopt.optimizers``
entry-point group (``lstm = "learned.optimizer:LSTMOptimizer"`` in pyproject.toml) and are
imported on the first look-up that needs them: the core imports nothing above it."""

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


def register(name: str, cls: Factory) -> Factory:
    """Make ``cls`` (a class or a factory ``(params, **hparams)``) available as
    ``create(name, ...)``; returns ``cls``. Re-registering a name replaces it."""
    _REGISTRY[name.lower()] = cls
    return cls


def _plugins() -> dict[str, Any]:
    """Installed plugins' entry points by lower-case name (read afresh: cheap, and a plugin
    installed while the process runs is found)."""
    return {ep.name.lower(): ep for ep in entry_points(group=ENTRY_POINTS)}


def names() -> list[str]:
    """Registered optimizer names (plugins included), sorted."""
    return sorted({*_REGISTRY, *_plugins()})


def lookup(name: str) -> Factory:
    """The optimizer class registered as ``name`` (case-insensitive); ValueError otherwise."""
    key = str(name).lower()
    if key not in _REGISTRY and key in (plugins := _plugins()):
        register(key, plugins[key].load())
    if key not in _REGISTRY:
        known = names()
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


def schedule_free(optimizer: str | Factory) -> bool:
    """Whether optimizer ``optimizer`` (a registry name or a class) must never be given a
    decaying schedule: Schedule-Free methods, whose weight averaging replaces the schedule
    (class attribute ``schedule_free = True``). Constant schedules and warm-up are fine."""
    cls = lookup(optimizer) if isinstance(optimizer, str) else optimizer
    return bool(getattr(cls, "schedule_free", False))


def factory(optimizer: str | Factory) -> Factory:
    """A registry name or a factory ``(params, **hparams) -> optimizer``, as a factory (an
    unknown name fails here, before any work)."""
    if callable(optimizer):
        return optimizer
    lookup(optimizer)
    return functools.partial(create, optimizer)


@functools.cache
def hyperparameters(name: str, **options: Any) -> dict[str, HyperInfo]:
    """The tensor hyperparameters of optimizer ``name`` by flat name, each with the class's
    default, its allowed range and a log-scale hint: what search spaces are checked against
    (cached: don't modify the dict). ``options`` are constructor options that change the set
    (Lookahead's ``base``)."""
    probe = torch.zeros(2, 2, requires_grad=True)
    return describe(create(name, [probe], **options).param_groups[0])
