"""Tasks: the workloads metaopt trains, searches and selects optimizers on.

A :class:`Task` bundles ``model()``, ``loss(module, batch)``, ``data(generator)``,
``evaluate(module)`` and a default budget ``steps``. Built-ins (all small, no downloads) are
listed by :func:`names` and built by :func:`get`, which also imports user tasks given as
``"package.module:attribute"``.
"""

from metaopt.tasks.registry import get, names
from metaopt.tasks.task import Batch, Task, TrainStep, module_device

__all__ = ["Batch", "Task", "TrainStep", "get", "module_device", "names"]
