"""The shipped learned optimizer: a per-tensor LSTM steering a tiny per-coordinate network.

Why not the paper's per-coordinate LSTM: it keeps 80 floats of state per parameter and costs
thousands of FLOPs per coordinate per step. Here every coordinate keeps Adam-style
accumulators (momentum at a few time scales and a second moment) and reads scale-free,
RNNprop-style features, normalised two ways: per coordinate (``g/√v̂``, ``m̂/√v̂``: Adam's
direction) and per tensor (``g/ν``, ``m̂/ν`` with ``ν² = mean(v̂)`` over the tensor: momentum
SGD's direction, which is what works on a coupled quadratic). A tiny network maps them to
a bounded direction (softsign). It is *odd* — flipping the sign of every gradient flips the
update — because each unit is ``relu(a + b) − relu(b − a)``, so it cannot learn a drift the
problem does not have. One small LSTM per tensor (per member of a population) reads summary
statistics of its tensor (gradient surprise, gradient/momentum alignment — the signal of
oscillation or steady progress — and step time) and sets that tensor's step size, feature
weights and unit thresholds: the step-size control tuned Adam lacks, for the price of a few
reductions. The per-coordinate part is one elementwise kernel (:func:`coordinate_step`) that
fuses under ``torch.compile`` into a single pass over the parameters.

The LSTM reads the previous step's per-coordinate statistics plus the current tensor-level
gradient size, so one pass both applies this step and measures the next one's inputs.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from learned.features import bias_correction, member_mean, squash, time_features

LOG_STEP_RANGE = 3.0  # the per-tensor LSTM moves the step size by at most e^±3


def coordinate_step(grad: Tensor, moments: list[Tensor], v: Tensor, coef: dict[str, Any],
                    w1: Tensor, w2: Tensor, unrolled: bool = False
                    ) -> tuple[Tensor, list[Tensor], Tensor, Tensor]:
    """One update of ``[P, N]`` coordinates: returns ``(delta, moments, v, stats)``.

    ``coef`` holds Python floats (``one_minus`` per momentum, ``one_minus_v``, ``eps``) and
    per-member tensors (``bias_m`` per momentum, ``bias_v``, ``inv_nu`` (1/ν), ``eta``:
    ``[P, 1]``; ``alpha``: ``[P, k]`` feature weights; ``bias``: ``[P, H]`` unit thresholds).
    ``stats`` (``[P, 2 + n_m]``) are per-member means the per-tensor LSTM reads next step.
    ``unrolled`` writes the tiny network as elementwise ops with a Python loop over its units
    (inductor fuses it into one loop); otherwise it is small matmuls (fewer eager ops, the
    faster choice under autograd). Both compute the same function.
    """
    v = v + coef["one_minus_v"] * (grad * grad - v)
    r = torch.rsqrt(v * coef["bias_v"] + coef["eps"] ** 2)  # smooth at v = 0 (2nd order)
    inv_nu = coef["inv_nu"]
    fg = grad * r
    coordinate, tensor, new_moments, align = [fg], [grad * inv_nu], [], []
    for m, one_minus, bias in zip(moments, coef["one_minus"], coef["bias_m"]):
        align.append(fg * m * bias * r)  # the old momentum against the new gradient
        m = m + one_minus * (grad - m)
        new_moments.append(m)
        coordinate.append(m * bias * r)
        tensor.append(m * (bias * inv_nu))
    features = coordinate + tensor
    head = _head_unrolled if unrolled else _head_matmul
    out = head(features, coef, w1, w2)
    direction = out / (1.0 + out.abs())
    delta = -coef["eta"] * direction
    stats = torch.stack([(fg * fg).mean(dim=1), direction.abs().mean(dim=1),
                         *[a.mean(dim=1) for a in align]], dim=1)
    return delta, new_moments, v, stats


def _head_unrolled(features: list[Tensor], coef: dict[str, Any], w1: Tensor,
                   w2: Tensor) -> Tensor:
    alpha, bias = coef["alpha"], coef["bias"]
    out = alpha[:, 0:1] * features[0]
    for k in range(1, len(features)):
        out = out + alpha[:, k:k + 1] * features[k]
    for j in range(w2.shape[0]):
        a = w1[0, j] * features[0]
        for k in range(1, len(features)):
            a = a + w1[k, j] * features[k]
        b = bias[:, j:j + 1]
        out = out + w2[j] * (torch.relu(a + b) - torch.relu(b - a))
    return out


def _head_matmul(features: list[Tensor], coef: dict[str, Any], w1: Tensor,
                 w2: Tensor) -> Tensor:
    f = torch.stack(features, dim=-1)  # [P, N, k]
    a = f @ w1.to(f.dtype)
    b = coef["bias"].unsqueeze(1)
    units = torch.relu(a + b) - torch.relu(b - a)
    return (f * coef["alpha"].unsqueeze(1)).sum(-1) + units @ w2.to(f.dtype)


class PerTensorNet(nn.Module):
    """Per-tensor LSTM + per-coordinate network (see the module docstring).

    State per parameter (``[P, ...]`` stacked members): ``len(betas)`` momenta and one second
    moment per coordinate; per tensor a step count, the LSTM's ``h``/``c``, the mean second
    moment and the last step's statistics.
    """

    kind = "per_tensor"

    def __init__(self, betas: tuple[float, ...] = (0.9, 0.99), beta_v: float = 0.999,
                 hidden: int = 6, rnn_hidden: int = 16,
                 time_scales: tuple[float, ...] = (10.0, 100.0, 1000.0), eps: float = 1e-8,
                 init_lr: float = 0.03) -> None:
        super().__init__()
        self.betas, self.beta_v = tuple(float(b) for b in betas), float(beta_v)
        self.hidden, self.rnn_hidden = int(hidden), int(rnn_hidden)
        self.time_scales, self.eps, self.init_lr = tuple(map(float, time_scales)), eps, init_lr
        n_m = len(self.betas)
        k = 2 * (1 + n_m)
        self.n_stats = 2 + n_m
        alpha = torch.zeros(k)
        alpha[1 + min(range(n_m), key=lambda i: abs(self.betas[i] - 0.9))] = 1.0
        self.log_eta = nn.Parameter(torch.tensor(math.log(init_lr)))
        self.alpha = nn.Parameter(alpha)  # starts as Adam-like m̂/√v̂
        self.w1 = nn.Parameter(torch.randn(k, self.hidden) / math.sqrt(k))
        self.b1 = nn.Parameter(torch.zeros(self.hidden))
        self.w2 = nn.Parameter(torch.zeros(self.hidden))
        if self.rnn_hidden > 0:
            self.cell = nn.LSTMCell(len(self.time_scales) + self.n_stats + 1, self.rnn_hidden)
            self.head = nn.Linear(self.rnn_hidden, 1 + k + self.hidden)
            nn.init.zeros_(self.head.weight)  # starts as the fixed rule the base weights say
            nn.init.zeros_(self.head.bias)

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "betas": list(self.betas), "beta_v": self.beta_v,
                "hidden": self.hidden, "rnn_hidden": self.rnn_hidden,
                "time_scales": list(self.time_scales), "eps": self.eps,
                "init_lr": self.init_lr}

    def init_state(self, param: Tensor) -> dict[str, Tensor]:
        """Fresh state for ``param`` (``[P, ...]``), contiguous."""
        P = param.shape[0]
        like = {"dtype": param.dtype, "device": param.device}
        state = {"step": torch.zeros(P, **like), "v": torch.zeros(param.shape, **like),
                 "mean_v": torch.zeros(P, **like),
                 "h": torch.zeros(P, self.rnn_hidden, **like),
                 "c": torch.zeros(P, self.rnn_hidden, **like),
                 "stats": torch.zeros(P, self.n_stats, **like)}
        for i in range(len(self.betas)):
            state[f"m{i}"] = torch.zeros(param.shape, **like)
        return state

    def coefficients(self, state: dict[str, Tensor], lr: Tensor,
                     grad_sq: Tensor) -> tuple[dict[str, Any], dict[str, Tensor]]:
        """The per-tensor part, given ``grad_sq`` (``[P]``: the mean squared gradient of
        each member's tensor): advance the LSTM and turn its output into coefficients for
        :func:`coordinate_step`. Returns ``(coef, new per-tensor state)``."""
        step = state["step"] + 1
        dtype = step.dtype
        bias_v = bias_correction(self.beta_v, step)
        mean_v = state["mean_v"] + (1.0 - self.beta_v) * (grad_sq - state["mean_v"])
        scale = mean_v * bias_v  # mean of v̂ over the tensor: ν²
        surprise = grad_sq / (scale + self.eps ** 2)
        inputs = torch.cat([time_features(state["step"], self.time_scales),
                            squash(state["stats"]), squash(surprise).unsqueeze(1)], dim=1)
        k = 2 * (1 + len(self.betas))
        if self.rnn_hidden == 0:  # ablation: a fixed rule, no per-tensor control
            h, c = state["h"], state["c"]
            out = inputs.new_zeros(len(step), 1 + k + self.hidden)
        else:
            net_dtype = self.cell.weight_ih.dtype  # the network's precision, not the params'
            h, c = self.cell(inputs.to(net_dtype),
                             (state["h"].to(net_dtype), state["c"].to(net_dtype)))
            out = self.head(h).to(dtype)
            h, c = h.to(dtype), c.to(dtype)
        log_step = LOG_STEP_RANGE * torch.tanh(out[:, 0] / LOG_STEP_RANGE)
        col = lambda x: x.unsqueeze(1)  # noqa: E731  [P] -> [P, 1]
        lr = lr.expand(step.shape) if lr.dim() == 0 else lr
        coef: dict[str, Any] = {
            "one_minus": [1.0 - b for b in self.betas], "one_minus_v": 1.0 - self.beta_v,
            "eps": self.eps,
            "bias_m": [col(bias_correction(b, step)) for b in self.betas],
            "bias_v": col(bias_v),
            "inv_nu": col(torch.rsqrt(scale + self.eps ** 2)),
            "alpha": self.alpha.to(dtype) + out[:, 1:1 + k],
            "bias": self.b1.to(dtype) + out[:, 1 + k:],
            "eta": col(torch.exp(self.log_eta.to(dtype) + log_step) * lr.to(dtype)),
        }
        return coef, {"step": step, "h": h, "c": c, "mean_v": mean_v}

    def forward(self, grad: Tensor, state: dict[str, Tensor],
                lr: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """``(delta, new_state)`` for ``grad`` (``[P, ...]``); pure, differentiable."""
        coef, new = self.coefficients(state, lr, member_mean(grad * grad))
        P = grad.shape[0]
        flat = lambda x: x.reshape(P, -1)  # noqa: E731
        moments = [flat(state[f"m{i}"]) for i in range(len(self.betas))]
        delta, moments, v, stats = coordinate_step(flat(grad), moments, flat(state["v"]), coef,
                                                   self.w1, self.w2)
        new.update({"v": v.view_as(grad), "stats": stats})
        new.update({f"m{i}": m.view_as(grad) for i, m in enumerate(moments)})
        return delta.view_as(grad), new
