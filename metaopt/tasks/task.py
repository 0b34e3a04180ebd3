"""The Task protocol: everything the framework needs to train and score one workload.

A task is plain data: five callables and a budget. The framework seeds torch and calls
``model()``; gives each run (each population member) its own ``torch.Generator`` for ``data``;
and scores the result with ``evaluate``. Tasks that are not "one loss on one module" (a GAN's
two players, on-policy RL) bring their own ``train_step``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import torch
from torch import Tensor, nn

Batch: TypeAlias = Tensor | tuple[Tensor, ...]
TrainStep: TypeAlias = Callable[[nn.Module, torch.optim.Optimizer, Batch], Tensor]


class LossModule(nn.Module):
    """``loss(inner, batch)`` as a module, so ``torch.func.functional_call`` can swap inner's
    tensors (stacked members, vmapped problems) while the task's own loss function runs."""

    def __init__(self, loss: Callable[[nn.Module, Batch], Tensor], inner: nn.Module) -> None:
        super().__init__()
        self.loss, self.inner = loss, inner

    def forward(self, batch: Batch) -> Tensor:
        return self.loss(self.inner, batch)


@dataclass(frozen=True)
class Phase:
    """One optimizer step of a task that takes several per batch: ``loss(module, batch)`` is
    backpropagated, then only the parameters whose names start with ``trains`` are stepped
    (the others' grads are set to None, so the optimizer skips them: no update, no moment
    decay, no weight decay)."""

    trains: str
    loss: Callable[[nn.Module, Batch], Tensor]


@dataclass(frozen=True)
class PhasedTrainStep:
    """A ``train_step`` of one optimizer step per phase, in order; it returns the first
    phase's loss. The phases stay readable on it (``.phases``), so a population trainer can
    run the same steps on stacked members. A dataclass, so a task holding it pickles."""

    phases: tuple[Phase, ...]

    def __call__(self, module: nn.Module, optimizer: torch.optim.Optimizer,
                 batch: Batch) -> Tensor:
        first = None
        for phase in self.phases:
            optimizer.zero_grad()
            value = phase.loss(module, batch)
            value.backward()
            for name, p in module.named_parameters():
                if not name.startswith(phase.trains):
                    p.grad = None
            optimizer.step()
            first = value.detach() if first is None else first
        return first


def phased_train_step(*phases: Phase) -> PhasedTrainStep:
    return PhasedTrainStep(tuple(phases))


def _default_hparams() -> dict[str, Any]:
    return {"lr": 1e-3}


@dataclass
class Task:
    """A training workload: model, loss, data, validation score and default budget.

    - ``model()`` builds a fresh ``nn.Module``; the caller seeds torch first
      (``torch.manual_seed``), so initialisation is reproducible.
    - ``loss(module, batch)`` returns the scalar training loss.
    - ``data(generator)`` yields batches forever (a tensor or a tuple of tensors), drawing all
      randomness from ``generator`` only: the same generator state gives the same batches.
    - ``evaluate(module)`` returns the validation loss as a float (lower is better); it is
      deterministic and runs under ``torch.no_grad``.
    - ``steps`` is the default number of training steps (batches).
    - ``default_optimizer`` / ``default_hparams``: a lower-case ``torch.optim`` name and its keyword
      arguments that train the task well; ``target`` is the validation loss they reach within
      ``steps`` at seeds 0, 1 and 2, with a margin (``inf``: no target declared).
    - ``train_step(module, optimizer, batch) -> Tensor``: for tasks that do not fit one loss on one
      module. It does its own ``zero_grad``/``backward``/``step`` calls on the single optimizer
      given (which covers all of ``module``'s parameters) and returns a detached scalar to log.
      It may call ``optimizer.step()`` more than once per batch; parameters it does not want
      updated in a given call have ``grad = None`` (optimizers skip those).
    - ``grad_evals_per_step``: forward+backward passes one step costs (budgets count these); a
      GAN's train_step with two players costs 2.
    - ``vmap_ok``: False when a population trainer cannot ``torch.func.vmap`` the loss over stacked
      members (BatchNorm, dropout, or an own ``train_step`` other than a
      :func:`phased_train_step`); it then loops over members.
    """

    name: str
    model: Callable[[], nn.Module]
    loss: Callable[[nn.Module, Batch], Tensor]
    data: Callable[[torch.Generator], Iterator[Batch]]
    evaluate: Callable[[nn.Module], float]
    steps: int
    default_optimizer: str = "adam"
    default_hparams: dict[str, Any] = field(default_factory=_default_hparams)
    target: float = math.inf
    train_step: TrainStep | None = None
    vmap_ok: bool = True
    description: str = ""
    grad_evals_per_step: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"Task.name must be a non-empty string, got {self.name!r}")
        for attr in ("model", "loss", "data", "evaluate"):
            if not callable(getattr(self, attr)):
                raise TypeError(f"Task {self.name!r}: {attr} must be callable")
        if self.train_step is not None and not callable(self.train_step):
            raise TypeError(f"Task {self.name!r}: train_step must be callable or None")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(
                f"Task {self.name!r}: steps must be a positive int, got {self.steps!r}"
            )
        if self.default_optimizer != self.default_optimizer.lower():
            raise ValueError(
                f"Task {self.name!r}: default_optimizer must be a lower-case registry name, "
                f"got {self.default_optimizer!r}"
            )


def take_step(task: Task, module: nn.Module, optimizer: torch.optim.Optimizer,
              batch: Batch) -> tuple[Tensor, int]:
    """One training step on ``batch``, the one every trainer takes: the task's ``train_step``,
    or ``optimizer.step`` with a closure (zero_grad, loss, backward: every torch optimizer
    accepts one, L-BFGS and line searches need one). Returns the detached loss at the weights
    before the step and the gradient evaluations spent (closure calls, or the task's
    ``grad_evals_per_step``)."""
    if task.train_step is not None:
        return task.train_step(module, optimizer, batch).detach(), task.grad_evals_per_step
    losses: list[Tensor] = []

    def closure() -> Tensor:
        optimizer.zero_grad()
        value = task.loss(module, batch)
        value.backward()
        losses.append(value.detach())
        return value

    optimizer.step(closure)
    if not losses:
        raise RuntimeError(f"{type(optimizer).__name__}.step(closure) never called the closure")
    return losses[0], len(losses)


def module_device(module: nn.Module) -> torch.device:
    """The device of ``module``'s first parameter (CPU for a module without parameters)."""
    for p in module.parameters():
        return p.device
    return torch.device("cpu")
