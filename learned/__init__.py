"""Learned optimizers: networks trained by meta-gradients to optimize (Andrychowicz et al.
2016), shipped pretrained and registered in metaopt's optimizer registry as ``lstm``."""

from learned.optimizer import LSTMOptimizer
from metaopt import optim as _optim

_optim.register("lstm", LSTMOptimizer)

__all__ = ["LSTMOptimizer"]
