"""Training diagnostics: what the gradients and updates look like, and when to worry.

A :class:`Monitor` watches one training run. Every step it sees the training loss (cheap: the
loop has it anyway) and checks for divergence; every ``every``-th step it also records the
global gradient norm, the size of the update relative to the weights, the effective learning
rate and the optimizer's current hyperparameters. From these it raises plain-text warnings,
each kind at most once per run::

    oscillation   the loss goes up and down at almost every step without net progress
    plateau       the loss improved by less than ``plateau_tol`` (relative) over a window
    vanishing     the gradient norm fell below ``vanishing``
    exploding     the gradient norm exceeded ``exploding``, or grew ``growth``-fold in a window

The checks work on plain numbers (:meth:`Monitor.observe`), so they can be fed synthetic
sequences; :meth:`Monitor.before_step` / :meth:`Monitor.after_step` compute those numbers from
a live model and optimizer (the hyperparameters through :func:`metaopt.optim.hyperparams.values`).
:class:`CSVWriter` and :class:`TensorBoardWriter` receive the per-step scalars ``metaopt.train``
logs (any object with ``write(step, scalars)`` and ``close()`` will do).
"""

from __future__ import annotations

import csv
import math
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from metaopt import divergence
from metaopt.optim.hyperparams import values as hyperparameters

Record = dict[str, float]


