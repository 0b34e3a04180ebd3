"""A 2-D slice of the loss around the final weights, with the optimizer's path on it.

Li et al. (2018), "Visualizing the Loss Landscape of Neural Nets": pick two random directions,
rescale each *filter* of a direction (each output row of a weight matrix, each conv filter) to
the norm of the matching filter of the weights, so that the plot's scale means the same thing
for every layer despite scale invariances; zero the directions of biases and other 1-D
parameters (the paper's default). A model with no parameter of 2 or more dimensions (a bare
vector θ) has its 1-D parameters normalised as one filter each instead, since zeroing them
would leave nothing to plot. The trajectory is projected on the two directions by least
squares (they are not exactly orthogonal).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from metaopt.plots import new_figure, save


@dataclass
class Landscape:
    """The data behind the figure: ``losses[i, j]`` is the loss at
    ``center + alphas[j] * d1 + betas[i] * d2``; ``coords`` the trajectory's projection
    (``[T, 2]``, its last row the origin)."""

    alphas: Tensor
    betas: Tensor
    losses: Tensor
    coords: Tensor
    directions: tuple[Tensor, Tensor]
    center: Tensor


def filter_normalized_direction(params: Sequence[Tensor],
                                generator: torch.Generator) -> Tensor:
    """A random direction in parameter space (flattened like ``parameters_to_vector``),
    filter-normalised to ``params``."""
    has_filters = any(p.dim() > 1 for p in params)
    parts = []
    for p in params:
        w = p.detach().to("cpu", torch.float64)
        d = torch.randn(w.shape, generator=generator, dtype=torch.float64)
        if w.dim() > 1:
            rows_w, rows_d = w.reshape(len(w), -1), d.reshape(len(d), -1)
            scale = rows_w.norm(dim=1) / rows_d.norm(dim=1).clamp_min(1e-12)
            d = (rows_d * scale[:, None]).reshape(w.shape)
        elif has_filters:
            d = torch.zeros_like(w)
        else:
            d = d * (w.norm() / d.norm().clamp_min(1e-12))
        parts.append(d.reshape(-1))
    direction = torch.cat(parts)
    if not bool(direction.abs().sum() > 0):
        raise ValueError("loss_landscape: the filter-normalised direction is zero (all weights "
                         "are zero?)")
    return direction


def _stack(trajectory: Any) -> Tensor:
    points = getattr(trajectory, "path", trajectory)  # a TrainResult's recorded path
    if isinstance(points, Tensor):
        points = list(points) if points.dim() == 2 else [points]
    if len(points) == 0:
        raise ValueError("loss_landscape: the trajectory is empty (train with "
                         "record_path_every=k to record one)")
    return torch.stack([p.detach().to("cpu", torch.float64).reshape(-1) for p in points])


def _objective(source: Any, seed: int) -> tuple[nn.Module, Callable[[nn.Module], float]]:
    if isinstance(source, tuple):
        module, loss_fn, batch = source
        return module, lambda m: float(loss_fn(m, batch))
    torch.manual_seed(seed)
    return source.model(), lambda m: float(source.evaluate(m))


def compute_landscape(source: Any, trajectory: Any, resolution: int = 21, span: float = 1.0,
                      *, seed: int = 0) -> Landscape:
    """The numbers :func:`loss_landscape` draws (see there for the arguments)."""
    module, objective = _objective(source, seed)
    params = list(module.parameters())
    path = _stack(trajectory)
    if path.shape[1] != sum(p.numel() for p in params):
        raise ValueError(f"loss_landscape: trajectory points have {path.shape[1]} values, the "
                         f"model has {sum(p.numel() for p in params)} parameters")
    center = path[-1]
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        saved = parameters_to_vector(params).clone()
        vector_to_parameters(center.to(saved), params)
        d1 = filter_normalized_direction(params, generator)
        d2 = filter_normalized_direction(params, generator)
        basis = torch.stack([d1, d2], dim=1)
        coords = torch.linalg.lstsq(basis, (path - center).T).solution.T
        extent = max(span, 1.1 * float(coords.abs().max()))
        alphas = torch.linspace(-extent, extent, resolution, dtype=torch.float64)
        betas = alphas.clone()
        losses = torch.empty(resolution, resolution, dtype=torch.float64)
        try:
            for i, b in enumerate(betas):
                for j, a in enumerate(alphas):
                    point = center + a * d1 + b * d2
                    vector_to_parameters(point.to(saved), params)
                    losses[i, j] = objective(module)
        finally:
            vector_to_parameters(saved, params)
    return Landscape(alphas, betas, losses, coords, (d1, d2), center)


def loss_landscape(source: Any, trajectory: Any, path: str | os.PathLike,
                   resolution: int = 21, span: float = 1.0, *, seed: int = 0,
                   title: str | None = None) -> Path:
    """Draw the loss on a 2-D slice around the final weights, with the optimizer's path.

    Args:
        source: a task (the loss is its ``evaluate``, on a model built with
            ``torch.manual_seed(seed); task.model()``) or ``(module, loss_fn, batch)`` (the loss
            is ``loss_fn(module, batch)``; the module's weights are restored afterwards).
        trajectory: flattened parameter snapshots (a list of tensors, a ``[T, N]`` tensor, or a
            :class:`~metaopt.train.TrainResult` trained with ``record_path_every``), in
            ``parameters_to_vector`` order; the last one is the centre of the slice.
        path: the PNG to write.
        resolution: grid points per axis.
        span: the grid covers ``[-span, span]`` in units of the filter-normalised directions,
            widened to contain the projected path.
        seed: seeds the random directions (and the model, for a task).
    """
    data = compute_landscape(source, trajectory, resolution, span, seed=seed)
    losses = data.losses.clone()
    finite = torch.isfinite(losses)
    if not bool(finite.any()):
        raise ValueError("loss_landscape: the loss is non-finite everywhere on the grid")
    losses[~finite] = losses[finite].max()
    use_log = bool((losses > 0).all()) and float(losses.max() / losses.min()) > 10
    z = losses.log10() if use_log else losses
    fig = new_figure(6.0, 5.0)
    ax = fig.add_subplot()
    filled = ax.contourf(data.alphas.numpy(), data.betas.numpy(), z.numpy(), levels=30,
                         cmap="viridis")
    ax.contour(data.alphas.numpy(), data.betas.numpy(), z.numpy(), levels=15, colors="white",
               linewidths=0.4, alpha=0.6)
    fig.colorbar(filled, ax=ax, label="log10 loss" if use_log else "loss")
    xy = data.coords.numpy()
    ax.plot(xy[:, 0], xy[:, 1], "-", color="tab:red", lw=1.5, label="optimizer path")
    ax.plot(xy[0, 0], xy[0, 1], "o", color="tab:red", ms=6, label="start")
    ax.plot(xy[-1, 0], xy[-1, 1], "*", color="white", mec="black", ms=14, label="final weights")
    ax.set_xlabel("direction 1 (filter-normalised)")
    ax.set_ylabel("direction 2 (filter-normalised)")
    ax.set_title(title or "Loss landscape around the final weights")
    ax.set_aspect("equal")
    ax.legend(fontsize="small", loc="upper right")
    if not bool(finite.all()):
        ax.text(0.01, 0.01, "non-finite losses shown at the maximum", transform=ax.transAxes,
                fontsize="x-small")
    return save(fig, path)
