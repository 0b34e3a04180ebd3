"""Meta-features of a task: what the results store compares to find similar earlier tasks.

Measured on the task's initial model, at a fixed cost in gradient evaluations
(:data:`COST`, charged to the selection's budget):

- ``log_params``: log10 of the parameter count;
- ``linear`` / ``conv`` / ``recurrent`` / ``attention`` / ``norm``: the share of parameters in
  each kind of layer (what the model is made of);
- ``loss_*``: the loss type, one-hot (cross-entropy, binary cross-entropy, squared error,
  other), read from the functions the task's loss calls;
- ``log_loss0``: log10 of |initial loss| (the scale of the objective);
- ``log_noise``: log10 of the gradient noise scale tr(Σ)/|E g|² over ``BATCHES`` minibatches
  (McCandlish et al. 2018, "An Empirical Model of Large-Batch Training"): how much batches
  disagree;
- ``log_curvature``: log10 of the Rayleigh quotient gᵀHg/|g|² along the mean gradient (one
  Hessian-vector product): how sharp the loss is where training starts.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
from torch import nn

BATCHES = 4
NOISE_FLOOR = 1e-6  # full-batch (deterministic) tasks: no noise, put at -6 rather than -inf
COST = BATCHES + 2  # gradient evaluations: the batches, then one Hessian-vector product (~2)
LOSS_KINDS = {"cross_entropy": "ce", "nll_loss": "ce", "binary_cross_entropy": "bce",
              "binary_cross_entropy_with_logits": "bce", "mse_loss": "mse"}
NAMES = ("log_params", "linear", "conv", "recurrent", "attention", "norm", "loss_ce",
         "loss_bce", "loss_mse", "loss_other", "log_loss0", "log_noise", "log_curvature")
LAYERS = {"linear": (nn.Linear, nn.Bilinear), "conv": (nn.modules.conv._ConvNd,),
          "recurrent": (nn.RNNBase,), "attention": (nn.MultiheadAttention,),
          "norm": (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)}


def measure(task: Any, seed: int = 0) -> dict[str, float]:
    """The task's meta-features (see the module docstring); a feature that cannot be measured
    on this task (a loss that is not twice differentiable, say) is NaN."""
    torch.manual_seed(seed)
    module = task.model()
    params = [p for p in module.parameters() if p.requires_grad]
    out = {"log_params": math.log10(max(1, sum(p.numel() for p in params))),
           **layer_shares(module), **loss_kind(task)}
    out.update(gradient_features(task, module, params, seed))
    return out


def layer_shares(module: nn.Module) -> dict[str, float]:
    """Share of the parameters held by each kind of layer (leaf counting, no double count)."""
    total = sum(p.numel() for p in module.parameters()) or 1
    shares = dict.fromkeys(LAYERS, 0.0)
    seen: set[int] = set()
    for sub in module.modules():
        for kind, types in LAYERS.items():
            if isinstance(sub, types):
                own = [p for p in sub.parameters() if id(p) not in seen]
                seen.update(id(p) for p in own)
                shares[kind] += sum(p.numel() for p in own) / total
    return shares


def loss_kind(task: Any) -> dict[str, float]:
    """One-hot loss type from the names the loss function's code refers to."""
    names: set[str] = set()
    try:
        names = set(inspect.getclosurevars(task.loss).unbound) | set(
            task.loss.__code__.co_names)
    except (TypeError, AttributeError):
        pass
    kinds = {LOSS_KINDS[n] for n in names if n in LOSS_KINDS}
    kind = next(iter(kinds)) if len(kinds) == 1 else "other"
    return {f"loss_{k}": float(k == kind) for k in ("ce", "bce", "mse", "other")}


def gradient_features(task: Any, module: nn.Module, params: list, seed: int
                      ) -> dict[str, float]:
    nan = {"log_loss0": math.nan, "log_noise": math.nan, "log_curvature": math.nan}
    batches = task.data(torch.Generator().manual_seed(seed))
    grads, losses = [], []
    try:
        for _ in range(BATCHES):
            batch = next(batches)
            value = task.loss(module, batch)
            grads.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(
                value, params, allow_unused=True, materialize_grads=True)]).double())
            losses.append(float(value.detach()))
    except Exception:  # a task whose loss is not one differentiable scalar (its own step)
        return nan
    stacked = torch.stack(grads)
    mean = stacked.mean(0)
    spread = float(((stacked - mean) ** 2).sum(1).mean()) * BATCHES / (BATCHES - 1)
    out = {"log_loss0": _log(abs(sum(losses) / len(losses))),
           "log_noise": _log(max(spread / max(float(mean @ mean), 1e-30), NOISE_FLOOR))}
    out["log_curvature"] = curvature(task, module, params, batch, mean)
    return out


def curvature(task: Any, module: nn.Module, params: list, batch: Any, direction: torch.Tensor
              ) -> float:
    """log10 |vᵀHv| / |v|² for the loss on ``batch`` along ``direction`` (NaN if the loss has
    no second derivative)."""
    norm2 = float(direction @ direction)
    if norm2 == 0:
        return math.nan
    try:
        value = task.loss(module, batch)
        grads = torch.autograd.grad(value, params, create_graph=True, allow_unused=True,
                                    materialize_grads=True)
        flat = torch.cat([g.reshape(-1) for g in grads])
        v = direction.to(flat.dtype)
        hv = torch.autograd.grad(flat @ v, params, allow_unused=True, materialize_grads=True)
        quotient = float(torch.cat([h.reshape(-1) for h in hv]).double() @ direction) / norm2
    except Exception:
        return math.nan
    return _log(abs(quotient))


def _log(x: float) -> float:
    return math.log10(x) if x > 0 and math.isfinite(x) else math.nan


def vector(features: dict[str, float]) -> list[float]:
    return [float(features.get(n, math.nan)) for n in NAMES]
