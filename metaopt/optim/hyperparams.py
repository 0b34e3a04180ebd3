"""Hyperparameters stored as tensors, behind a param-group dict that looks like torch's.

A :class:`HyperGroup` is what ``optimizer.param_groups[i]`` holds. Its numeric hyperparameters
(``lr``, ``betas``, ``eps``, ...) are 0-d tensors for a single model, or ``[P]`` tensors for a
population of ``P`` stacked members. Assigning ``group["lr"] = 0.1`` (what torch's
``lr_scheduler``s do) writes *into* the existing tensor, so compiled steps see the new value
without recompiling and every alias (``optimizer.hparams``) stays valid.
"""

from __future__ import annotations

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

    def _make(self, key: str, value: Any) -> Any:
        h = self.spec[key]
        where = self.owner
        if h.parts:
            if not isinstance(value, (tuple, list)) or len(value) != len(h.parts):
                raise ValueError(f"{where}: {key} must be a tuple of {len(h.parts)} values "
                                 f"({', '.join(h.parts)}), got {value!r}")
            pairs = list(zip(h.parts, value))
        else:
            pairs = [(key, value)]
        for name, v in pairs:
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
        if h.parts:
            if not isinstance(value, (tuple, list)) or len(value) != len(h.parts):
                raise ValueError(f"{self.owner}: {key} must be a tuple of {len(h.parts)} "
                                 f"values ({', '.join(h.parts)}), got {value!r}")
            pairs = list(zip(h.parts, value))
        else:
            pairs = [(key, value)]
        new = {}
        for name, v in pairs:  # validate everything before writing anything
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
