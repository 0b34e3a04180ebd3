"""Schedule specs: the registry of names, validation, and the :class:`Schedule` object."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from metaopt.schedules import families as F
from metaopt.schedules.families import F64, to64
from metaopt.schedules.plateau import ReduceOnPlateau

Step = int | float | Tensor

_POSITIVE = (lambda v: v > 0, "> 0")
_NONNEG = (lambda v: v >= 0, ">= 0")
_MOMENTUM = {"cycle_momentum": True, "target": "lr"}
_MOMENTUM_CHOICES = {"cycle_momentum": (True, False), "target": ("lr", "momentum")}


@dataclass(frozen=True)
class _Family:
    fn: Callable[..., Any]
    required: tuple[str, ...]
    defaults: Mapping[str, Any]
    choices: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    checks: Mapping[str, tuple[Callable[[Tensor], Tensor], str]] = field(default_factory=dict)

    @property
    def keys(self) -> tuple[str, ...]:
        return (*self.required, *self.defaults)


_FAMILIES: dict[str, _Family] = {
    "step": _Family(F.step, ("step_size",), {"gamma": 0.1, "base_lr": 1.0},
                    checks={"step_size": _POSITIVE}),
    "multistep": _Family(F.multistep, ("milestones",), {"gamma": 0.1, "base_lr": 1.0}),
    "exponential": _Family(F.exponential, ("gamma",), {"base_lr": 1.0}),
    "cosine": _Family(F.cosine, ("T_max",), {"eta_min": 0.0, "base_lr": 1.0},
                      checks={"T_max": _POSITIVE}),
    "cosine_restarts": _Family(
        F.cosine_restarts, ("T_0",), {"T_mult": 1, "eta_min": 0.0, "base_lr": 1.0},
        checks={"T_0": _POSITIVE, "T_mult": (lambda v: v >= 1, ">= 1")}),
    "linear_warmup": _Family(
        F.linear_warmup, (),
        {"start_factor": 1.0 / 3, "end_factor": 1.0, "total_iters": 5, "base_lr": 1.0},
        checks={"total_iters": _NONNEG}),
    "constant": _Family(F.constant, (), {"factor": 1.0 / 3, "total_iters": 5, "base_lr": 1.0},
                        checks={"total_iters": _NONNEG}),
    "polynomial": _Family(F.polynomial, (), {"total_iters": 5, "power": 1.0, "base_lr": 1.0},
                          checks={"total_iters": _NONNEG}),
    "cyclic": _Family(
        F.cyclic, ("base_lr", "max_lr"),
        {"step_size_up": 2000, "step_size_down": None, "mode": "triangular", "gamma": 1.0,
         "base_momentum": 0.8, "max_momentum": 0.9, **_MOMENTUM},
        choices={"mode": ("triangular", "triangular2", "exp_range"), **_MOMENTUM_CHOICES},
        checks={"step_size_up": _POSITIVE, "step_size_down": _NONNEG}),
    "one_cycle": _Family(
        F.one_cycle, ("max_lr", "total_steps"),
        {"pct_start": 0.3, "anneal_strategy": "cos", "div_factor": 25.0,
         "final_div_factor": 1e4, "three_phase": False, "base_momentum": 0.85,
         "max_momentum": 0.95, **_MOMENTUM},
        choices={"anneal_strategy": ("cos", "linear"), "three_phase": (True, False),
                 **_MOMENTUM_CHOICES},
        checks={"total_steps": _POSITIVE,
                "pct_start": (lambda v: (v >= 0) & (v <= 1), "between 0 and 1")}),
    "sequential": _Family(F.sequential, ("schedules", "milestones"), {"base_lr": 1.0}),
    "piecewise": _Family(F.piecewise, ("values", "milestones"), {}),
    "wsd": _Family(
        F.wsd, ("stable_steps", "decay_steps"),
        {"warmup_steps": 0, "min_lr": 0.0, "decay": "linear", "base_lr": 1.0},
        choices={"decay": ("linear", "cosine", "sqrt")},
        checks={"warmup_steps": _NONNEG, "stable_steps": _NONNEG, "decay_steps": _NONNEG}),
    "reduce_on_plateau": _Family(
        ReduceOnPlateau, (),  # stateful: create() returns an instance, not a Schedule
        {"mode": "min", "factor": 0.1, "patience": 10, "threshold": 1e-4,
         "threshold_mode": "rel", "cooldown": 0, "min_lr": 0.0, "eps": 1e-8, "base_lr": 1.0},
        choices={"mode": ("min", "max"), "threshold_mode": ("rel", "abs")},
        checks={"factor": (lambda v: v < 1, "< 1")}),
}


def names() -> list[str]:
    """The schedule names :func:`create` accepts."""
    return sorted(_FAMILIES)


def with_base(spec: Mapping[str, Any], base: Any) -> dict[str, Any]:
    """``spec`` with ``base_lr=base`` when its schedule takes a base value and the spec gives
    none: the value comes from the optimizer's hyperparameter, as torch's schedulers take it
    (``base`` may be a ``[P]`` tensor of the members' values)."""
    spec = dict(spec)
    family = _FAMILIES.get(spec.get("name"))
    if family is not None and "base_lr" in family.keys and "base_lr" not in spec:
        spec["base_lr"] = base
    return spec


def drivers(schedule: Any, start: Callable[[str], Any]) -> dict[str, Any]:
    """``{hyperparameter: Schedule | ReduceOnPlateau}`` from what a user gave a trainer: a spec
    dict, a name, a Schedule or a ReduceOnPlateau driving ``lr``, or ``{flat name: one of
    those}``. ``start(key)`` is the hyperparameter's value in the optimizer (a float, or the
    members' ``[P]`` values): a spec without ``base_lr`` starts from it, as torch's do."""
    from metaopt.schedules.plateau import ReduceOnPlateau

    if schedule is None:
        return {}
    single = isinstance(schedule, (str, Schedule, ReduceOnPlateau)) or (
        isinstance(schedule, Mapping) and "name" in schedule)
    out = {}
    for key, spec in ({"lr": schedule} if single else dict(schedule)).items():
        base = start(key)  # an unknown hyperparameter fails here, before any work
        spec = {"name": spec} if isinstance(spec, str) else spec
        if isinstance(spec, Mapping):
            spec = create(with_base(spec, base))
        if not isinstance(spec, (Schedule, ReduceOnPlateau)):
            raise TypeError(f"schedule for {key!r} must be a spec dict, a Schedule or a "
                            f"ReduceOnPlateau, got {spec!r}")
        out[key] = spec
    return out


class Schedule:
    """A schedule ``s(k)``: the value after ``k`` scheduler steps. Build with :func:`create`.

    ``spec`` is the dict it was built from (with ``name``), ready to write back to YAML.
    """

    def __init__(self, spec: dict[str, Any], fn: Callable[..., Tensor], params: dict[str, Any]):
        self.spec, self.name, self._fn, self._params = spec, spec["name"], fn, params
        children = params.get("schedules", [])
        self.has_tensor = any(isinstance(v, Tensor) for v in params.values()) or any(
            c.has_tensor for c in children
        )

    def __call__(self, k: Step) -> Tensor | float:
        device = k.device if isinstance(k, Tensor) else self._device()
        value = self._eval(torch.as_tensor(k, dtype=F64, device=device))
        return value if self.has_tensor or isinstance(k, Tensor) else float(value)

    def _eval(self, k: Tensor) -> Tensor:
        return self._fn(k, **{key: to64(v, k.device) for key, v in self._params.items()})

    def _device(self) -> torch.device | None:
        found = [v.device for v in self._params.values() if isinstance(v, Tensor)]
        found += [c._device() for c in self._params.get("schedules", []) if c.has_tensor]
        return found[0] if found else None

    def __repr__(self) -> str:
        return f"Schedule({self.spec!r})"


def _fail(name: str, message: str) -> ValueError:
    return ValueError(f"schedule '{name}': {message}")


def _number(name: str, key: str, value: Any) -> float | int | Tensor | None:
    if isinstance(value, str):  # YAML reads 1e-5 as a string
        try:
            return float(value)
        except ValueError:
            pass
    if isinstance(value, Tensor) and not value.is_complex() and value.dtype != torch.bool:
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    raise _fail(name, f"parameter '{key}' must be a number or a tensor, got {value!r}")


def _milestones(name: str, value: Any, key: str = "milestones",
                what: str = "steps") -> tuple[float, ...] | Tensor:
    """A sequence of numbers/tensors, or a tensor whose last dim lists the milestones."""
    if isinstance(value, Tensor):
        return value if value.dim() > 0 else value.unsqueeze(0)
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise _fail(name, f"parameter '{key}' must be a list of {what}, got {value!r}")
    items = [_number(name, key, v) for v in value]
    if not any(isinstance(v, Tensor) for v in items):
        return tuple(items)  # type: ignore[arg-type]
    return torch.stack(torch.broadcast_tensors(*[torch.as_tensor(v, dtype=F64) for v in items]),
                       dim=-1)


def _check(name: str, key: str, value: Any, check: tuple[Callable, str]) -> None:
    if value is None:
        return
    ok, expected = check
    if not bool(ok(torch.as_tensor(value, dtype=F64)).all()):
        raise _fail(name, f"parameter '{key}' must be {expected}, got {value!r}")


def create(spec: Mapping[str, Any] | str | Schedule, **params: Any) -> Schedule | ReduceOnPlateau:
    """Build a schedule from ``{"name": ..., **params}`` (or ``create(name, **params)``).

    Raises ``ValueError`` naming the schedule, the key and what was expected for an unknown
    name, an unknown or missing parameter, or a value of the wrong kind.
    """
    if isinstance(spec, Schedule):
        return spec
    spec = {"name": spec, **params} if isinstance(spec, str) else {**spec, **params}
    name = spec.get("name")
    if name not in _FAMILIES:
        close = difflib.get_close_matches(str(name), _FAMILIES, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ValueError(
            f"unknown schedule {name!r} (expected one of {', '.join(names())}){hint}"
        )
    family = _FAMILIES[name]
    given = {key: v for key, v in spec.items() if key != "name"}
    for key in given:
        if key not in family.keys:
            raise _fail(name, f"unknown parameter '{key}' (expected one of "
                              f"{', '.join(family.keys)})")
    for key in family.required:
        if key not in given:
            raise _fail(name, f"missing parameter '{key}' (required: "
                              f"{', '.join(family.required)})")
    values = {**family.defaults, **given}
    for key, value in values.items():
        if key in family.choices:
            if value not in family.choices[key] or type(value) is not type(
                family.choices[key][0]
            ):
                allowed = ", ".join(map(str, family.choices[key]))
                raise _fail(name, f"parameter '{key}' must be one of {allowed}, got {value!r}")
        elif key == "milestones":
            values[key] = _milestones(name, value)
        elif key == "values" and name == "piecewise":
            values[key] = _milestones(name, value, "values", "numbers")
        elif key == "schedules":
            values[key] = _children(name, value, values["base_lr"])
        elif not (value is None and family.defaults.get(key, 0) is None):
            values[key] = _number(name, key, value)
        if key in family.checks:
            _check(name, key, values[key], family.checks[key])
    if values.get("target") == "momentum" and not values["cycle_momentum"]:
        raise _fail(name, "target 'momentum' needs cycle_momentum=True")
    if family.fn is ReduceOnPlateau:
        return ReduceOnPlateau(**values)
    if name == "piecewise":
        _check_piecewise(values["values"], values["milestones"])
    if name == "sequential":
        del values["base_lr"]  # handed to the children
        count = values["milestones"].shape[-1] if isinstance(
            values["milestones"], Tensor) else len(values["milestones"])
        if count != len(values["schedules"]) - 1:
            raise _fail(name, f"parameter 'milestones' must have {len(values['schedules']) - 1} "
                              f"entries (one fewer than schedules), got {count}")
    return Schedule(dict(spec), family.fn, values)


def _check_piecewise(values: Any, milestones: Any) -> None:
    """One value more than milestones; milestones >= 0 and increasing (per member)."""
    def count(v: Any) -> int:
        return v.shape[-1] if isinstance(v, Tensor) else len(v)

    if count(values) == 0:
        raise _fail("piecewise", "parameter 'values' must hold at least one value")
    if count(values) != count(milestones) + 1:
        raise _fail("piecewise", f"parameter 'milestones' must have {count(values) - 1} "
                                 f"entries (one fewer than values), got {count(milestones)}")
    marks = torch.as_tensor(milestones, dtype=F64)
    if count(milestones) and not bool((marks >= 0).all() & (marks.diff(dim=-1) > 0).all()):
        raise _fail("piecewise", f"parameter 'milestones' must be increasing steps >= 0, got "
                                 f"{milestones!r}")


def _children(name: str, specs: Any, base_lr: Any) -> list[Schedule]:
    """Sequential's children; each inherits the parent's ``base_lr`` unless it sets its own."""
    if not isinstance(specs, Sequence) or isinstance(specs, str) or not specs:
        raise _fail(name, f"parameter 'schedules' must be a non-empty list of specs, got {specs!r}")
    out = []
    for i, child in enumerate(specs):
        if isinstance(child, Mapping) and child.get("name") in _FAMILIES:
            if child["name"] == "reduce_on_plateau":
                raise _fail(name, f"schedules[{i}]: reduce_on_plateau is not a function of k")
            if "base_lr" in _FAMILIES[child["name"]].defaults and "base_lr" not in child:
                child = {**child, "base_lr": base_lr}
        elif not isinstance(child, (Mapping, Schedule)):
            raise _fail(name, f"schedules[{i}] must be a spec dict, got {child!r}")
        try:
            out.append(create(child))
        except ValueError as err:
            raise _fail(name, f"schedules[{i}]: {err}") from None
    return out  # type: ignore[return-value]

