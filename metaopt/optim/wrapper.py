"""An optimizer around a metaopt optimizer (Lookahead, K-FAC, the natural gradient): the
inner optimizer's ``param_groups`` are its own, ``state[p]`` reads the inner state beside the
wrapper's own per-parameter state, ``hparams`` and ``zero_grad`` go through."""

from __future__ import annotations

from collections import ChainMap
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from metaopt.optim.hyperparams import HyperGroup
from metaopt.optim.optimizer import MetaOptimizer


class LookaheadState(Mapping):
    """``optimizer.state`` of a Lookahead: per parameter, the inner optimizer's state and the
    slow weights side by side (read as one dict; the two are stored apart so the inner
    optimizer's flat buffers never see foreign keys)."""

    def __init__(self, inner: Mapping, slow: Mapping[Tensor, Mapping]) -> None:
        self.inner, self.slow = inner, slow

    def __getitem__(self, param: Tensor) -> Mapping[str, Any]:
        inner, slow = self.inner.get(param), self.slow.get(param)
        if inner is None and slow is None:
            raise KeyError(param)
        return ChainMap(slow or {}, inner or {})

    def __iter__(self):
        yield from self.inner
        yield from (p for p in self.slow if p not in self.inner)

    def __len__(self) -> int:
        return sum(1 for _ in self)


class Wrapper(torch.optim.Optimizer):
    """Set ``self.optimizer`` (the inner :class:`MetaOptimizer`) before calling
    ``torch.optim.Optimizer.__init__`` with its groups, and give :meth:`own_state`."""

    optimizer: MetaOptimizer

    @property
    def param_groups(self) -> list[HyperGroup]:
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value) -> None:  # torch's __init__ assigns []: the inner's stay
        pass

    @property
    def state(self) -> LookaheadState:
        """Per parameter, the inner optimizer's state and the wrapper's own (one mapping)."""
        return LookaheadState(self.optimizer.state, self.own_state())

    @state.setter
    def state(self, value) -> None:  # torch's __init__ assigns an empty dict: ignore it
        pass

    def own_state(self) -> Mapping[Tensor, Mapping]:
        raise NotImplementedError

    @property
    def hparams(self) -> list[dict[str, Tensor | None]]:
        return self.optimizer.hparams

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none)

    def _params(self) -> list[Tensor]:
        return [p for g in self.param_groups for p in g["params"]]
