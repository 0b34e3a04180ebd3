"""Learned optimizers: networks trained by meta-gradients to optimize (Andrychowicz et al.
2016), shipped pretrained. ``LSTMOptimizer`` joins metaopt's optimizer registry as ``lstm``
through the ``metaopt.optimizers`` entry point (see pyproject.toml). It is imported on first
use, so reading ``learned.config`` (the meta-training schema) stays light."""

from typing import Any

__all__ = ["LSTMOptimizer"]


def __getattr__(name: str) -> Any:
    if name == "LSTMOptimizer":
        from learned.optimizer import LSTMOptimizer

        return LSTMOptimizer
    raise AttributeError(f"module 'learned' has no attribute {name!r}")
