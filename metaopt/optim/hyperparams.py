"""Hyperparameters stored as tensors, behind a param-group dict that looks like torch's, and
the one way to address them by flat name.

A :class:`HyperGroup` is what ``optimizer.param_groups[i]`` holds. Its numeric hyperparameters
(``lr``, ``betas``, ``eps``, ...) are 0-d tensors for a single model, or ``[P]`` tensors for a
population of ``P`` stacked members. Assigning ``group["lr"] = 0.1`` (what torch's
``lr_scheduler``s do) writes *into* the existing tensor, so compiled steps see the new value
without recompiling and every alias (``optimizer.hparams``) stays valid.

Searches, schedules, PBT and the monitor name hyperparameters *flat*: ``lr``, ``beta1``/``beta2``
for the elements of ``betas``, ``eps1``/``eps2`` for Adafactor's ``eps``, ``lookahead_k``.
:func:`read`, :func:`write` (any group, any member), :func:`values` (all of them as floats),
:func:`fold` (flat keyword arguments -> a constructor's own, with the class's defaults) and
:func:`describe` (name, default, range, log-scale hint) are the only code that maps flat names
to param-group keys; they work on metaopt groups and on plain torch.optim ones alike.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

# Keys torch's schedulers add to a param group when they take control of it.
SCHEDULER_KEYS = ("initial_lr", "max_lr", "min_lr", "max_momentum", "base_momentum")


@dataclass(frozen=True)
class Hyper:
    """One tensor-valued hyperparameter of an optimizer, as a param-group key.

    ``parts`` names the elements when the key holds a tuple (torch's ``betas`` is
    ``("beta1", "beta2")``); ``low``/``high`` bound every element, open where flagged.
    ``optional`` parts may be ``None`` (torch's Adafactor ``eps1``), which stays a Python ``None``.
    """

    key: str
    low: float = 0.0
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    parts: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    log: bool | None = None  # searched on a log scale (None: by name, see LOG_SCALE)

    @property
    def names(self) -> tuple[str, ...]:
        return self.parts or (self.key,)

    def bounds_text(self) -> str:
        left = "(" if self.low_open else "["
        right = ")" if self.high_open or self.high == math.inf else "]"
        return f"{left}{self.low:g}, {self.high:g}{right}"

    def check(self, name: str, value: Tensor, where: str) -> None:
        """Raise ValueError naming the hyperparameter, the member and the allowed range."""
        low_bad = value <= self.low if self.low_open else value < self.low
        high_bad = value >= self.high if self.high_open else value > self.high
        bad = low_bad | high_bad | torch.isnan(value)
        if bool(bad.any()):
            flat = value.reshape(-1)
            i = int(bad.reshape(-1).nonzero()[0])
            member = f" (member {i})" if value.dim() > 0 else ""
            raise ValueError(
                f"{where}: {name} = {float(flat[i]):g}{member} is out of range; "
                f"expected a value in {self.bounds_text()}"
            )


def hparam_dtype(params: Sequence[Tensor], population: int | None) -> torch.dtype:
    """float64 for 0-d values (exact, and 0-d tensors never change a kernel's dtype); for
    ``[P]`` values the params' precision, so broadcasting never upcasts a whole model."""
    device = params[0].device if params else torch.device("cpu")
    if device.type == "mps":
        return torch.float32
    if population is None or any(p.dtype == torch.float64 for p in params):
        return torch.float64
    return torch.float32


def as_hparam_tensor(
    value: Any, name: str, population: int | None, dtype: torch.dtype,
    device: torch.device, where: str,
) -> Tensor:
    """Turn a float, a 1-element tensor or (for populations) a length-P sequence into a tensor
    of shape ``[]`` or ``[P]``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, Tensor, Sequence)):
        raise ValueError(f"{where}: {name} must be a number or a tensor, got {value!r}")
    if isinstance(value, Tensor):
        t = value.detach().to(dtype=dtype, device=device)
    else:
        t = torch.as_tensor(value, dtype=dtype, device=device)
    if population is None:
        if t.numel() != 1:
            raise ValueError(
                f"{where}: {name} has {t.numel()} values but the group has no population; "
                f"pass population=P to give one value per member"
            )
        return t.reshape(())
    if t.numel() == 1:
        return t.reshape(()).expand(population).clone()
    if t.dim() != 1 or t.numel() != population:
        raise ValueError(
            f"{where}: {name} has shape {tuple(t.shape)}, expected a scalar or a "
            f"[{population}] tensor (one value per member of population={population})"
        )
    return t.clone()


class HyperGroup(dict):
    """A torch param group whose hyperparameters are tensors updated in place.

    ``group["betas"] = (0.95, 0.999)`` and ``group["lr"] = 1e-3`` validate and copy into the
    stored tensors. ``group.hparams`` maps flat names (``lr``, ``beta1``, ``beta2``, ...) to
    those tensors. Groups with a population refuse torch's ``lr_scheduler``s, whose scalar
    writes would erase per-member values.
    """

    def __init__(self, group: Mapping[str, Any], spec: Iterable[Hyper], owner: str):
        super().__init__()
        self.spec = {h.key: h for h in spec}
        self.owner = owner
        self.population: int | None = group.get("population")
        params = group["params"]
        self._check_population(params)
        self.dtype = hparam_dtype(params, self.population)
        self.device = params[0].device if params else torch.device("cpu")
        self.hparams: dict[str, Tensor | None] = {}
        self.listeners: list = []  # called as f(group, key) after each write through the dict
        for key, value in group.items():
            if key in self.spec:
                dict.__setitem__(self, key, self._make(key, value))
            else:
                dict.__setitem__(self, key, value)

    # -- construction -------------------------------------------------------------------
    def _check_population(self, params: Sequence[Tensor]) -> None:
        P = self.population
        if P is None:
            return
        if isinstance(P, bool) or not isinstance(P, int) or P < 1:
            raise ValueError(f"{self.owner}: population must be a positive int, got {P!r}")
        for i, p in enumerate(params):
            if p.dim() == 0 or p.shape[0] != P:
                shape = tuple(p.shape)
                raise ValueError(
                    f"{self.owner}: parameter {i} has shape {shape}, but population={P} needs "
                    f"a leading member dimension of size {P} (stack the members' parameters)"
                )

    def _pairs(self, key: str, value: Any) -> list[tuple[str, Any]]:
        """``(flat name, value)`` for each element the key holds."""
        h = self.spec[key]
        if not h.parts:
            return [(key, value)]
        if not isinstance(value, (tuple, list)) or len(value) != len(h.parts):
            raise ValueError(f"{self.owner}: {key} must be a tuple of {len(h.parts)} values "
                             f"({', '.join(h.parts)}), got {value!r}")
        return list(zip(h.parts, value))

    def _make(self, key: str, value: Any) -> Any:
        h = self.spec[key]
        for name, v in self._pairs(key, value):
            self.hparams[name] = self._make_one(h, name, v)
        values = tuple(self.hparams[n] for n in h.names)
        return values if h.parts else values[0]

    def _make_one(self, h: Hyper, name: str, value: Any) -> Tensor | None:
        if value is None and name in h.optional:
            return None
        t = as_hparam_tensor(value, name, self.population, self.dtype, self.device, self.owner)
        h.check(name, t, self.owner)
        return t

    # -- in-place writes ----------------------------------------------------------------
    def _write(self, key: str, value: Any) -> None:
        h = self.spec[key]
        new = {}
        for name, v in self._pairs(key, value):  # validate everything before writing anything
            current = self.hparams[name]
            if isinstance(v, Tensor) and v is current:
                continue
            if v is None or current is None:  # an optional part switching to/from None
                new[name] = self._make_one(h, name, v)
                continue
            t = as_hparam_tensor(v, name, self.population, current.dtype, current.device,
                                 self.owner)
            h.check(name, t, self.owner)
            new[name] = t
        for name, t in new.items():
            current = self.hparams[name]
            if t is None or current is None:
                self.hparams[name] = t
            else:
                current.copy_(t)
        values = tuple(self.hparams[n] for n in h.names)
        dict.__setitem__(self, key, values if h.parts else values[0])
        for listener in self.listeners:
            listener(self, key)

    def __setitem__(self, key: str, value: Any) -> None:
        if key in self.spec and key in self:
            self._write(key, value)
            return
        self._refuse_torch_scheduler(key)
        dict.__setitem__(self, key, value)

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def _refuse_torch_scheduler(self, key: str) -> None:
        if self.population is not None and key in SCHEDULER_KEYS:
            raise ValueError(
                f"{self.owner}: a torch.optim.lr_scheduler cannot drive a group with "
                f"population={self.population} (it writes one value for all members); "
                f"use metaopt.schedules, which computes a [P] value per member"
            )

    def add_hyper(self, h: Hyper, value: Any) -> None:
        """Give the group one more tensor hyperparameter (a wrapper's own, e.g. Lookahead's
        ``lookahead_k``), validated like the rest."""
        self.spec[h.key] = h
        try:
            made = self._make(h.key, value)
        except ValueError:
            del self.spec[h.key]
            raise
        dict.__setitem__(self, h.key, made)

    # -- export -------------------------------------------------------------------------
    def export(self) -> dict[str, Any]:
        """The group as torch's ``state_dict`` stores it: Python floats for 0-d values
        (so torch.optim can load it), cloned ``[P]`` tensors for populations."""
        out = {}
        for key, value in self.items():
            if key == "params":
                continue
            if key in self.spec:
                value = _to_plain(value)
            out[key] = value
        return out

    def __reduce__(self):
        return (_rebuild_group, (dict(self), tuple(self.spec.values()), self.owner))

    def __deepcopy__(self, memo: dict) -> HyperGroup:
        import copy

        plain = {k: (v if k == "params" else copy.deepcopy(v, memo)) for k, v in self.items()}
        plain["params"] = list(self["params"])
        return HyperGroup(plain, self.spec.values(), self.owner)


def _to_plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return tuple(_to_plain(v) for v in value)
    if isinstance(value, Tensor):
        return float(value) if value.dim() == 0 else value.detach().clone()
    return value


def _rebuild_group(plain: dict, spec: tuple[Hyper, ...], owner: str) -> HyperGroup:
    return HyperGroup(plain, spec, owner)


# -- flat names: the one address of every hyperparameter -----------------------------------
# Element names of tuple-valued keys in plain torch.optim groups (metaopt groups know theirs).
TORCH_PARTS = {"betas": ("beta1", "beta2"), "eps": ("eps1", "eps2")}
# Hyperparameters searched on a log scale unless their Hyper says otherwise.
LOG_SCALE = frozenset({"lr", "eps", "eps1", "eps2", "weight_decay", "final_lr", "gamma",
                       "lr_decay", "initial_accumulator_value"})
Address = tuple[str, int | None]  # (param-group key, element index or None)


def _is_number(v: Any) -> bool:
    return v.is_floating_point() if isinstance(v, Tensor) else (
        isinstance(v, (int, float)) and not isinstance(v, bool))


def flat_names(group: Mapping[str, Any]) -> dict[str, Address]:
    """``{flat name: (param-group key, element index or None)}`` for one group."""
    spec = getattr(group, "spec", None)
    out: dict[str, Address] = {}
    for key, value in group.items():
        if spec is not None:
            if key in spec:
                h = spec[key]
                out.update({n: (key, j if h.parts else None) for j, n in enumerate(h.names)})
        elif isinstance(value, (tuple, list)) and value and all(
                v is None or _is_number(v) for v in value):
            names = TORCH_PARTS.get(key, ())
            names = names if len(names) == len(value) else [f"{key}{j}" for j in range(len(value))]
            out.update({n: (key, j) for j, n in enumerate(names)})
        elif key not in ("params", "param_names") and _is_number(value):
            out[key] = (key, None)
    return out


def _groups(target: Any) -> list[Mapping[str, Any]]:
    groups = getattr(target, "param_groups", None)
    return [target] if groups is None else groups


def _locate(group: Mapping[str, Any], name: str, where: str) -> Address:
    names = flat_names(group)
    if name not in names:
        raise KeyError(f"{where}: no hyperparameter {name!r}; this optimizer has "
                       f"{', '.join(names) or 'none'}")
    return names[name]


def _get(group: Mapping[str, Any], address: Address) -> Any:
    key, j = address
    return group[key] if j is None else group[key][j]


def read(target: Any, name: str, *, group: int = 0, member: int | None = None) -> Any:
    """Hyperparameter ``name`` (flat) of ``target`` (an optimizer or one param group): the
    stored tensor (or float, for plain torch groups), or member ``member``'s value."""
    g = _groups(target)[group]
    value = _get(g, _locate(g, name, type(target).__name__))
    return value if member is None else value[member]


def write(target: Any, name: str, value: Any, *, group: int | None = None,
          member: int | None = None) -> None:
    """Set hyperparameter ``name`` (flat) in every group of ``target`` (or group ``group``);
    with ``member``, only that member's entry of a ``[P]`` value. Tensor hyperparameters are
    written in place and validated (a bad value raises ValueError and changes nothing)."""
    where = type(target).__name__
    groups = _groups(target)
    for g in groups if group is None else [groups[group]]:
        key, j = _locate(g, name, where)
        current, new = _get(g, (key, j)), value
        if member is not None:
            if not isinstance(current, Tensor) or current.dim() != 1:
                raise ValueError(f"{where}: {name} is unset (None) for every member; set it for "
                                 f"all members before changing one" if current is None else
                                 f"{where}: {name} has no members (the group has no "
                                 f"population); write it without member=")
            new = current.detach().clone()
            new[member] = torch.as_tensor(value, dtype=new.dtype)
        elif isinstance(new, Tensor) and not isinstance(current, Tensor):
            if new.dim() != 0:
                raise ValueError(f"{where}: a per-member [P] value for {name} needs tensor "
                                 f"hyperparameters, got a float entry")
            new = float(new)
        if isinstance(current, Tensor) and not hasattr(g, "spec"):  # a plain group's tensor
            with torch.no_grad():
                current.copy_(torch.as_tensor(new, dtype=current.dtype))
        else:
            g[key] = new if j is None else tuple(new if i == j else v
                                                 for i, v in enumerate(g[key]))


def flatten(target: Any, hparams: Mapping[str, Any], *, group: int = 0) -> dict[str, Any]:
    """Keyword arguments as flat names of ``target``'s group: ``betas=(a, b)`` becomes
    ``beta1=a, beta2=b``; flat names pass through. KeyError for a name the group lacks."""
    g = _groups(target)[group]
    names = flat_names(g)
    out: dict[str, Any] = {}
    for key, value in hparams.items():
        parts = [n for n, (k, j) in names.items() if k == key and j is not None]
        if key not in names and parts and isinstance(value, (tuple, list)):
            out.update(zip(parts, value))
        else:
            _locate(g, key, type(target).__name__)
            out[key] = value
    return out


def values(target: Any) -> dict[str, float]:
    """Every scalar hyperparameter as a float: group 0's by flat name, group ``i``'s as
    ``name/i``. ``[P]`` values and optional ones left unset (``None``) are left out."""
    out: dict[str, float] = {}
    for i, g in enumerate(_groups(target)):
        for name, address in flat_names(g).items():
            value = _get(g, address)
            if value is not None and not (isinstance(value, Tensor) and value.numel() != 1):
                out[name if i == 0 else f"{name}/{i}"] = float(value)
    return out


def fold(cls: Any, hparams: Mapping[str, Any]) -> dict[str, Any]:
    """Flat keyword arguments (``beta1=0.95``) -> the constructor's own (``betas=(0.95, b2)``),
    the missing elements taken from ``betas`` if given, else from ``cls``'s own default (Lion's
    beta2 is 0.99, not Adam's 0.999). Classes without ``hypers`` get ``hparams`` unchanged."""
    out = dict(hparams)
    for h in getattr(cls, "hypers", ()):
        if h.parts and any(n in out for n in h.parts):
            base = out.pop(h.key, None) or inspect.signature(cls).parameters[h.key].default
            out[h.key] = tuple(out.pop(n, b) for n, b in zip(h.parts, base))
    return out


@dataclass(frozen=True)
class HyperInfo:
    """One hyperparameter as a search sees it: flat ``name``, the param-group ``key`` holding
    it, the class's ``default`` (None: optional, unset), its range, and a log-scale hint."""

    name: str
    key: str
    default: float | None
    low: float
    high: float
    low_open: bool
    high_open: bool
    log: bool

    def contains(self, value: float) -> bool:
        low_ok = value > self.low if self.low_open else value >= self.low
        return low_ok and (value < self.high if self.high_open else value <= self.high)

    def bounds_text(self) -> str:
        return Hyper(self.key, self.low, self.high, self.low_open, self.high_open).bounds_text()


def describe(group: HyperGroup) -> dict[str, HyperInfo]:
    """Every hyperparameter of a metaopt param group by flat name, its current value as the
    default (call it on a freshly built optimizer)."""
    out = {}
    for name, (key, j) in flat_names(group).items():
        h, value = group.spec[key], _get(group, (key, j))
        default = None if value is None else float(value.reshape(-1)[0])
        log = h.log if h.log is not None else name in LOG_SCALE
        out[name] = HyperInfo(name, key, default, h.low, h.high, h.low_open, h.high_open, log)
    return out
