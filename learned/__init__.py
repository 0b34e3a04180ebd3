"""Learned optimizers: networks trained by meta-gradients to optimize (Andrychowicz et al.
2016), shipped pretrained. ``LSTMOptimizer`` joins metaopt's optimizer registry as ``lstm``
through the ``metaopt.optimizers`` entry point (see pyproject.toml)."""

from learned.optimizer import LSTMOptimizer

__all__ = ["LSTMOptimizer"]
