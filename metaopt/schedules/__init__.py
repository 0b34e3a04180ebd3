"""Schedules as pure functions of the step.

``create({"name": "cosine", "T_max": 100, "base_lr": 3e-4})`` returns a :class:`Schedule` ``s``;
``s(k)`` is the value torch's matching ``lr_scheduler`` gives after ``k`` calls of
``scheduler.step()`` (``k = 0`` is the value the first optimizer step uses). Values are computed
in closed form, so ``k`` may be a Python int, a 0-d tensor or a ``[P]`` tensor of per-member
steps, and any numeric parameter may be a ``[P]`` tensor (a different period or warm-up length
per member); everything broadcasts. The result is a float64 tensor when anything is a tensor,
else a Python float. The tensor path never reads a value back into Python (``torch.where``, no
``.item()``), so it runs eagerly or under ``torch.compile``.

A schedule returns absolute values and can drive any tensor hyperparameter (see :func:`apply`).
Where torch takes the starting value from the optimizer, the spec takes ``base_lr``: it defaults
to 1.0 (the schedule is then the multiplier torch applies), except in ``cyclic``, where torch
requires it too. ``one_cycle`` takes no ``base_lr`` (torch derives it from ``max_lr``).

Momentum / beta1 cycling: ``cyclic`` and ``one_cycle`` accept ``target="momentum"``, which gives
the momentum torch's CyclicLR / OneCycleLR write into ``group["momentum"]`` (or ``betas[0]``)
instead of the lr. Build one schedule per hyperparameter from the same spec::

    lr = create(spec)
    momentum = create({**spec, "target": "momentum"})

``piecewise`` (``values``, ``milestones``: ``values[i]`` from milestone ``i - 1`` on) holds
absolute values by step: the schedules population-based training discovers.

``sequential`` children inherit the parent's ``base_lr`` unless they set their own (torch's
sub-schedulers all share the optimizer's initial lr). ``reduce_on_plateau`` depends on observed
losses, not on the step, so it is a small stateful object (:class:`ReduceOnPlateau`).

Layout: ``families.py`` the closed forms, ``registry.py`` names, validation and
:class:`Schedule`, ``plateau.py`` the stateful one, ``hyperparams.py`` :func:`apply`.
"""

from metaopt.schedules.hyperparams import apply
from metaopt.schedules.plateau import ReduceOnPlateau
from metaopt.schedules.registry import Schedule, Step, create, drivers, names, with_base

__all__ = ["ReduceOnPlateau", "Schedule", "Step", "apply", "create", "drivers", "names",
           "with_base"]
