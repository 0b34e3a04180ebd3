"""A stacked population's forward written out by hand: P members' ``nn.Linear`` layers as one
batched matmul each (``baddbmm``; a ``matmul`` broadcasting one shared input batch over the
members), parameter-free elementwise layers applied to the whole ``[P, batch, ...]`` tensor,
and the task's loss on the models' outputs computed for every member in one call
(:class:`metaopt.tasks.losses.Supervised`) or vmapped over members.

``vmap`` over ``functional_call`` of the whole model gives the same numbers but pays for
its generality on every op (its batching rules move the member dimension around, and the
backward of each elementwise op then runs on strided tensors): on the digits MLP at P = 32
the hand-batched forward and backward take less than half its time.

:func:`program` says whether a model can be batched this way (an ``nn.Linear``, or an
``nn.Sequential`` of them and parameter-free elementwise layers) and :func:`model_input`
which element of a batch the task's loss feeds to the model unchanged; the engine checks the
losses against the vmapped ones on its first step and keeps ``vmap`` where they differ.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import vmap

from metaopt.tasks.task import Task

ELEMENTWISE = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.SiLU, nn.LeakyReLU, nn.ELU,
               nn.Softplus, nn.Mish, nn.Hardtanh, nn.Identity)
# in place on a tensor the program made itself (a layer's fresh output): one allocation less
# per layer; each of these saves its result, not its input, for the backward
IN_PLACE = {nn.ReLU: torch.relu_, nn.Tanh: torch.tanh_, nn.Sigmoid: torch.sigmoid_}
Program = Callable[[dict[str, Tensor], Tensor, bool], Tensor]


def _layers(model: nn.Module) -> list[tuple[str, nn.Module]] | str:
    """``(parameter prefix, layer)`` in order, or why the model can't be batched by hand."""
    if isinstance(model, nn.Linear):
        return [("", model)]
    if not isinstance(model, nn.Sequential):
        return f"{type(model).__name__} is not an nn.Linear or nn.Sequential"
    out = []
    for name, layer in model.named_children():
        if isinstance(layer, nn.Linear):
            out.append((f"{name}.", layer))
        elif isinstance(layer, ELEMENTWISE) and not any(True for _ in layer.parameters()):
            out.append((f"{name}.", layer))
        else:
            return f"layer {name} ({type(layer).__name__}) has no hand-batched form"
    if any(True for _ in model.buffers()):
        return "the model has buffers"
    return out


def program(model: nn.Module) -> Program | str:
    """The hand-batched forward of ``model`` (a template member), or why there is none. The
    program takes the stacked parameters (``[P, ...]`` by ``named_parameters`` name), the
    input (``[P, batch, ..., in]``, or ``[batch, ..., in]`` shared by every member) and
    whether the input is shared, and returns ``[P, batch, ..., out]``."""
    layers = _layers(model)
    if isinstance(layers, str):
        return layers

    def forward(params: dict[str, Tensor], x: Tensor, shared: bool) -> Tensor:
        h, members, fresh = x, not shared, False
        for prefix, layer in layers:
            if not isinstance(layer, nn.Linear):
                in_place = IN_PLACE.get(type(layer)) if fresh else None
                h = in_place(h) if in_place is not None else layer(h)
                continue
            weight, bias = params[f"{prefix}weight"], params.get(f"{prefix}bias")
            h = _linear(h, weight, bias, members)
            members, fresh = True, h._base is None  # in place on a view: autograd copies
        return h

    return forward


def _linear(h: Tensor, weight: Tensor, bias: Tensor | None, members: bool) -> Tensor:
    """``h @ Wᵀ + b`` per member: ``h`` is ``[P, batch, ..., in]`` (or, before the first
    layer of a shared input, ``[batch, ..., in]``), ``weight`` ``[P, out, in]``."""
    P = weight.shape[0]
    lead = h.shape[1:-1] if members else h.shape[:-1]
    flat = h.reshape(P, -1, h.shape[-1]) if members else h.reshape(-1, h.shape[-1])
    if not members:  # one input for every member: a broadcast matmul, no P copies of it
        out = torch.matmul(flat, weight.transpose(1, 2))
        if bias is not None:
            out = out + bias.unsqueeze(1)
    elif bias is not None:
        out = torch.baddbmm(bias.unsqueeze(1), flat, weight.transpose(1, 2))
    else:
        out = torch.bmm(flat, weight.transpose(1, 2))
    shape = (P, *lead, weight.shape[1])
    return out if out.shape == shape else out.reshape(shape)


class _Returns:
    """A stand-in model for the task's loss: returns the output already computed."""

    def __init__(self, output: Tensor) -> None:
        self.output = output

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        return self.output


def model_input(task: Task, template: nn.Module, batch: Any) -> int | str:
    """Which element of ``batch`` (one member's) the task's loss passes to the model, as is
    (``-1``: the batch itself is the input), or why that can't be told: the loss calls the
    model more or less than once, or on something else (a slice, a reshaped tensor)."""
    seen: list[tuple] = []

    class Recorder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = template

        def forward(self, *args: Any, **kwargs: Any) -> Tensor:
            seen.append((args, kwargs))
            return self.inner(*args, **kwargs)

    with torch.no_grad():
        task.loss(Recorder(), batch)
    if len(seen) != 1 or len(seen[0][0]) != 1 or seen[0][1]:
        return f"the loss calls the model {len(seen)} times or with several arguments"
    x = seen[0][0][0]
    if isinstance(batch, Tensor):
        return -1 if x is batch else "the loss does not pass the batch to the model as is"
    for i, part in enumerate(batch):
        if x is part:
            return i
    return "the loss does not pass a batch element to the model as is"


def losses(task: Task, output: Tensor, batch: Any, shared: bool) -> Tensor:
    """Each member's loss from its model output (``output[i]``) and its batch (``batch`` is
    every member's, stacked, or one batch shared by all): in one call where the loss knows
    how (:class:`metaopt.tasks.losses.Supervised`), else the task's loss vmapped over the
    members with a stand-in model that returns the output."""
    members = getattr(task.loss, "members", None)
    if members is not None:
        return members(output, batch, shared)
    return vmap(lambda out, b: task.loss(_Returns(out), b),
                in_dims=(0, None if shared else 0))(output, batch)


def inputs(batch: Any, index: int) -> Tensor:
    return batch if index == -1 else batch[index]
