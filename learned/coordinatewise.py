"""The paper's learned optimizer: one small LSTM shared by every coordinate.

Andrychowicz et al. (2016), "Learning to learn by gradient descent by gradient descent":
a 2-layer, 20-unit LSTM whose batch is the set of all coordinates; each coordinate keeps its
own hidden state (``2 · 2 · 20 = 80`` floats per parameter); the input is the gradient,
preprocessed to ``(log|g|/p, sgn g)`` (p = 10, appendix A) or raw (the paper's quadratic);
the update is a linear read-out of the top hidden state times ``output_scale`` (0.1 for MNIST
in the paper), added to the parameters: ``θ ← θ + LSTM(∇)``. Kept as an option to reproduce
the paper; it is far too costly per parameter to be the default.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from learned.features import log_sign


class CoordinatewiseLSTM(nn.Module):
    """A ``layers``×``hidden`` LSTM applied to every coordinate independently."""

    kind = "coordinatewise"

    def __init__(self, hidden: int = 20, layers: int = 2, preprocess: str = "logsign",
                 p: float = 10.0, output_scale: float = 0.1) -> None:
        super().__init__()
        if preprocess not in ("logsign", "none"):
            raise ValueError(f"preprocess must be 'logsign' or 'none', got {preprocess!r}")
        self.hidden, self.layers = int(hidden), int(layers)
        self.preprocess, self.p, self.output_scale = preprocess, float(p), float(output_scale)
        width = 2 if preprocess == "logsign" else 1
        self.cells = nn.ModuleList(
            nn.LSTMCell(width if i == 0 else self.hidden, self.hidden) for i in range(layers))
        self.out = nn.Linear(self.hidden, 1)

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "hidden": self.hidden, "layers": self.layers,
                "preprocess": self.preprocess, "p": self.p, "output_scale": self.output_scale}

    def init_state(self, param: Tensor) -> dict[str, Tensor]:
        """Zero ``h``/``c`` per layer, ``[P, numel, hidden]`` for ``param`` (``[P, ...]``)."""
        P, n = param.shape[0], param[0].numel()
        state = {}
        for i in range(self.layers):
            for name in ("h", "c"):
                state[f"{name}{i}"] = param.new_zeros(P, n, self.hidden)
        return state

    def forward(self, grad: Tensor, state: dict[str, Tensor],
                lr: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """``(delta, new_state)``: every coordinate is one row of the LSTM's batch."""
        P = grad.shape[0]
        g = grad.reshape(-1, 1)
        if self.preprocess == "logsign":
            x = torch.cat(log_sign(g, self.p), dim=1)
        else:
            x = g
        dtype = self.out.weight.dtype  # the network's precision, whatever the params'
        x, new = x.to(dtype), {}
        for i, cell in enumerate(self.cells):
            h, c = cell(x, (state[f"h{i}"].reshape(-1, self.hidden).to(dtype),
                            state[f"c{i}"].reshape(-1, self.hidden).to(dtype)))
            new[f"h{i}"] = h.view(P, -1, self.hidden).to(grad.dtype)
            new[f"c{i}"] = c.view(P, -1, self.hidden).to(grad.dtype)
            x = h
        scale = lr.to(grad.dtype).reshape(-1, *([1] * (grad.dim() - 1))) if lr.dim() else lr
        delta = self.out(x).to(grad.dtype).view_as(grad) * self.output_scale * scale
        return delta, new
