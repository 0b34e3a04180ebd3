"""metaopt: choose, tune, schedule and learn PyTorch optimizers.

The optimizer core lives in :mod:`metaopt.optim`; every numeric hyperparameter is a tensor, so
schedules, searches and populations change values by writing into them.
"""

from metaopt import optim

__all__ = ["optim"]
__version__ = "0.1.0"
