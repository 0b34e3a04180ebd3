"""Search spaces for ``metaopt tune``: which hyperparameters of which optimizers, over what ranges.

A space file (``search_spaces/<optimizer>.yaml``) maps flat hyperparameter names, as
:func:`metaopt.optim.hyperparameters` lists them (``lr``, ``beta1``, ``eps2``, ``lookahead_k``),
and the class's non-tensor constructor options (``nesterov``, ``amsgrad``, ``centered``) to a
range, ``choices`` or a fixed value (:mod:`metaopt.search.params`). Loading checks every name
and every bound against the optimizer's own allowed range, so a bad space fails before the first
trial, as one :class:`~metaopt.experiment.ExperimentError` naming the file and the key.

Several optimizers make ``optimizer`` a categorical with one conditional subspace each.
:func:`suggest` turns one Optuna trial into a :class:`Config` ready for
``metaopt.optim.create`` and ``metaopt.schedules.create``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metaopt import optim
from metaopt.experiment import ExperimentError, as_number
from metaopt.optim.hyperparams import HyperInfo
from metaopt.search.params import Categorical, Fixed, Param, find, parse_param, read
from metaopt.search.schedule_space import (
    ScheduleSpace,
    describe_schedule,
    load_schedule_space,
    resolve,
    shape,
)

FOLDER = "search_spaces"
# Constructor arguments that are plumbing, not something a search should change.
KNOBS = frozenset({"params", "population", "backend", "foreach", "capturable", "differentiable",
                   "fused", "maximize"})


@dataclass(frozen=True)
class Space:
    """``optimizers``: optimizer name -> {flat name -> :data:`Param`}; ``schedule``: an
    optional schedule space searched along with them."""

    optimizers: dict[str, dict[str, Param]]
    schedule: ScheduleSpace | None = None

    def optuna_name(self, optimizer: str, param: str) -> str:
        """The Optuna name of ``optimizer``'s ``param``: the flat name itself, unless another
        optimizer of the space searches the same name with another distribution (Adam's lr
        range is not SGD's); then ``"<optimizer>.<param>"``, so each keeps its own."""
        p = self.optimizers[optimizer][param]
        shared = all(space[param] == p for space in self.optimizers.values()
                     if param in space and not isinstance(space[param], Fixed))
        return param if shared else f"{optimizer}.{param}"


@dataclass(frozen=True)
class Config:
    """One trial's choice. ``hparams`` are flat names for ``optim.create(optimizer, params,
    **hparams)``; ``schedule`` a spec for ``schedules.create`` (or None); ``structure`` the
    hashable part no ``[P]`` tensor can carry (see :func:`suggest`)."""

    optimizer: str
    hparams: dict[str, Any]
    schedule: dict[str, Any] | None
    structure: tuple


def load_space(spec: str | Mapping[str, Any] | None, optimizer: str | list[str], *,
               file: str | Path = "<search>", key: str = "search.space",
               schedule: str | Mapping[str, Any] | None = None,
               schedule_key: str | None = None) -> Space:
    """The space of ``optimizer`` (one name, or a list: a categorical choice).

    ``spec``: a file (a bare name such as ``adamw`` is ``search_spaces/adamw.yaml``; relative
    paths are looked up beside ``file``, the experiment, then in the current directory, then
    the repository root), an inline mapping, or None (each optimizer's own shipped file). For
    a list, a mapping whose keys are optimizer names gives each its own space (file, mapping
    or None); any other spec is shared by all of them. ``schedule`` is a schedule space
    (:func:`~metaopt.search.schedule_space.load_schedule_space`). Errors name ``file`` and
    ``key.<param>`` for inline spaces, the space file and ``<param>`` for files.
    """
    file = str(file)
    names = _optimizers(optimizer, file, _sibling(key, "optimizer"))
    sources = _sources(spec, names, file, key)
    spaces = {n: _optimizer_space(n, *sources[n]) for n in names}
    sched = None if schedule is None else load_schedule_space(
        schedule, file=file, key=schedule_key or _sibling(key, "schedule"))
    return Space(spaces, sched)


def _sibling(key: str, name: str) -> str:
    return ".".join([*key.split(".")[:-1], name])


def _optimizers(optimizer: Any, file: str, key: str) -> list[str]:
    names = [optimizer] if isinstance(optimizer, str) else optimizer
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ExperimentError(file, key, "an optimizer name or a non-empty list of names",
                              optimizer)
    for n in names:
        try:
            optim.lookup(n)
        except ValueError as err:
            raise ExperimentError(file, key, f"a registered optimizer ({err})") from None
    out = [n.lower() for n in names]
    if len(set(out)) != len(out):
        raise ExperimentError(file, key, "each optimizer once", optimizer)
    return out


Source = tuple[dict[str, Any], str, str]  # (raw mapping, file it is in, key prefix there)


def _sources(spec: Any, names: list[str], file: str, key: str) -> dict[str, Source]:
    """Where each optimizer's space comes from."""
    if isinstance(spec, Mapping) and len(names) > 1 and spec and set(spec) <= set(names):
        return {n: _source(spec.get(n), n, file, f"{key}.{n}") for n in names}
    return {n: _source(spec, n, file, key) for n in names}


def _source(spec: Any, name: str, file: str, key: str) -> Source:
    if spec is None or isinstance(spec, str):
        path = find(name if spec is None else spec, FOLDER, file, key)
        return read(path), str(path), ""
    if isinstance(spec, Mapping):
        return as_number(dict(spec)), file, f"{key}."
    raise ExperimentError(file, key, "a search-space file path or an inline mapping", spec)


# -- one optimizer's space ----------------------------------------------------------------
def _optimizer_space(name: str, raw: dict[str, Any], file: str, prefix: str
                     ) -> dict[str, Param]:
    known, options = _known(name, raw, file, prefix)
    out: dict[str, Param] = {}
    for k, v in raw.items():
        where = f"{prefix}{k}"
        if k in known:
            out[k] = parse_param(v, file, where)
            _check_bounds(out[k], known[k], name, file, where)
        elif k in options:
            out[k] = parse_param(v, file, where, option=True)
            _check_option(out[k], options[k], file, where)
        else:
            listed = ", ".join([*known, *sorted(options)])
            raise ExperimentError(file, where, f"a hyperparameter or option of {name} "
                                  f"(one of {listed})", k)
    return out


def _known(name: str, raw: Mapping[str, Any], file: str, prefix: str
           ) -> tuple[dict[str, HyperInfo], dict[str, Any]]:
    """``name``'s tensor hyperparameters and its options ``{option: default}``. A wrapper
    (a factory taking ``base`` and ``**hparams``: Lookahead) has the hyperparameters and options
    its ``base`` has, for every base the space allows."""
    factory = optim.lookup(name)
    if not _is_wrapper(factory):
        infos = optim.hyperparameters(name)
        return infos, _options(factory, infos)
    base = parse_param(raw.get("base", _default(factory, "base")), file, f"{prefix}base")
    bases = base.choices if isinstance(base, Categorical) else (getattr(base, "value", None),)
    variants = []
    for b in bases:
        try:
            infos = optim.hyperparameters(name, base=b)
        except (ValueError, TypeError) as err:
            raise ExperimentError(file, f"{prefix}base", f"a base optimizer ({err})") from None
        variants.append((infos, _options(optim.lookup(b), infos)))
    infos = {k: v for k, v in variants[0][0].items() if all(k in i for i, _ in variants)}
    options = {k: v for k, v in variants[0][1].items() if all(k in o for _, o in variants)}
    return infos, {"base": _default(factory, "base"), **options}


def _is_wrapper(factory: Any) -> bool:
    params = inspect.signature(factory).parameters
    return "base" in params and any(p.kind is p.VAR_KEYWORD for p in params.values())


def _default(factory: Any, name: str) -> Any:
    return inspect.signature(factory).parameters[name].default


def _options(cls: Any, infos: Mapping[str, HyperInfo]) -> dict[str, Any]:
    """Constructor arguments that are neither tensor hyperparameters nor plumbing."""
    tensor = {i.key for i in infos.values()} | set(infos)
    return {n: p.default for n, p in inspect.signature(cls).parameters.items()
            if n not in KNOBS and n not in tensor and p.kind not in (p.VAR_KEYWORD,
                                                                     p.VAR_POSITIONAL)}


def _values(p: Param) -> list[tuple[str, Any]]:
    """(sub-key, value) pairs of a parameter, for checks."""
    if isinstance(p, Fixed):
        return [("", p.value)]
    if isinstance(p, Categorical):
        return [(".choices", c) for c in p.choices]
    return [(".low", p.low), (".high", p.high)]


def _check_bounds(p: Param, info: HyperInfo, name: str, file: str, key: str) -> None:
    for sub, value in _values(p):
        if isinstance(p, Fixed) and value is None and info.default is None:
            continue  # an optional hyperparameter left unset (Adafactor's eps1)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or not info.contains(value):
            raise ExperimentError(file, f"{key}{sub}", f"a value in {info.bounds_text()} "
                                  f"(what {name} allows for {info.name})", value)


def _check_option(p: Param, default: Any, file: str, key: str) -> None:
    if not isinstance(default, bool):
        return
    for sub, value in _values(p):
        if not isinstance(value, bool):
            raise ExperimentError(file, f"{key}{sub}", "true or false", value)


# -- trials -------------------------------------------------------------------------------
def suggest(trial: Any, space: Space, *, steps: int | None = None) -> Config:
    """One configuration from an Optuna trial (a ``FixedTrial`` works too).

    With several optimizers, ``optimizer`` is ``trial.suggest_categorical("optimizer",
    [...])`` and only the chosen one's parameters are suggested, under the names
    :meth:`Space.optuna_name` gives; schedule parameters are ``schedule.<key>``. ``steps``
    (the run length) resolves ``_frac`` lengths. ``structure`` is ``(optimizer, ((option,
    value), ...), schedule shape)``: the non-tensor options (``nesterov``, Lookahead's
    ``base``) and the schedule's families and string choices; trials with equal structure
    differ only in tensor values and can be trained as one stacked population.
    """
    names = list(space.optimizers)
    opt = names[0] if len(names) == 1 else trial.suggest_categorical("optimizer", names)
    params = space.optimizers[opt]
    hparams = {k: p.suggest(trial, space.optuna_name(opt, k)) for k, p in params.items()}
    schedule = None
    if space.schedule is not None:
        schedule = resolve(space.schedule, lambda n, p: p.suggest(trial, n), steps=steps,
                           lr=_lr(opt, hparams))
    options = tuple(sorted((k, _hashable(v)) for k, v in hparams.items() if params[k].option))
    structure = (opt, options, None if schedule is None else shape(schedule))
    return Config(opt, hparams, schedule, structure)


def _lr(optimizer: str, hparams: Mapping[str, Any]) -> float | None:
    """The trial's lr, or the class's default (``_rel`` schedule values scale it)."""
    if "lr" in hparams:
        return float(hparams["lr"])
    wrapper = _is_wrapper(optim.lookup(optimizer)) and "base" in hparams
    infos = optim.hyperparameters(optimizer, **({"base": hparams["base"]} if wrapper else {}))
    return infos["lr"].default if "lr" in infos else None


def _hashable(value: Any) -> Any:
    return tuple(_hashable(v) for v in value) if isinstance(value, (list, tuple)) else value


def describe(space: Space) -> str:
    """One line per parameter (``name: float [low, high] log``), for reports; with several
    optimizers each line is labelled ``<optimizer>.<param>`` whatever its Optuna name."""
    names = list(space.optimizers)
    many = len(names) > 1
    lines = [f"optimizer: {'choice of ' + ', '.join(names) if many else names[0]}"]
    for opt, params in space.optimizers.items():
        lines += [f"{opt + '.' if many else ''}{k}: {p.text()}" for k, p in params.items()]
    if space.schedule is not None:
        lines += describe_schedule(space.schedule)
    return "\n".join(lines)
