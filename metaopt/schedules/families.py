"""Closed-form schedule families: one small function each, matching torch.optim.lr_scheduler.

Each takes the step ``k`` and its parameters as float64 tensors that broadcast (strings and
bools stay Python values) and returns a float64 tensor. No function reads a tensor value back into
Python, so all of them run eagerly or under ``torch.compile``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from metaopt.schedules.registry import Schedule

F64 = torch.float64


def to64(value: Any, device: torch.device | None) -> Any:
    """Numbers, tuples of numbers and tensors as float64 tensors on ``device``; else unchanged."""
    if isinstance(value, tuple):
        return torch.tensor(value, dtype=F64, device=device)
    if isinstance(value, Tensor):
        return value.to(device=device, dtype=F64)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return torch.tensor(value, dtype=F64, device=device)
    return value


def nonzero(x: Tensor) -> Tensor:
    """``x`` with zeros replaced by 1, for denominators whose zero case ``where`` discards."""
    return torch.where(x == 0, 1.0, x)


def step(k: Tensor, base_lr: Tensor, step_size: Tensor, gamma: Tensor) -> Tensor:
    """torch ``StepLR``: multiply by ``gamma`` every ``step_size`` steps."""
    return base_lr * gamma ** torch.div(k, step_size, rounding_mode="floor")


def multistep(k: Tensor, base_lr: Tensor, milestones: Tensor, gamma: Tensor) -> Tensor:
    """torch ``MultiStepLR``: multiply by ``gamma`` at each milestone (last dim of milestones)."""
    return base_lr * gamma ** (k.unsqueeze(-1) >= milestones).sum(-1)


def exponential(k: Tensor, base_lr: Tensor, gamma: Tensor) -> Tensor:
    """torch ``ExponentialLR``: ``base_lr * gamma**k``."""
    return base_lr * gamma**k


def cosine(k: Tensor, base_lr: Tensor, T_max: Tensor, eta_min: Tensor) -> Tensor:
    """torch ``CosineAnnealingLR``; like torch it keeps oscillating after ``T_max``."""
    return eta_min + (base_lr - eta_min) * (1 + torch.cos(math.pi * k / T_max)) / 2


def cosine_restarts(
    k: Tensor, base_lr: Tensor, T_0: Tensor, T_mult: Tensor, eta_min: Tensor
) -> Tensor:
    """torch ``CosineAnnealingWarmRestarts``: cycle n lasts ``T_0 * T_mult**n`` steps.

    The cycle index comes from the closed form with logs (as torch's ``step(epoch)``), then is
    corrected by one where rounding put it next to the true restart, so the result equals the
    integer bookkeeping of torch's ``step()``.
    """
    one = T_mult == 1
    r = torch.where(one, 2.0, T_mult)  # any ratio != 1 keeps the unused branch finite

    def start(n: Tensor) -> Tensor:  # first step of cycle n
        return torch.where(one, n * T_0, T_0 * (r**n - 1) / (r - 1))

    n = torch.where(
        one,
        torch.floor(k / T_0),
        torch.floor(torch.log(k / T_0 * (r - 1) + 1) / torch.log(r)),
    )
    n = n - (k < start(n)).to(F64) + (k >= start(n + 1)).to(F64)
    T_cur, T_i = k - start(n), T_0 * T_mult**n
    return eta_min + (base_lr - eta_min) * (1 + torch.cos(math.pi * T_cur / T_i)) / 2


def linear_warmup(
    k: Tensor, base_lr: Tensor, start_factor: Tensor, end_factor: Tensor, total_iters: Tensor
) -> Tensor:
    """torch ``LinearLR``: factor goes linearly from start to end over ``total_iters`` steps.

    ``total_iters = 0`` means no ramp (``end_factor`` from the start); torch holds
    ``start_factor`` forever in that case.
    """
    ramp = (end_factor - start_factor) * torch.minimum(k, total_iters) / nonzero(total_iters)
    return base_lr * torch.where(total_iters > 0, start_factor + ramp, end_factor)


def constant(k: Tensor, base_lr: Tensor, factor: Tensor, total_iters: Tensor) -> Tensor:
    """torch ``ConstantLR``: ``factor`` for the first ``total_iters`` steps, then 1."""
    return base_lr * torch.where(k >= total_iters, 1.0, factor)


def polynomial(k: Tensor, base_lr: Tensor, total_iters: Tensor, power: Tensor) -> Tensor:
    """torch ``PolynomialLR``: ``(1 - k / total_iters) ** power``, then 0."""
    left = 1.0 - torch.minimum(k, total_iters) / nonzero(total_iters)
    return base_lr * torch.where(total_iters > 0, left**power, 1.0)


def cyclic(
    k: Tensor,
    base_lr: Tensor,
    max_lr: Tensor,
    step_size_up: Tensor,
    step_size_down: Tensor | None,
    mode: str,
    gamma: Tensor,
    cycle_momentum: bool,
    base_momentum: Tensor,
    max_momentum: Tensor,
    target: str,
) -> Tensor:
    """torch ``CyclicLR`` (triangular, triangular2, exp_range); momentum cycles inversely."""
    down = step_size_up if step_size_down is None else step_size_down
    total = step_size_up + down
    ratio = step_size_up / total
    cycle = torch.floor(1 + k / total)
    x = 1.0 + k / total - cycle
    height = torch.where(x <= ratio, x / ratio, (x - 1) / (ratio - 1))
    if mode == "triangular":
        scale: Tensor | float = 1.0
    elif mode == "triangular2":
        scale = 1 / (2.0 ** (cycle - 1))
    else:  # exp_range
        scale = gamma**k
    if target == "momentum":
        return max_momentum - (max_momentum - base_momentum) * height * scale
    return base_lr + (max_lr - base_lr) * height * scale


def one_cycle(
    k: Tensor,
    max_lr: Tensor,
    total_steps: Tensor,
    pct_start: Tensor,
    anneal_strategy: str,
    div_factor: Tensor,
    final_div_factor: Tensor,
    three_phase: bool,
    cycle_momentum: bool,
    base_momentum: Tensor,
    max_momentum: Tensor,
    target: str,
) -> Tensor:
    """torch ``OneCycleLR`` (2 or 3 phases, cos or linear annealing), lr or momentum.

    torch raises after ``total_steps`` steps; here the value is held at step ``total_steps``.
    """
    initial = max_lr / div_factor
    lr = {"initial": initial, "max": max_lr, "min": initial / final_div_factor}
    mom = {"max": max_momentum, "base": base_momentum}
    ends = [pct_start * total_steps - 1, total_steps - 1]
    lr_path, mom_path = ["initial", "max", "min"], ["max", "base", "max"]
    if three_phase:
        ends.insert(1, 2 * pct_start * total_steps - 2)
        lr_path, mom_path = ["initial", "max", "initial", "min"], ["max", "base", "max", "max"]
    values, path = (mom, mom_path) if target == "momentum" else (lr, lr_path)
    k = torch.minimum(k, total_steps)
    starts = [torch.zeros_like(ends[0]), *ends[:-1]]
    out: Tensor | None = None
    for i in reversed(range(len(ends))):  # earlier phases take precedence
        pct = (k - starts[i]) / (ends[i] - starts[i])
        a, b = values[path[i]], values[path[i + 1]]
        if anneal_strategy == "cos":
            v = b + (a - b) / 2.0 * (torch.cos(math.pi * pct) + 1)
        else:
            v = (b - a) * pct + a
        out = v if out is None else torch.where(k <= ends[i], v, out)
    assert out is not None
    return out


def wsd(
    k: Tensor,
    base_lr: Tensor,
    warmup_steps: Tensor,
    stable_steps: Tensor,
    decay_steps: Tensor,
    min_lr: Tensor,
    decay: str,
) -> Tensor:
    """Warm-up, stable, decay (not in torch; Hägele et al. 2024, arXiv:2405.18392).

    Steps ``0 .. W-1`` ramp linearly to ``base_lr`` (``base_lr * (k+1) / W``), the next ``S``
    steps hold ``base_lr``, the next ``D`` steps decay to ``min_lr`` (reached on the last decay
    step) with the shape ``decay`` (linear, cosine or sqrt = ``1 - sqrt(progress)``), and the
    value stays at ``min_lr`` after that.
    """
    W, S = warmup_steps, stable_steps
    warm = base_lr * (k + 1) / nonzero(W)
    p = ((k - W - S + 1) / nonzero(decay_steps)).clamp(0.0, 1.0)
    if decay == "linear":
        f = 1 - p
    elif decay == "cosine":
        f = (1 + torch.cos(math.pi * p)) / 2
    else:  # sqrt
        f = 1 - torch.sqrt(p)
    decayed = min_lr + (base_lr - min_lr) * f
    return torch.where(k < W, warm, torch.where(k < W + S, base_lr, decayed))


def piecewise(k: Tensor, values: Tensor, milestones: Tensor) -> Tensor:
    """Piecewise constant by step (not in torch): ``values[i]`` from milestone ``i - 1`` (0 for
    the first) up to milestone ``i``; ``values`` has one more entry (last dim) than
    ``milestones``. What population-based training discovers (Jaderberg et al. 2017): a value
    held for each interval, changed where a member was exploited or explored."""
    index = (k.unsqueeze(-1) >= milestones).sum(-1)
    shape = torch.broadcast_shapes(index.shape, values.shape[:-1])
    table = values.expand(*shape, values.shape[-1])
    return torch.gather(table, -1, index.expand(shape).unsqueeze(-1)).squeeze(-1)


def sequential(k: Tensor, schedules: list[Schedule], milestones: Tensor) -> Tensor:
    """torch ``SequentialLR``: schedule i runs from milestone i-1, restarted at its step 0."""
    out = schedules[0]._eval(k)
    for j, child in enumerate(schedules[1:]):
        m = milestones[..., j]
        out = torch.where(k >= m, child._eval((k - m).clamp_min(0)), out)
    return out

