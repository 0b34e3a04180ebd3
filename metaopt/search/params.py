"""Searched parameters and search-space files: the pieces optimizer and schedule spaces share.

A parameter is written in YAML as a range ``{low: 1.0e-5, high: 1.0e-1, log: true}`` (an int
range with ``int: true`` or an integer ``step``), a categorical ``{choices: [true, false]}``,
or a plain value, which is held fixed. Each kind knows how to ask an Optuna trial for a value,
so the code walking a space never branches on the kind.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metaopt.experiment import ExperimentError, as_number, read_yaml

ROOT = Path(__file__).resolve().parents[2]  # the repository root, holding search_spaces/
RANGE_KEYS = ("low", "high", "log", "step", "int")


@dataclass(frozen=True)
class FloatParam:
    """A float in ``[low, high]``, uniform or log-uniform, optionally on a grid of ``step``."""

    low: float
    high: float
    log: bool = False
    step: float | None = None
    option: bool = False  # a constructor option (not a tensor hyperparameter)

    def suggest(self, trial: Any, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, log=self.log, step=self.step)

    def text(self) -> str:
        grid = f" step {self.step:g}" if self.step is not None else ""
        return f"float [{self.low:g}, {self.high:g}]{' log' if self.log else ''}{grid}"


@dataclass(frozen=True)
class IntParam:
    """A whole number in ``[low, high]`` (step counts, Lookahead's k)."""

    low: int
    high: int
    log: bool = False
    step: int = 1
    option: bool = False

    def suggest(self, trial: Any, name: str) -> int:
        return trial.suggest_int(name, self.low, self.high, step=self.step, log=self.log)

    def text(self) -> str:
        grid = f" step {self.step}" if self.step != 1 else ""
        return f"int [{self.low}, {self.high}]{' log' if self.log else ''}{grid}"


@dataclass(frozen=True)
class Categorical:
    """One of ``choices`` (booleans such as ``nesterov``, strings, numbers)."""

    choices: tuple[Any, ...]
    option: bool = False

    def suggest(self, trial: Any, name: str) -> Any:
        return trial.suggest_categorical(name, list(self.choices))

    def text(self) -> str:
        return "choice of " + ", ".join(_show(c) for c in self.choices)


@dataclass(frozen=True)
class Fixed:
    """A value the space sets without searching it (Optuna never sees it)."""

    value: Any
    option: bool = False

    def suggest(self, trial: Any, name: str) -> Any:
        return self.value

    def text(self) -> str:
        return f"fixed {_show(self.value)}"


Param = FloatParam | IntParam | Categorical | Fixed


def _show(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    return f"{value:g}" if isinstance(value, float) else str(value)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(
        value)


def parse_param(raw: Any, file: str, key: str, *, option: bool = False) -> Param:
    """One parameter from its YAML form; ExperimentError naming ``file`` and ``key`` (or the
    offending sub-key, e.g. ``lr.low``) for anything malformed."""
    raw = as_number(raw)
    if not isinstance(raw, Mapping):
        return Fixed(tuple(raw) if isinstance(raw, list) else raw, option)
    for k in raw:
        if k not in (*RANGE_KEYS, "choices"):
            raise ExperimentError(file, f"{key}.{k}", "one of the keys low, high, log, step, "
                                  "int (a range) or choices (unknown key)")
    if "choices" in raw:
        return _categorical(raw, file, key, option)
    return _range(raw, file, key, option)


def _categorical(raw: Mapping[str, Any], file: str, key: str, option: bool) -> Categorical:
    extra = [k for k in raw if k != "choices"]
    if extra:
        raise ExperimentError(file, f"{key}.{extra[0]}", "either choices or a range, not both")
    choices = raw["choices"]
    if not isinstance(choices, list) or not choices:
        raise ExperimentError(file, f"{key}.choices", "a non-empty list", choices)
    for c in choices:
        if not (c is None or isinstance(c, (bool, int, float, str))):
            raise ExperimentError(file, f"{key}.choices", "null, booleans, numbers or strings",
                                  c)
    return Categorical(tuple(choices), option)


def _range(raw: Mapping[str, Any], file: str, key: str, option: bool) -> FloatParam | IntParam:
    for bound in ("low", "high"):
        if not is_number(raw.get(bound)):
            raise ExperimentError(file, f"{key}.{bound}", "a number (a range needs low and "
                                  "high)", raw.get(bound))
    low, high, step = raw["low"], raw["high"], raw.get("step")
    for flag in ("log", "int"):
        if not isinstance(raw.get(flag, False), bool):
            raise ExperimentError(file, f"{key}.{flag}", "true or false", raw[flag])
    log = raw.get("log", False)
    if low > high:
        raise ExperimentError(file, f"{key}.low", f"a value <= high ({high:g})", low)
    if log and low <= 0:
        raise ExperimentError(file, f"{key}.low", "a value > 0 (log: true)", low)
    if step is not None and not (is_number(step) and step > 0):
        raise ExperimentError(file, f"{key}.step", "a positive number", step)
    if log and step is not None:
        raise ExperimentError(file, f"{key}.step", "no step with log: true (Optuna samples "
                              "log ranges continuously)", step)
    whole = raw.get("int", False) or all(isinstance(v, int) for v in (low, high, step))
    if not whole:
        return FloatParam(float(low), float(high), log, None if step is None else float(step),
                          option)
    for sub, v in (("low", low), ("high", high), ("step", step or 1)):
        if not float(v).is_integer():
            raise ExperimentError(file, f"{key}.{sub}", "a whole number (int range)", v)
    return IntParam(int(low), int(high), log, int(step or 1), option)


# -- files --------------------------------------------------------------------------------------
def find(spec: str, folder: str, file: str, key: str) -> Path:
    """The file ``spec`` names: a bare name is ``<folder>/<name>.yaml``; a relative path is
    looked up beside the experiment file, then in the current directory, then in the
    repository root (where the shipped ``search_spaces/`` lives)."""
    path = Path(spec)
    if path.suffix not in (".yaml", ".yml") and len(path.parts) == 1:
        path = Path(folder) / f"{spec}.yaml"
    if path.is_absolute():
        bases: list[Path] = [Path("/")]
    else:
        here = Path(file).parent if file and not file.startswith("<") else None
        bases = list(dict.fromkeys(b.resolve() for b in (here, Path.cwd(), ROOT) if b))
    for base in bases:
        if (base / path).is_file():
            return base / path
    looked = ", ".join(str(b / path) for b in bases)
    raise ExperimentError(file, key, f"a readable search-space file (looked for {looked})",
                          spec)


def read(path: Path) -> dict[str, Any]:
    """A space file's top-level mapping (an empty file is an empty space), numbers parsed."""
    raw = read_yaml(path)
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ExperimentError(path, "(top level)", "a mapping of parameter names", raw)
    return as_number(dict(raw))
