"""Experiment files: one YAML schema, a common head plus one section per command.

    name: digits-adamw          # run directory runs/<name>/
    task: digits_mlp            # built-in name or "package.module:attribute"
    steps: 300                  # optional; default: the task's
    seed: 0
    train: {optimizer: adamw, hparams: {lr: 3.0e-3}, schedule: {name: cosine, T_max: 300}}
    search: {...}   pbt: {...}   select: {...}   meta_train: {...}

Unknown keys are errors; numbers written ``1e-5`` (which YAML reads as strings) are numbers.
Every problem is reported as one :class:`ExperimentError` naming the file, the key and what
was expected.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from learned.config import META_LOSSES, MODELS, MetaTrainConfig

_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


class ExperimentError(ValueError):
    """A malformed experiment: ``file: key: expected ..., got ...``."""

    def __init__(self, file: str | Path, key: str, expected: str, got: Any = None) -> None:
        got_text = "" if got is None else f", got {got!r}"
        super().__init__(f"{file}: {key}: expected {expected}{got_text}")
        self.file, self.key = str(file), key


def as_number(value: Any) -> Any:
    """YAML's ``1e-5`` is a string; turn numeric strings into floats, leave the rest."""
    if isinstance(value, str) and _FLOAT.match(value.strip()):
        return float(value)
    if isinstance(value, Mapping):
        return {k: as_number(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_number(v) for v in value]
    return value


# -- value checks: (predicate, what was expected) --------------------------------------------
Check = tuple[Callable[[Any], bool], str]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) or (
        isinstance(v, float) and v.is_integer())


STRING: Check = (lambda v: isinstance(v, str) and v != "", "a non-empty string")
POS_INT: Check = (lambda v: _is_int(v) and v > 0, "a positive integer")
NONNEG_INT: Check = (lambda v: _is_int(v) and v >= 0, "a non-negative integer")
INT: Check = (_is_int, "an integer")
NUMBER: Check = (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
                 and math.isfinite(v), "a number")
FRACTION: Check = (lambda v: NUMBER[0](v) and 0 <= v <= 1, "a number in [0, 1]")
BOOL: Check = (lambda v: isinstance(v, bool), "true or false")
MAPPING: Check = (lambda v: isinstance(v, Mapping), "a mapping")
OPT_STRING: Check = (lambda v: v is None or STRING[0](v), "a string or null")
NAMES: Check = (lambda v: STRING[0](v) or (isinstance(v, list) and v != []
                                           and all(STRING[0](x) for x in v)),
                "a name or a non-empty list of names")
LIST: Check = (lambda v: isinstance(v, list), "a list")
POSITIVE: Check = (lambda v: NUMBER[0](v) and v > 0, "a positive number")
NONNEG: Check = (lambda v: NUMBER[0](v) and v >= 0, "a number >= 0")
POS_INTS: Check = (lambda v: isinstance(v, list) and v != [] and all(POS_INT[0](x) for x in v),
                   "a non-empty list of positive integers")
QUANTILE: Check = (lambda v: NUMBER[0](v) and 0 < v <= 0.5, "a number in (0, 0.5]")
FACTORS: Check = (lambda v: isinstance(v, list) and v != [] and all(POSITIVE[0](x) for x in v),
                  "a non-empty list of positive factors")
SPACE: Check = (lambda v: STRING[0](v) or isinstance(v, Mapping),
                "a search-space file path or an inline mapping")


def one_of(*choices: str) -> Check:
    return (lambda v: v in choices, f"one of {', '.join(choices)}")


def per_task(check: Check) -> Check:
    """``check``'s value, or a mapping of task names to such values."""
    ok, what = check
    return (lambda v: ok(v) or isinstance(v, Mapping) and all(ok(x) for x in v.values()),
            f"{what} or a mapping of task names to such values")


def described(check: Check, what: str) -> Check:
    """``check`` with another description of what it expects."""
    return (check[0], what)


@dataclass(frozen=True)
class Key:
    check: Check
    default: Any = None
    required: bool = False


HEAD = {
    "name": Key(STRING, required=True),
    "task": Key(STRING, required=True),
    "steps": Key(POS_INT),
    "seed": Key(INT, 0),
    "storage": Key(OPT_STRING),
    "device": Key(STRING, "cpu"),
}

SECTIONS: dict[str, dict[str, Key]] = {
    "train": {
        "optimizer": Key(STRING, required=True),
        "hparams": Key(MAPPING, {}),
        "schedule": Key(MAPPING),
        "eval_every": Key(POS_INT),
        "landscape": Key(BOOL, True),
    },
    "search": {
        "optimizer": Key(NAMES, required=True),
        "space": Key(SPACE),  # default: each optimizer's search_spaces/<name>.yaml
        "schedule": Key(SPACE),
        "sampler": Key(one_of("tpe", "cmaes", "gp", "random", "auto"), "tpe"),
        "pruner": Key(one_of("hyperband", "median", "none"), "hyperband"),
        "trials": Key(POS_INT, 64),
        "population": Key(POS_INT, 16),
        "eval_every": Key(POS_INT),  # default: steps // 10
    },
    "pbt": {
        "optimizer": Key(STRING),  # default: the search: section's, else the task's default
        "space": Key(SPACE),  # default: search.space (same optimizer), else the shipped one
        "schedule": Key(SPACE),  # a schedule space: each member's lr follows its own schedule
        "population": Key(POS_INT, 16),
        "interval": Key(POS_INT, 25),
        "quantile": Key(QUANTILE, 0.25),
        "resample": Key(FRACTION, 0.25),
        "perturb": Key(FACTORS, (0.8, 1.2)),
        "exploit": Key(one_of("truncation", "tournament", "none"), "truncation"),
        "deterministic": Key(BOOL, False),  # engine choices by rule, not by timing
        "backend": Key(one_of("local", "ray"), "local"),
        "ray_address": Key(OPT_STRING),  # host:port, ray://host:port or auto; null: local
        "storage_path": Key(OPT_STRING),  # Ray's trials and checkpoints (shared storage)
    },
    "select": {
        "candidates": Key(NAMES),  # default: metaopt.select's portfolio
        "budget": Key(POS_INT),  # gradient evaluations; default: 24 full trainings' worth
        "tune": Key(BOOL, True),  # spend what the rounds leave on a short tune of the winner
        "warm_start": Key(BOOL, True),  # from the results store (experiments/results/)
        "store": Key(OPT_STRING),  # another results-store folder
    },
}


