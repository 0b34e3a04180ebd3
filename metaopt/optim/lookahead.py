"""Lookahead (Zhang et al. 2019, "Lookahead Optimizer: k steps forward, 1 step back").

A wrapper around any metaopt optimizer (the "fast" one): every ``k`` of its steps the slow
weights move a fraction ``alpha`` towards the fast weights, and the fast weights restart from
there. ``k`` and ``alpha`` are tensor hyperparameters added to the inner optimizer's param
groups as ``lookahead_k`` / ``lookahead_alpha`` (prefixed, so they never clash with the inner
optimizer's own names such as RMSprop's ``alpha``); for a population they are ``[P]``, so
every member may look ahead with its own k and alpha. The slow weights and a per-member step
counter (``slow_param``, ``lookahead_step``) are kept beside the inner optimizer's state and
show in ``state[p]``, ``state_dict()``, ``reset_member`` and ``copy_member``.

    opt = Lookahead(metaopt.optim.AdamW(model.parameters(), lr=3e-4), k=5, alpha=0.5)
    opt = metaopt.optim.create("lookahead", model.parameters(), base="adamw", k=5, lr=3e-4)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from metaopt.optim.hyperparams import Hyper
from metaopt.optim.members import new_step, per_member
from metaopt.optim.optimizer import MetaOptimizer, State
from metaopt.optim.registry import create, lookup
from metaopt.optim.wrapper import Wrapper

KEYS = ("lookahead_k", "lookahead_alpha")


@dataclass(frozen=True)
class Steps(Hyper):
    """A hyperparameter counting steps: a whole number ≥ ``low`` (stored as a float tensor)."""

    def check(self, name: str, value: Tensor, where: str) -> None:
        super().check(name, value, where)
        fractional = value != value.round()
        if bool(fractional.any()):
            flat = value.reshape(-1)
            i = int(fractional.reshape(-1).nonzero()[0])
            member = f" (member {i})" if value.dim() > 0 else ""
            raise ValueError(f"{where}: {name} = {float(flat[i]):g}{member} must be a whole "
                             f"number of steps")


HYPERS = (Steps("lookahead_k", low=1.0), Hyper("lookahead_alpha", high=1.0))


def sync(params: list[Tensor], states: list[State], hp: Mapping[str, Tensor]) -> None:
    """After the inner step: t += 1; where t mod k = 0, slow ← slow + α (p - slow); p ← slow."""
    k, alpha = hp["lookahead_k"], hp["lookahead_alpha"]
    for p, s in zip(params, states):
        step = s["lookahead_step"].add_(1)
        due = (torch.remainder(step, k) == 0).to(alpha.dtype)
        slow = s["slow_param"]
        slow.lerp_(p, per_member(alpha * due, p))  # slow + α (p - slow) when due
        p.lerp_(slow, per_member(due, p))  # p = slow when due (lerp weight 1 copies exactly)


class Lookahead(Wrapper):
    """``Lookahead(optimizer, k=5, alpha=0.5)`` around a :class:`MetaOptimizer`.

    ``param_groups`` are the inner optimizer's (schedules and ``hparams`` reach both the inner
    hyperparameters and ``lookahead_k``/``lookahead_alpha``); ``state[p]`` shows the inner
    state and the slow weights; ``step``, ``zero_grad``, ``add_transform``, ``state_dict``,
    ``reset_member``/``copy_member`` and the ``needs_closure``/``needs_model``/
    ``supports_population`` flags go through to the inner optimizer.
    """

    def __init__(self, optimizer: MetaOptimizer, k: int | Tensor = 5,
                 alpha: float | Tensor = 0.5) -> None:
        if not isinstance(optimizer, MetaOptimizer):
            raise TypeError(f"Lookahead wraps a metaopt optimizer (MetaOptimizer), got "
                            f"{type(optimizer).__name__}")
        self.optimizer = optimizer
        self.slow: dict[Tensor, State] = {}  # param -> {"slow_param", "lookahead_step"}
        super().__init__(optimizer.param_groups,
                         dict(optimizer.defaults, lookahead_k=k, lookahead_alpha=alpha))

    # -- the inner optimizer's groups and state ----------------------------------------
    def own_state(self) -> dict[Tensor, State]:
        return self.slow

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the inner optimizer (``lookahead_k``/``lookahead_alpha`` may be
        given per group); the inner optimizer's existing groups just gain the two keys."""
        inner = self.optimizer.param_groups
        if any(param_group is g for g in inner):
            group, given = param_group, {}
        else:
            given = {k: param_group[k] for k in KEYS if k in param_group}
            self.optimizer.add_param_group({k: v for k, v in param_group.items()
                                            if k not in KEYS})
            group = inner[-1]
        if KEYS[0] in group.spec:
            raise ValueError("Lookahead: this optimizer is already wrapped in a Lookahead")
        for h in HYPERS:
            group.add_hyper(h, given.get(h.key, self.defaults[h.key]))

    @property
    def transforms(self) -> list:
        return self.optimizer.transforms

    def add_transform(self, transform) -> Lookahead:
        self.optimizer.add_transform(transform)
        return self

    @property
    def needs_closure(self) -> bool:
        return self.optimizer.needs_closure

    @property
    def needs_model(self) -> bool:
        return self.optimizer.needs_model

    @property
    def supports_population(self) -> bool:
        return self.optimizer.supports_population

    # -- stepping -----------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One inner step, then the lookahead synchronisation of the members that are due.
        Slow weights start as the weights before a parameter's first step."""
        for group in self.param_groups:
            for p in group["params"]:
                if p not in self.slow and (closure is not None or p.grad is not None):
                    self.slow[p] = {"slow_param": p.detach().clone(),
                                    "lookahead_step": new_step(p, group.population)}
        loss = self.optimizer.step(closure)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None and p in self.slow]
            if params:
                sync(params, [self.slow[p] for p in params], group.hparams)
        return loss

    # -- populations --------------------------------------------------------------------
    @torch.no_grad()
    def reset_member(self, i: int) -> None:
        """The inner optimizer forgets member ``i``; its slow weights restart from its current
        weights and its step count from 0 (so re-initialise the weights first)."""
        self.optimizer.reset_member(i)
        for group in self.optimizer._population_groups():
            for p in group["params"]:
                if p in self.slow:
                    self.slow[p]["slow_param"][i] = p[i]
                    self.slow[p]["lookahead_step"][i] = 0

    @torch.no_grad()
    def copy_member(self, src: int, dst: int, *, params: bool = True, state: bool = True,
                    hparams: bool = True) -> None:
        """Weights, state (slow weights included) and hyperparameters (k, alpha included)."""
        self.optimizer.copy_member(src, dst, params=params, state=state, hparams=hparams)
        if state:
            for slow in self.slow.values():
                for value in slow.values():
                    value[dst] = value[src]

    # -- checkpoints --------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The inner optimizer's state dict (k and alpha are in its param groups) plus
        ``"lookahead"``: the slow weights and step counts by parameter index."""
        sd = self.optimizer.state_dict()
        sd["lookahead"] = {i: dict(self.slow[p]) for i, p in enumerate(self._params())
                           if p in self.slow}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a Lookahead state dict, or the inner optimizer's alone (the slow weights then
        restart from the current weights)."""
        state_dict = dict(state_dict)
        saved = state_dict.pop("lookahead", {})
        self.optimizer.load_state_dict(state_dict)
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        self.slow.clear()
        for i, p in zip(saved_ids, self._params()):
            if i in saved:
                slow, step = saved[i]["slow_param"], saved[i]["lookahead_step"]
                counter = new_step(p, None)
                self.slow[p] = {
                    "slow_param": slow.to(dtype=p.dtype, device=p.device).clone(),
                    "lookahead_step": step.to(dtype=counter.dtype, device=p.device).clone()}

    def __getstate__(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer, "defaults": self.defaults, "slow": self.slow}

    def __repr__(self) -> str:
        return f"Lookahead({self.optimizer!r})"


def create_lookahead(params: Iterable, base: str = "adam", **hparams: Any) -> Lookahead:
    """``create("lookahead", params, base="adam", k=5, alpha=0.5, lr=1e-3, ...)``.

    ``lookahead_k``/``lookahead_alpha`` (the names in ``param_groups``) are Lookahead's; so are
    the shorthands ``k``/``alpha``, unless the base optimizer takes a keyword of that name
    (RMSprop's ``alpha``), which then goes to the base. Everything else builds the base.
    """
    accepted = inspect.signature(lookup(base)).parameters
    own = {}
    for short, key in zip(("k", "alpha"), KEYS):
        if key in hparams:
            own[short] = hparams.pop(key)
        if short in hparams and short not in accepted:
            if short in own:
                raise ValueError(f"lookahead: give {key} or {short}, not both")
            own[short] = hparams.pop(short)
    return Lookahead(create(base, params, **hparams), **own)