def global_norm(tensors: Iterable[Tensor]) -> float:
    """The 2-norm of all ``tensors`` taken together (0.0 for none)."""
    norms = [t.detach().norm().double() for t in tensors]
    return float(torch.stack(norms).norm()) if norms else 0.0


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _improvement(values: Sequence[float]) -> float:
    """Relative drop from the mean of the first third of ``values`` to that of the last third
    (averaging thirds smooths minibatch noise)."""
    third = max(1, len(values) // 3)
    first, last = _mean(values[:third]), _mean(values[-third:])
    return (first - last) / max(abs(first), 1e-12)


class Monitor:
    """Diagnostics and divergence detection for one training run.

    Args:
        every: record gradient norm, update ratio, effective lr and hyperparameters every
            ``every`` steps (parameter snapshots cost one copy of the weights per record).
        blowup: divergence when the loss exceeds ``blowup`` times ``max(|first loss|, 1)``, or
            is not finite (:mod:`metaopt.divergence`, the rule every trainer uses).
        window: number of recent losses (and recorded gradient norms) the warnings look at.
        plateau_tol: "plateau" when the loss improved by less than this fraction over a window.
        oscillation: "oscillation" when at least this fraction of successive loss differences
            change sign over a window ...
        progress_tol: ... and the loss improved by less than this fraction over it.
        vanishing: "vanishing" when the gradient norm falls below this.
        exploding: "exploding" when the gradient norm exceeds this ...
        growth: ... or grows by this factor across a window of records.
    """

    def __init__(self, every: int = 1, *, blowup: float = divergence.BLOWUP, window: int = 50,
                 plateau_tol: float = 1e-3, oscillation: float = 0.9, progress_tol: float = 1e-2,
                 vanishing: float = 1e-8, exploding: float = 1e4, growth: float = 100.0) -> None:
        if every < 1 or window < 6:
            raise ValueError(f"Monitor: every must be >= 1 and window >= 6, got every={every}, "
                             f"window={window}")
        self.every, self.blowup, self.window = every, blowup, window
        self.plateau_tol, self.oscillation = plateau_tol, oscillation
        self.progress_tol = progress_tol
        self.vanishing, self.exploding, self.growth = vanishing, exploding, growth
        self.records: list[Record] = []
        self.warnings: list[str] = []
        self.first_loss: float | None = None
        self.diverged: str | None = None
        self.diverged_at: int | None = None
        self._losses: list[float] = []  # the last `window` losses
        self._grad_norms: list[float] = []  # the last `window` recorded gradient norms
        self._snapshot: list[Tensor] | None = None

    # -- the numbers ----------------------------------------------------------------------
    def due(self, step: int) -> bool:
        """Whether ``step`` gets a full record."""
        return step % self.every == 0

    def observe(self, step: int, loss: float, **scalars: float) -> str | None:
        """Feed one step's training loss (and, on recorded steps, ``grad_norm`` and other
        scalars, which become a record). Returns the divergence reason, or None."""
        if scalars:
            self.records.append({"step": step, "loss": loss, **scalars})
        if self.diverged is not None:
            return self.diverged
        reason = self._divergence(step, loss)
        if reason is not None:
            self.diverged, self.diverged_at = reason, step
            return reason
        self._losses = (self._losses + [loss])[-self.window:]
        self._check_loss(step)
        grad_norm = scalars.get("grad_norm")
        if grad_norm is not None:
            self._grad_norms = (self._grad_norms + [grad_norm])[-self.window:]
            self._check_gradients(step, grad_norm)
        return None

    def _divergence(self, step: int, loss: float) -> str | None:
        if self.first_loss is None and math.isfinite(loss):
            self.first_loss = loss
        return divergence.check(loss, self.first_loss or 0.0, step, self.blowup)

    def warn(self, kind: str, message: str) -> None:
        """Add ``"kind: message"`` unless a warning of this kind was already given."""
        if not any(w.startswith(kind + ":") for w in self.warnings):
            self.warnings.append(f"{kind}: {message}")

    def _check_loss(self, step: int) -> None:
        losses = self._losses
        if len(losses) < self.window:
            return
        span = f"steps {step - self.window + 1}-{step}"
        improvement = _improvement(losses)
        diffs = [b - a for a, b in zip(losses, losses[1:])]
        flips = sum(1 for a, b in zip(diffs, diffs[1:]) if a * b < 0) / (len(diffs) - 1)
        if flips >= self.oscillation and improvement < self.progress_tol:
            self.warn("oscillation", f"over {span} the loss alternated up and down at "
                      f"{flips:.0%} of steps without net progress (learning rate too high?)")
        if improvement < self.plateau_tol:
            self.warn("plateau", f"the loss improved by less than {self.plateau_tol:g} "
                      f"(relative) over {span}")

    def _check_gradients(self, step: int, grad_norm: float) -> None:
        if grad_norm < self.vanishing:
            self.warn("vanishing", f"gradient norm {grad_norm:.3g} < {self.vanishing:g} at "
                      f"step {step}")
        if grad_norm > self.exploding:
            self.warn("exploding", f"gradient norm {grad_norm:.3g} > {self.exploding:g} at "
                      f"step {step}")
        norms = self._grad_norms
        if len(norms) >= self.window:
            third = len(norms) // 3
            first, last = _mean(norms[:third]), _mean(norms[-third:])
            if first > 0 and last > self.growth * first:
                self.warn("exploding", f"the gradient norm grew {last / first:.3g}x over the "
                          f"{self.window} records up to step {step}")

    # -- from a live model ----------------------------------------------------------------
    def before_step(self, step: int, params: Sequence[Tensor]) -> None:
        """Snapshot the parameters when ``step`` will be recorded."""
        self._snapshot = [p.detach().clone() for p in params] if self.due(step) else None

    def after_step(self, step: int, loss: float, params: Sequence[Tensor],
                   optimizer: torch.optim.Optimizer) -> str | None:
        """Check (and on recorded steps, record) the step just taken; returns the divergence
        reason or None. ``params``' ``.grad`` holds the gradient the step used."""
        if self._snapshot is None:
            return self.observe(step, loss)
        before, self._snapshot = self._snapshot, None
        grad_norm = global_norm(p.grad for p in params if p.grad is not None)
        update = global_norm(p.detach() - b for p, b in zip(params, before))
        weights = global_norm(params)
        scalars = {
            "grad_norm": grad_norm,
            "update_norm": update,
            "param_norm": weights,
            "update_ratio": update / weights if weights > 0 else math.nan,
            "effective_lr": update / grad_norm if grad_norm > 0 else math.nan,
            **hyperparameters(optimizer),
        }
        reason = self.observe(step, loss, **scalars)
        if reason is None and not math.isfinite(weights):
            reason = self.check_params(step, params)
        return reason

    def check_params(self, step: int, params: Iterable[Tensor]) -> str | None:
        """Divergence when any parameter is NaN or infinite; returns the reason or None."""
        if self.diverged is None and not all(bool(torch.isfinite(p).all()) for p in params):
            self.diverged, self.diverged_at = f"parameters non-finite at step {step}", step
        return self.diverged

    # -- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain Python values (loadable with ``torch.load(..., weights_only=True)``)."""
        return {"records": [dict(r) for r in self.records], "warnings": list(self.warnings),
                "first_loss": self.first_loss, "diverged": self.diverged,
                "diverged_at": self.diverged_at, "losses": list(self._losses),
                "grad_norms": list(self._grad_norms)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.records = [dict(r) for r in state["records"]]
        self.warnings = list(state["warnings"])
        self.first_loss, self.diverged = state["first_loss"], state["diverged"]
        self.diverged_at = state["diverged_at"]
        self._losses, self._grad_norms = list(state["losses"]), list(state["grad_norms"])


def progress_bar(progress: bool | None, total: int, desc: str, **options: Any) -> Any:
    """A tqdm bar for long work, or None: ``progress=None`` shows one only when stderr is a
    terminal (so logs and CI output stay clean)."""
    if not (sys.stderr.isatty() if progress is None else progress):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, dynamic_ncols=True, leave=False, **options)


# -- logging ------------------------------------------------------------------------------
class CSVWriter:
    """Per-step scalars to a CSV file: a ``step`` column, then one column per scalar name.

    Writes for the same step are merged into one row (training scalars of step ``k`` and the
    validation loss measured at the same weights). The header grows when a new name appears
    (the file is then rewritten); cells a step lacks stay empty. The file is truncated when the
    writer is created.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.columns: list[str] = ["step"]
        self._rows: list[dict[str, float]] = []
        self._pending: dict[str, float] | None = None
        self.path.write_text("")

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if self._pending is not None and self._pending["step"] != step:
            self._emit(self._pending)
            self._pending = None
        if self._pending is None:
            self._pending = {"step": step}
        self._pending.update(scalars)

    def _emit(self, row: dict[str, float]) -> None:
        self._rows.append(row)
        new = [key for key in row if key not in self.columns]
        if new or len(self._rows) == 1:
            self.columns += new
            with self.path.open("w", newline="") as f:
                out = csv.DictWriter(f, self.columns)
                out.writeheader()
                out.writerows(self._rows)
        else:
            with self.path.open("a", newline="") as f:
                csv.DictWriter(f, self.columns).writerow(row)

    def flush(self) -> None:
        if self._pending is not None:
            self._emit(self._pending)
            self._pending = None

    def close(self) -> None:
        self.flush()


class TensorBoardWriter:
    """Per-step scalars as TensorBoard events in ``logdir`` (one tag per scalar name)."""

    def __init__(self, logdir: str | os.PathLike) -> None:
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        self.logdir = Path(logdir)
        self._writer = SummaryWriter(log_dir=str(self.logdir))

    def write(self, step: int, scalars: dict[str, float]) -> None:
        for name, value in scalars.items():
            self._writer.add_scalar(name, value, step)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
