"""Schedule search spaces: a :mod:`metaopt.schedules` spec whose values may be searched.

A schedule space file is a spec (``name:`` and the family's parameters) where any value may be
a range or ``choices`` (see :mod:`metaopt.search.params`); plain values are fixed. Three
conventions keep a space independent of the run it is used in:

- ``<key>_frac``: a length as a fraction of the run; resolved to ``round(frac * steps)`` steps
  (at least 1 when the fraction is > 0), so one file fits runs of any length.
- ``<key>_rel``: a value relative to the optimizer's lr (``eta_min_rel: 0.01`` is 1% of the
  trial's lr), so a floor never lands above a searched lr.
- A length the family requires and the space leaves out (cosine ``T_max``, one_cycle
  ``total_steps``, wsd ``stable_steps``) is the rest of the run. In a ``sequential`` space
  without ``milestones`` each child but the last runs for its own length (``total_iters``,
  ``T_max``, ...), and the last one gets what remains: warm-up then cosine needs no step count.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metaopt import schedules
from metaopt.experiment import ExperimentError, as_number
from metaopt.search.params import Fixed, Param, find, is_number, parse_param, read

FOLDER = "search_spaces/schedules"
# The length a schedule covers, for chaining a sequential's children; wsd's is the sum.
LENGTH = {"linear_warmup": "total_iters", "constant": "total_iters",
          "polynomial": "total_iters", "cosine": "T_max", "one_cycle": "total_steps"}
# Required lengths that default to the rest of the run (wsd's stable phase: after the others).
REST = {"cosine": "T_max", "one_cycle": "total_steps", "wsd": "stable_steps"}
Pick = Callable[[str, Param], Any]


@dataclass(frozen=True)
class ScheduleSpace:
    """A schedule family with its parameters (searched or :class:`Fixed`); ``label`` prefixes
    the Optuna names (``schedule.eta_min_rel``, ``schedule.cosine.eta_min_rel`` for a
    sequential's child)."""

    name: str
    params: dict[str, Param]
    children: tuple[ScheduleSpace, ...] = ()
    label: str = "schedule"


def load_schedule_space(spec: str | Mapping[str, Any], *, file: str | Path = "<search>",
                        key: str = "search.schedule") -> ScheduleSpace:
    """A schedule space from a file (a bare name is ``search_spaces/schedules/<name>.yaml``)
    or an inline mapping, checked by building the specs at its bounds with ``schedules.create``.
    Errors name the space file and the key in it, or the experiment file and ``key.<param>``."""
    file = str(file)
    if isinstance(spec, str):
        path = find(spec, FOLDER, file, key)
        raw, where, prefix = read(path), str(path), ""
    elif isinstance(spec, Mapping):
        raw, where, prefix = as_number(dict(spec)), file, f"{key}."
    else:
        raise ExperimentError(file, key, "a schedule space file or an inline mapping", spec)
    space = _parse(raw, where, prefix, "schedule")
    for corner in ("low", "high"):
        try:
            schedules.create(resolve(space, _corner(corner), steps=1000, lr=1e-2))
        except ValueError as err:
            raise ExperimentError(where, prefix.rstrip(".") or "(schedule)",
                                  f"a valid schedule space ({err})") from None
    return space


def _parse(raw: Mapping[str, Any], file: str, prefix: str, label: str) -> ScheduleSpace:
    name = raw.get("name")
    allowed = [n for n in schedules.names() if n != "reduce_on_plateau"]  # not a function of k
    if name not in allowed:
        raise ExperimentError(file, f"{prefix}name", f"a schedule family, one of "
                              f"{', '.join(allowed)}", name)
    params = {k: parse_param(v, file, f"{prefix}{k}") for k, v in raw.items()
              if k not in ("name", "schedules")}
    children: tuple[ScheduleSpace, ...] = ()
    if name == "sequential":
        kids = raw.get("schedules")
        if not isinstance(kids, list) or not kids or not all(isinstance(c, Mapping)
                                                             for c in kids):
            raise ExperimentError(file, f"{prefix}schedules", "a non-empty list of schedule "
                                  "spaces", kids)
        names = [c.get("name") for c in kids]
        tags = [n if names.count(n) == 1 else str(i) for i, n in enumerate(names)]
        children = tuple(_parse(c, file, f"{prefix}schedules.{i}.", f"{label}.{tag}")
                         for i, (c, tag) in enumerate(zip(kids, tags)))
    return ScheduleSpace(name, params, children, label)


def _corner(which: str) -> Pick:
    """Every parameter at its low (or high) end, the first (or last) choice."""
    def pick(name: str, p: Param) -> Any:
        if isinstance(p, Fixed):
            return p.value
        if hasattr(p, "choices"):
            return p.choices[0 if which == "low" else -1]
        return getattr(p, which)
    return pick


def resolve(space: ScheduleSpace, pick: Pick, *, steps: int | None, lr: float | None
            ) -> dict[str, Any]:
    """The ``schedules.create`` spec for one choice of every parameter (``pick(optuna name,
    param)``): ``_frac`` lengths in steps, ``_rel`` values times ``lr``, missing lengths the
    rest of the run. ValueError when a length needs ``steps`` and none was given."""
    return _resolve(space, pick, steps, lr, rest=steps)


def _resolve(space: ScheduleSpace, pick: Pick, steps: int | None, lr: float | None,
             rest: int | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": space.name}
    for key, p in space.params.items():
        value = pick(f"{space.label}.{key}", p)
        if key.endswith("_frac"):
            spec[key[:-5]] = _steps(value, steps, space.label, key)
        elif key.endswith("_rel"):
            if lr is None:
                raise ValueError(f"{space.label}.{key}: the optimizer has no lr to scale")
            spec[key[:-4]] = value * lr
        else:
            spec[key] = value
    if space.children:
        _chain(space, spec, pick, steps, lr, rest)
    elif space.name in REST and REST[space.name] not in spec:
        if rest is None:
            raise ValueError(f"{space.label}: {REST[space.name]} is left to the run length; "
                             f"give steps (or set it in the space)")
        taken = spec.get("warmup_steps", 0) + spec.get("decay_steps", 0) if space.name == (
            "wsd") else 0
        spec[REST[space.name]] = max(rest - taken, 0 if space.name == "wsd" else 1)
    return spec


def _chain(space: ScheduleSpace, spec: dict[str, Any], pick: Pick, steps: int | None,
           lr: float | None, rest: int | None) -> None:
    """A sequential's children; milestones from their lengths when the space gives none."""
    first = [_resolve(c, pick, steps, lr, rest=None) for c in space.children[:-1]]
    if "milestones" not in spec:
        marks, at = [], 0
        for child in first:
            at += _length(child, space.label)
            marks.append(at)
        spec["milestones"] = marks
    last_start = spec["milestones"][-1] if spec["milestones"] else 0
    remaining = None if rest is None else max(rest - int(last_start), 1)
    spec["schedules"] = [*first, _resolve(space.children[-1], pick, steps, lr, remaining)]


def _length(child: Mapping[str, Any], label: str) -> int:
    if child["name"] == "wsd":
        keys = ["warmup_steps", "stable_steps", "decay_steps"]
    elif child["name"] in LENGTH:
        keys = [LENGTH[child["name"]]]
    else:
        raise ValueError(f"{label}: a {child['name']} schedule has no length to chain; give "
                         f"milestones")
    missing = [k for k in keys if k not in child and k != "warmup_steps"]
    if missing:
        raise ValueError(f"{label}: {child['name']} needs {missing[0]} (or {missing[0]}_frac) "
                         f"to be followed by the next schedule")
    return int(sum(child.get(k, 0) for k in keys))


def _steps(frac: Any, steps: int | None, label: str, key: str) -> int:
    if steps is None:
        raise ValueError(f"{label}.{key}: a fraction of the run needs steps")
    if not is_number(frac) or frac < 0:
        raise ValueError(f"{label}.{key}: expected a fraction >= 0, got {frac!r}")
    return max(1, round(frac * steps)) if frac > 0 else 0


def shape(spec: Mapping[str, Any]) -> tuple:
    """What of a resolved spec cannot be a per-member tensor: the family names and the
    non-numeric values (wsd's ``decay``, one_cycle's ``anneal_strategy``)."""
    kept = tuple((k, v) for k, v in sorted(spec.items())
                 if k not in ("name", "schedules", "milestones") and not is_number(v))
    return (spec["name"], kept, tuple(shape(c) for c in spec.get("schedules", ())))


def describe_schedule(space: ScheduleSpace) -> list[str]:
    """One line per schedule and per parameter, by Optuna name."""
    lines = [f"{space.label}: {space.name}"]
    lines += [f"{space.label}.{k}: {p.text()}" for k, p in space.params.items()]
    for child in space.children:
        lines += describe_schedule(child)
    return lines