# The meta_train: section is learned.config.MetaTrainConfig's fields (its defaults, the one
# set), each with the check of its YAML value; the seed comes from the head.
META_TRAIN_CHECKS: dict[str, Check] = {
    "tasks": NAMES, "model": one_of(*MODELS), "model_args": MAPPING, "unroll": POS_INT,
    "unroll_max": POS_INT, "horizon": POS_INT, "horizon_max": per_task(POS_INT),
    "curriculum": NONNEG_INT, "meta_steps": POS_INT, "meta_lr": POSITIVE,
    "meta_lr_schedule": one_of("constant", "cosine"), "schedule_steps": POS_INT,
    "batch": per_task(POS_INT), "clip": described(NONNEG, "a number >= 0 (0: no clipping)"),
    "balance": BOOL, "second_order": BOOL, "meta_loss": one_of(*META_LOSSES),
    "meta_loss_power": NONNEG, "scale": per_task(NONNEG), "eval_every": POS_INT,
    "eval_seeds": POS_INT, "eval_horizons": POS_INTS,
    "gain_cap": described(POSITIVE, "a positive number (log10)"),
    "checkpoint_every": POS_INT,
    "time_limit": described(POSITIVE, "a positive number of seconds"), "threads": POS_INT,
}


SECTIONS["meta_train"] = {name: Key(check, getattr(MetaTrainConfig(), name))
                          for name, check in META_TRAIN_CHECKS.items()}


@dataclass
class Experiment:
    """A validated experiment: the head's fields plus the sections present."""

    file: str
    name: str
    task: str
    steps: int | None
    seed: int
    storage: str | None
    device: str
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)

    def load_task(self) -> Any:
        """The experiment's task, or an ExperimentError naming the ``task`` key."""
        from metaopt import tasks

        try:
            return tasks.get(self.task)
        except (ValueError, ImportError, AttributeError) as err:
            raise ExperimentError(self.file, "task", "a built-in task or "
                                  "package.module:attribute", f"{self.task} ({err})") from None

    def section(self, command: str) -> dict[str, Any]:
        """The section a command needs; an ExperimentError if the file has none."""
        key = command.replace("-", "_")
        if key not in self.sections:
            raise ExperimentError(self.file, key, f"a '{key}:' section for "
                                                  f"`metaopt {command}`", None)
        return self.sections[key]


def _validate(file: str, where: str, given: Mapping[str, Any], schema: Mapping[str, Key]
              ) -> dict[str, Any]:
    out = {}
    for key in given:
        if key not in schema:
            raise ExperimentError(file, f"{where}{key}", f"one of the keys "
                                  f"{', '.join(schema)} (unknown key)", None)
    for key, spec in schema.items():
        if key not in given or given[key] is None and not spec.required:
            if spec.required:
                raise ExperimentError(file, f"{where}{key}", spec.check[1] + " (required)")
            out[key] = spec.default
            continue
        value = given[key]
        ok, expected = spec.check
        if not ok(value):
            raise ExperimentError(file, f"{where}{key}", expected, value)
        out[key] = int(value) if spec.check in (POS_INT, NONNEG_INT, INT) else value
    return out


def read_yaml(path: str | Path) -> Any:
    """A YAML file's contents (``yaml.safe_load``), or an ExperimentError naming the file and
    the line where it is unreadable or malformed."""
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ExperimentError(path, "(file)", "a readable YAML file",
                              err.strerror or str(err)) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "(syntax)"
        raise ExperimentError(path, where, "valid YAML",
                              str(getattr(err, "problem", err))) from None


def load(path: str | Path) -> Experiment:
    """Read and validate an experiment file."""
    file = str(path)
    raw = read_yaml(path)
    if not isinstance(raw, Mapping):
        raise ExperimentError(file, "(top level)", "a mapping of keys", raw)
    raw = as_number(dict(raw))
    head_keys = {k: v for k, v in raw.items() if k in HEAD}
    section_keys = {k: v for k, v in raw.items() if k not in HEAD}
    for key in section_keys:
        if key not in SECTIONS:
            raise ExperimentError(file, key, f"one of the keys {', '.join([*HEAD, *SECTIONS])} "
                                  f"(unknown key)", None)
    head = _validate(file, "", head_keys, HEAD)
    sections = {}
    for key, value in section_keys.items():
        if not isinstance(value, Mapping):
            raise ExperimentError(file, key, "a mapping", value)
        sections[key] = _validate(file, f"{key}.", value, SECTIONS[key])
    return Experiment(file=file, sections=sections, **head)
