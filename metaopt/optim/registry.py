"""Look optimizers up by lower-case name, as experiment YAML files name them."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

import torch

_REGISTRY: dict[str, type[torch.optim.Optimizer]] = {}


def register(name: str, cls: type[torch.optim.Optimizer]) -> type[torch.optim.Optimizer]:
    """Make ``cls`` available as ``create(name, ...)``; returns ``cls`` (usable as a decorator
    helper). Re-registering a name replaces it."""
    _REGISTRY[name.lower()] = cls
    return cls


def names() -> list[str]:
    """Registered optimizer names, sorted."""
    _load_plugins()
    return sorted(_REGISTRY)


def lookup(name: str) -> type[torch.optim.Optimizer]:
    """The optimizer class registered as ``name`` (case-insensitive); ValueError otherwise."""
    _load_plugins()
    key = str(name).lower()
    if key not in _REGISTRY:
        close = difflib.get_close_matches(key, _REGISTRY, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown optimizer {name!r}{hint}; expected one of "
                         f"{', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[key]


def create(name: str, params: Iterable, **hparams: Any) -> torch.optim.Optimizer:
    """Build the optimizer registered as ``name`` over ``params`` with ``hparams``.

    ``beta1``/``beta2`` (how searches name the elements of ``betas``) are folded into
    ``betas``; the other keywords are the class's own.
    """
    cls = lookup(name)
    hparams = fold_betas(hparams)
    try:
        return cls(params, **hparams)
    except TypeError as err:
        raise ValueError(f"optimizer {name!r}: {err}") from None


def fold_betas(hparams: dict[str, Any]) -> dict[str, Any]:
    """``{"beta1": a, "beta2": b}`` -> ``{"betas": (a, b)}`` (defaults 0.9 / 0.999)."""
    if "beta1" not in hparams and "beta2" not in hparams:
        return dict(hparams)
    out = {k: v for k, v in hparams.items() if k not in ("beta1", "beta2")}
    default1, default2 = out.pop("betas", (0.9, 0.999))
    out["betas"] = (hparams.get("beta1", default1), hparams.get("beta2", default2))
    return out


def _load_plugins() -> None:
    """Optimizers defined outside metaopt.optim (the learned LSTM) register on import."""
    if "lstm" not in _REGISTRY:
        try:
            import learned  # noqa: F401  (registers "lstm" when it exists)
        except ImportError:
            pass
