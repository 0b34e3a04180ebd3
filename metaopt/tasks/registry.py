"""Finding tasks by name: the built-in suite, or ``"package.module:attribute"`` for a user task.

Built-ins are imported lazily, so ``import metaopt.tasks`` stays cheap (no scikit-learn).
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

from metaopt.tasks.task import Task

# name -> "module:factory", in order of increasing complexity
BUILTINS: dict[str, str] = {
    "quadratic": "metaopt.tasks.quadratic:quadratic",
    "rosenbrock": "metaopt.tasks.rosenbrock:rosenbrock",
    "logistic_breast_cancer": "metaopt.tasks.logistic:logistic_breast_cancer",
    "ill_conditioned_regression": "metaopt.tasks.ill_conditioned:ill_conditioned_regression",
    "digits_mlp": "metaopt.tasks.digits_mlp:digits_mlp",
    "digits_mlp_sigmoid": "metaopt.tasks.digits_mlp:digits_mlp_sigmoid",
    "digits_cnn": "metaopt.tasks.digits_cnn:digits_cnn",
    "sequence_gru": "metaopt.tasks.sequence_gru:sequence_gru",
    "transformer_copy": "metaopt.tasks.transformer_copy:transformer_copy",
    "gan_mixture": "metaopt.tasks.gan_mixture:gan_mixture",
    "policy_gradient": "metaopt.tasks.policy_gradient:policy_gradient",
}


def names() -> list[str]:
    """Names of the built-in tasks, simplest first."""
    return list(BUILTINS)


def _load(spec: str) -> Any:
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"task reference {spec!r} must look like 'package.module:attribute'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"cannot import task {spec!r}: {err}") from err
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as err:
            raise ValueError(f"cannot import task {spec!r}: no attribute {part!r}") from err
    return obj


def get(name: str, **kwargs: Any) -> Task:
    """A fresh :class:`Task`: a built-in by name (``kwargs`` go to its factory, e.g.
    ``get("quadratic", seed=3)``), or ``"package.module:attribute"`` naming a user ``Task`` or a
    factory returning one. Raises ``ValueError`` for an unknown name."""
    if name in BUILTINS:
        obj = _load(BUILTINS[name])
    elif ":" in name:
        obj = _load(name)
    else:
        raise ValueError(
            f"unknown task {name!r}; built-in tasks: {', '.join(BUILTINS)} "
            "(or 'package.module:attribute' for your own)"
        )
    if isinstance(obj, Task):
        if kwargs:
            raise TypeError(f"task {name!r} is a Task object, not a factory: it takes no arguments")
        return dataclasses.replace(obj, default_hparams=dict(obj.default_hparams))
    if callable(obj):
        task = obj(**kwargs)
        if isinstance(task, Task):
            return task
    raise TypeError(f"{name!r} is neither a Task nor a factory returning one (got {type(obj)!r})")
