"""What a PBT member is made of: a search :class:`~metaopt.search.Space` seen as one flat set of
values a member carries and explore changes (Jaderberg et al. 2017 explore any
hyperparameter; here every tensor hyperparameter of the optimizer and every schedule
parameter).

All members of a PBT population train as one stacked program, so the optimizer's non-tensor
options (``nesterov``, ``amsgrad``, Lookahead's ``base``) are shared: an option the space
searches is held at the class's default (or the first choice when the default is not among
them), and :attr:`MemberSpace.notes` says so. Schedule parameters are named as
:func:`metaopt.search.suggest` names them (``schedule.warmup_frac``,
``schedule.cosine.eta_min_rel``); each member's lr follows its own schedule, built from its
own values (:meth:`MemberSpace.schedule_of`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from metaopt import optim, schedules
from metaopt.search.params import Categorical, Fixed, Param
from metaopt.search.schedule_space import ScheduleSpace, resolve
from metaopt.search.space import Space


@dataclass(frozen=True)
class MemberSpace:
    """``params``: flat name -> :data:`~metaopt.search.params.Param` (optimizer
    hyperparameters, then ``schedule.*``); ``options``: the shared constructor options;
    ``schedule``: the schedule space driving lr, or None."""

    optimizer: str
    params: dict[str, Param]
    options: dict[str, Any]
    schedule: ScheduleSpace | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def searched(self) -> list[str]:
        """The names explore changes (not the fixed ones)."""
        return [n for n, p in self.params.items() if not isinstance(p, Fixed)]

    def optimizer_hparams(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """A member's keyword arguments for the optimizer: options plus its tensor values."""
        out = dict(self.options)
        out.update({k: v for k, v in values.items() if not k.startswith("schedule.")
                    and k in self.params})
        return out

    def tensor_hparams(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The member's values a running population can take in place (no options)."""
        return {k: v for k, v in values.items() if not k.startswith("schedule.")
                and k in self.params and not isinstance(self.params[k], Fixed)}

    def schedule_spec(self, values: Mapping[str, Any], steps: int) -> dict[str, Any] | None:
        """The member's ``schedules.create`` spec (``_frac`` / ``_rel`` resolved)."""
        if self.schedule is None:
            return None

        def pick(name: str, p: Param) -> Any:
            return values[name] if name in values else p.suggest(None, name)

        return resolve(self.schedule, pick, steps=steps, lr=self.lr(values))

    def schedule_of(self, values: Mapping[str, Any], steps: int) -> Callable | None:
        """The member's lr schedule ``s(k)``, starting from its own lr; None without one."""
        spec = self.schedule_spec(values, steps)
        if spec is None:
            return None
        lr = self.lr(values)
        return schedules.drivers(spec, lambda key: lr)["lr"]

    def lr(self, values: Mapping[str, Any]) -> float | None:
        if "lr" in values:
            return float(values["lr"])
        infos = optim.hyperparameters(self.optimizer, **_wrapper_options(self))
        return infos["lr"].default if "lr" in infos else None


def _wrapper_options(space: MemberSpace) -> dict[str, Any]:
    factory = optim.lookup(space.optimizer)
    params = inspect.signature(factory).parameters
    return {"base": space.options["base"]} if "base" in params and "base" in space.options \
        else {}


def member_space(space: Space) -> MemberSpace:
    """The flat member space of a one-optimizer ``space``; ValueError for several."""
    if len(space.optimizers) != 1:
        raise ValueError(f"PBT trains one optimizer (its members are one stacked population); "
                         f"the space has {', '.join(space.optimizers)}")
    (name, given), = space.optimizers.items()
    params: dict[str, Param] = {}
    options: dict[str, Any] = {}
    notes = []
    defaults = _option_defaults(name)
    for key, p in given.items():
        if not p.option:
            params[key] = p
        elif isinstance(p, Fixed):
            options[key] = p.value
        else:
            options[key] = _held(p, defaults.get(key))
            notes.append(f"{key}: an option is shared by a stacked population; PBT holds it "
                         f"at {options[key]!r} (searched: {p.text()})")
    if space.schedule is not None:
        params.update(_schedule_params(space.schedule))
    return MemberSpace(name, params, options, space.schedule, tuple(notes))


def _option_defaults(name: str) -> dict[str, Any]:
    factory = optim.lookup(name)
    return {n: p.default for n, p in inspect.signature(factory).parameters.items()
            if p.default is not inspect.Parameter.empty}


def _held(p: Param, default: Any) -> Any:
    if isinstance(p, Categorical):
        return default if default in p.choices else p.choices[0]
    low, high = p.low, p.high  # a numeric option range
    return default if isinstance(default, (int, float)) and low <= default <= high else low


def _schedule_params(space: ScheduleSpace) -> dict[str, Param]:
    out = {f"{space.label}.{k}": p for k, p in space.params.items() if not isinstance(p, Fixed)}
    for child in space.children:
        out.update(_schedule_params(child))
    return out
