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
from metaopt.optim.dadapt import DAdaptAdam, DAdaptSGD
from metaopt.optim.groups import muon_groups, weight_decay_groups
from metaopt.optim.kfac import KFAC
from metaopt.optim.lamb import LAMB
from metaopt.optim.lbfgs import LBFGS
from metaopt.optim.lion import Lion
from metaopt.optim.lookahead import Lookahead, create_lookahead
from metaopt.optim.modes import eval_mode, evaluating, train_mode
from metaopt.optim.muon import Muon
from metaopt.optim.nadam import NAdam
from metaopt.optim.natural_gradient import NaturalGradient
from metaopt.optim.newton import HessianFree, Newton
from metaopt.optim.optimizer import MetaOptimizer
from metaopt.optim.prodigy import Prodigy
from metaopt.optim.radam import RAdam
from metaopt.optim.registry import (
    create,
    factory,
    hyperparameters,
    lookup,
    names,
    register,
    schedule_free,
)
from metaopt.optim.rmsprop import RMSprop
from metaopt.optim.schedulefree import AdamWScheduleFree, SGDScheduleFree
from metaopt.optim.sgd import SGD
from metaopt.optim.shampoo import Shampoo
from metaopt.optim.soap import SOAP
from metaopt.optim.state_bytes import state_bytes

for _cls in (SGD, Adagrad, RMSprop, Adam, AdamW, Adamax, NAdam, RAdam, Adadelta, Adafactor,
             Muon):
    register(_cls.__name__.lower(), _cls)
for _cls in (AdaBound, LAMB, Lion):
    register(_cls.__name__.lower(), _cls)
register("lookahead", create_lookahead)
# learning-rate-free: Prodigy, D-Adaptation (lr a multiplier around 1.0) and Schedule-Free
# (its averaging replaces the schedule: never a decaying one, see registry.schedule_free)
for _name, _cls in (("prodigy", Prodigy), ("dadapt_adam", DAdaptAdam), ("dadapt_sgd", DAdaptSGD),
                    ("schedulefree_adamw", AdamWScheduleFree),
                    ("schedulefree_sgd", SGDScheduleFree)):
    register(_name, _cls)
# second-order and curvature methods (L-BFGS, Newton and Hessian-free need closures: the
# trainers step their members one by one; Shampoo and SOAP stack populations)
for _name, _cls in (("lbfgs", LBFGS), ("newton", Newton), ("hessian_free", HessianFree),
                    ("shampoo", Shampoo), ("soap", SOAP), ("kfac", KFAC),
                    ("natural_gradient", NaturalGradient)):
    register(_name, _cls)

__all__ = [
    "SGD", "Adagrad", "RMSprop", "Adam", "AdamW", "Adamax", "NAdam", "RAdam", "Adadelta",
    "Adafactor", "Muon", "Composite", "MetaOptimizer", "create", "factory", "hyperparameters",
    "lookup", "names", "register",
    "muon_groups", "weight_decay_groups",
    "AdaBound", "LAMB", "Lion", "Lookahead",
    "Prodigy", "DAdaptAdam", "DAdaptSGD", "AdamWScheduleFree", "SGDScheduleFree",
    "schedule_free", "evaluating", "eval_mode", "train_mode",
    "LBFGS", "Newton", "HessianFree", "Shampoo", "SOAP", "KFAC", "NaturalGradient",
    "state_bytes",
]
