"""One optimizer that runs different algorithms on different parameter groups.

    opt = Composite([
        {"params": hidden_matrices, "optimizer": "muon", "lr": 0.02},
        {"params": everything_else, "optimizer": "adamw", "lr": 3e-4, "weight_decay": 0.0},
    ])

Each algorithm gets its own child optimizer; ``param_groups`` lists the children's groups in
the order given (so torch's ``lr_scheduler``s and ``metaopt.schedules`` drive them all), and
``step``/``zero_grad``/``state_dict`` go through every child.
"""

from __future__ import annotations

from collections import ChainMap
from collections.abc import Callable, Iterable
from typing import Any

import torch

from metaopt.optim.modes import eval_mode, train_mode
from metaopt.optim.registry import create


class Composite(torch.optim.Optimizer):
    """Several metaopt optimizers behind one ``torch.optim.Optimizer``."""

    needs_model = False

    def __init__(self, groups: Iterable[dict[str, Any]], *, population: int | None = None,
                 default: str = "adamw") -> None:
        self.children: dict[str, torch.optim.Optimizer] = {}
        self.default = default
        self.population = population
        groups = [dict(g) for g in groups]
        if not groups:
            raise ValueError("Composite: no parameter groups given")
        super().__init__(groups, defaults={})

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        group = dict(param_group)
        name = str(group.pop("optimizer", self.default)).lower()
        if self.population is not None:
            group.setdefault("population", self.population)
        child = self.children.get(name)
        if child is None:
            child = create(name, [group])
            self.children[name] = child
        else:
            child.add_param_group(group)
        added = child.param_groups[-1]
        added["optimizer"] = name
        self.param_groups.append(added)

    @property
    def state(self):  # a read view over the children's states
        return ChainMap(*(c.state for c in self.children.values()))

    @state.setter
    def state(self, value) -> None:  # torch's __init__ assigns an empty dict: ignore it
        pass

    @property
    def needs_closure(self) -> bool:
        return any(getattr(c, "needs_closure", False) for c in self.children.values())

    @property
    def supports_population(self) -> bool:
        return all(getattr(c, "supports_population", False) for c in self.children.values())

    @property
    def hparams(self) -> list[dict]:
        return [g.hparams for g in self.param_groups]

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for child in self.children.values():
            child.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for child in self.children.values():
            child.zero_grad(set_to_none)

    def train(self) -> None:
        """Children with a train / eval weight switch (Schedule-Free) to train mode."""
        for child in self.children.values():
            train_mode(child)

    def eval(self) -> None:
        """Children with a train / eval weight switch to their evaluation weights."""
        for child in self.children.values():
            eval_mode(child)

    def reset_member(self, i: int) -> None:
        for child in self.children.values():
            child.reset_member(i)

    def copy_member(self, src: int, dst: int, **what: bool) -> None:
        for child in self.children.values():
            child.copy_member(src, dst, **what)

    def state_dict(self) -> dict[str, Any]:
        return {"children": {name: c.state_dict() for name, c in self.children.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict["children"]
        if set(saved) != set(self.children):
            raise ValueError(f"Composite: state dict holds optimizers {sorted(saved)}, "
                             f"this one has {sorted(self.children)}")
        for name, child in self.children.items():
            child.load_state_dict(saved[name])
