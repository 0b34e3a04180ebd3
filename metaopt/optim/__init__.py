"""metaopt's optimizer core: torch.optim-compatible optimizers with tensor hyperparameters.

Every class accepts torch's keyword arguments (same defaults) and follows torch's trajectory;
hyperparameters are 0-d tensors, or ``[P]`` tensors for a population (``population=P``).
"""

from metaopt.optim.adabound import AdaBound
from metaopt.optim.adadelta import Adadelta
from metaopt.optim.adafactor import Adafactor
from metaopt.optim.adagrad import Adagrad
from metaopt.optim.adam import Adam, AdamW
from metaopt.optim.adamax import Adamax
from metaopt.optim.composite import Composite
from metaopt.optim.groups import muon_groups, weight_decay_groups
from metaopt.optim.lamb import LAMB
from metaopt.optim.lion import Lion
from metaopt.optim.lookahead import Lookahead, create_lookahead
from metaopt.optim.muon import Muon
from metaopt.optim.nadam import NAdam
from metaopt.optim.optimizer import MetaOptimizer
from metaopt.optim.radam import RAdam
from metaopt.optim.registry import create, factory, hyperparameters, lookup, names, register
from metaopt.optim.rmsprop import RMSprop
from metaopt.optim.sgd import SGD

for _cls in (SGD, Adagrad, RMSprop, Adam, AdamW, Adamax, NAdam, RAdam, Adadelta, Adafactor,
             Muon):
    register(_cls.__name__.lower(), _cls)
for _cls in (AdaBound, LAMB, Lion):
    register(_cls.__name__.lower(), _cls)
register("lookahead", create_lookahead)

__all__ = [
    "SGD", "Adagrad", "RMSprop", "Adam", "AdamW", "Adamax", "NAdam", "RAdam", "Adadelta",
    "Adafactor", "Muon", "Composite", "MetaOptimizer", "create", "factory", "hyperparameters",
    "lookup", "names", "register",
    "muon_groups", "weight_decay_groups",
    "AdaBound", "LAMB", "Lion", "Lookahead",
]
