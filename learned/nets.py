"""Building learned-optimizer networks from a config, and their checkpoint files.

A checkpoint is a plain dict of strings, numbers, lists and tensors (``torch.load(...,
weights_only=True)`` reads it): ``{"format", "config", "weights", "meta"}`` — the network's
kind and constructor arguments, its ``state_dict`` and free-form facts about its training.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from learned.coordinatewise import CoordinatewiseLSTM
from learned.per_tensor import PerTensorNet

FORMAT = "metaopt-learned-optimizer/1"
KINDS: dict[str, type[nn.Module]] = {
    PerTensorNet.kind: PerTensorNet,
    CoordinatewiseLSTM.kind: CoordinatewiseLSTM,
}
DEFAULT_CHECKPOINT = Path(__file__).parent / "checkpoints" / "lstm.pt"


def build(config: dict[str, Any]) -> nn.Module:
    """A freshly initialised network: ``config["kind"]`` plus its constructor arguments."""
    config = dict(config)
    kind = config.pop("kind", PerTensorNet.kind)
    if kind not in KINDS:
        raise ValueError(f"unknown learned-optimizer kind {kind!r}; expected one of "
                         f"{', '.join(KINDS)}")
    for key in ("betas", "time_scales"):
        if key in config:
            config[key] = tuple(config[key])
    return KINDS[kind](**config)


def to_checkpoint(net: nn.Module, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """The tensors-only dict that :func:`from_checkpoint` reads back."""
    weights = {k: v.detach().to("cpu").clone() for k, v in net.state_dict().items()}
    return {"format": FORMAT, "config": net.config(), "weights": weights,
            "meta": dict(meta or {})}


def from_checkpoint(payload: dict[str, Any]) -> nn.Module:
    """The network a checkpoint dict describes, its weights loaded."""
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"not a learned-optimizer checkpoint (expected format {FORMAT!r})")
    net = build(payload["config"])
    dtypes = {v.dtype for v in payload["weights"].values() if v.is_floating_point()}
    if len(dtypes) == 1:  # the precision it was saved in (float32 for shipped files)
        net = net.to(dtypes.pop())
    net.load_state_dict(payload["weights"])
    return net


def save(net: nn.Module, path: str | os.PathLike, meta: dict[str, Any] | None = None) -> Path:
    """Write ``net`` atomically (temp file + rename) as a checkpoint file."""
    from metaopt.runs import write_atomic

    buffer = io.BytesIO()
    torch.save(to_checkpoint(net, meta), buffer)
    return write_atomic(path, buffer.getvalue())


def read(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint file's dict, loaded with ``weights_only=True``."""
    return torch.load(path, map_location="cpu", weights_only=True)


def load(path: str | os.PathLike | None = None) -> nn.Module:
    """The network stored at ``path`` (default: the pretrained one shipped in the package)."""
    path = DEFAULT_CHECKPOINT if path is None else Path(path)
    if not path.exists():
        raise FileNotFoundError(f"learned-optimizer checkpoint {path} does not exist")
    return from_checkpoint(read(path))
