"""How much memory an optimizer's state holds: ``state_bytes(optimizer)``.

Walks ``optimizer.state`` (any ``torch.optim.Optimizer``: metaopt's, torch's, wrappers such as
Lookahead and Composite whose ``state`` is a view, third-party ones) through dicts, lists and
tuples, and sums the bytes of every distinct storage the tensors live in, each once: views
into one flat buffer count the buffer once, a tensor shared by two entries counts once.
Hyperparameter tensors and the parameters themselves are not state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor


def _tensors(value: Any):
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _tensors(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of memory held by ``optimizer``'s state (0 before its first step for most)."""
    seen: dict[tuple[str, int], int] = {}
    for state in optimizer.state.values():
        for t in _tensors(state):
            if t.is_sparse:
                key = (str(t.device), id(t))
                size = t._values().untyped_storage().nbytes() + \
                    t._indices().untyped_storage().nbytes()
            else:
                storage = t.untyped_storage()
                key = (str(t.device), storage.data_ptr() or id(t))
                size = storage.nbytes()
            seen[key] = max(seen.get(key, 0), size)
    return sum(seen.values())
