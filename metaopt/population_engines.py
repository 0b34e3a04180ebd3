"""Engines that step P copies of a task's model: stacked (one vmapped program) or a loop.

Both give member ``i`` exactly what ``metaopt.train(task, ..., seed=seeds[i])`` gives: its model
is built right after ``torch.manual_seed(seeds[i])`` and its batches come from
``task.data(torch.Generator().manual_seed(seeds[i]))``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from metaopt import population_batched as batched
from metaopt.optim import hyperparams
from metaopt.optim.modes import evaluating, train_mode
from metaopt.tasks.datasets import Minibatches
from metaopt.tasks.task import LossModule, Task, take_step

OptimizerFactory = Callable[..., torch.optim.Optimizer]


def build_member(task: Task, seed: int, device: torch.device | str) -> nn.Module:
    torch.manual_seed(seed)
    return task.model().to(device)


def member_data(task: Task, seed: int) -> Iterator:
    return task.data(torch.Generator().manual_seed(seed))


def stack_batches(batches: Sequence[Any], device: torch.device | str) -> Any:
    first = batches[0]
    if isinstance(first, Tensor):
        return torch.stack(batches).to(device)
    return type(first)(torch.stack(parts).to(device) for parts in zip(*batches))


def stacked_hparams(hparams: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Members' keyword dicts -> one dict of per-member lists (``betas`` -> two lists).
    Non-numeric options (``nesterov``, ``amsgrad``, ...) must agree across members."""
    keys = set(hparams[0])
    for i, h in enumerate(hparams):
        if set(h) != keys:
            raise ValueError(f"member {i} sets hyperparameters {sorted(h)}, member 0 sets "
                             f"{sorted(keys)}: every member must set the same keys")
    out: dict[str, Any] = {}
    for key in keys:
        values = [h[key] for h in hparams]
        first = values[0]
        if isinstance(first, (tuple, list)):
            out[key] = tuple([float(v[j]) for v in values] for j in range(len(first)))
        elif isinstance(first, (bool, str)) or first is None:
            if any(v != first for v in values):
                raise ValueError(f"hyperparameter {key!r} differs across members "
                                 f"({sorted(set(map(str, values)))}); a population shares "
                                 f"non-numeric options")
            out[key] = first
        else:
            out[key] = [float(v) for v in values]
    return out


FORWARDS = ("auto", "batched", "vmap", "members")


class StackedEngine:
    """All members as one program: parameters stacked ``[P, ...]``, one optimizer with
    ``population=P`` stepping them together, and the members' losses computed one of three
    ways (``forward``): ``"batched"``, the model's layers written as batched matmuls
    (:mod:`metaopt.population_batched`: MLPs), ``"vmap"``, the loss vmapped over the member
    dimension (any vmappable model), or ``"members"``, member by member on slices of the
    stacked parameters (large, compute-bound members, whose single matmuls beat batched
    ones). ``"auto"``: batched where the model allows it and its first losses equal the
    vmapped ones, else vmap; for large members the first steps time that against members
    and keep the faster. Gradients land in the same stacked buffers every way.

    When every member draws the same rows (members sharing a data seed, as a search's trials
    do) the batch is drawn once and broadcast rather than gathered P times."""

    mode = "stacked"
    TRIAL_STEPS = (1, 2)  # step 0 warms up; step 1 times batched/vmap, step 2 members
    TRIAL_MIN_NUMEL = 1 << 16  # smaller members are overhead-bound: no trial

    def __init__(self, task: Task, make_optimizer: OptimizerFactory,
                 hparams: Sequence[Mapping[str, Any]], seeds: Sequence[int],
                 device: torch.device | str = "cpu", forward: str = "auto") -> None:
        if forward not in FORWARDS:
            raise ValueError(f"forward must be one of {', '.join(FORWARDS)}, got {forward!r}")
        self.task, self.device, self.P = task, device, len(seeds)
        self.make_optimizer = make_optimizer
        members = [build_member(task, s, device) for s in seeds]
        numel = sum(p.numel() for p in members[0].parameters())
        params, buffers = stack_module_state(members)
        self.params = params
        self.buffers = buffers
        self.template = copy.deepcopy(members[0])
        loss_module = LossModule(task.loss, copy.deepcopy(members[0]))
        self._tensors = ({f"inner.{k}": v for k, v in params.items()},
                         {f"inner.{k}": v for k, v in buffers.items()})
        self._loss_module = loss_module
        self._vmapped = vmap(lambda p, b, batch: functional_call(loss_module, (p, b), (batch,)))
        self.phases = getattr(task.train_step, "phases", None)  # a phased train_step
        self._phase_losses = [self._vmapped_loss(phase.loss, members[0])
                              for phase in self.phases or ()]
        stacked = stacked_hparams(hparams)
        self.options = {k: v for k, v in stacked.items() if _is_option(v)}
        self.optimizer = make_optimizer(list(params.values()), population=self.P, **stacked)
        self.iters = [member_data(task, s) for s in seeds]
        self._initial_models: dict[int, nn.Module] = {}  # seed -> model, for reinit
        self._program = batched.program(self.template)
        if forward == "batched" and isinstance(self._program, str):
            raise ValueError(f"forward='batched': {self._program}")
        self._input_index: int | str | None = None  # which batch element feeds the model
        self._check = forward == "auto" and not isinstance(self._program, str)
        self.forward = "vmap" if forward == "auto" else forward
        self.why_not_batched = self._program if isinstance(self._program, str) else None
        self._tune = forward == "auto" and numel >= self.TRIAL_MIN_NUMEL
        self._steps, self._trial = 0, {}
        self.shared_batch = False  # the last batch was one batch shared by every member

    @staticmethod
    def _vmapped_loss(loss: Callable, member: nn.Module) -> Callable:
        module = LossModule(loss, copy.deepcopy(member))
        return vmap(lambda p, b, batch: functional_call(module, (p, b), (batch,)))

    def _phased_step(self, batch: Any) -> Tensor:
        """The task's phases on every member at once: per phase, the members' losses
        backpropagated, the parameters the phase does not train given no grads (the
        optimizer skips them), one step. Returns the first phase's losses."""
        first = None
        for phase, losses_of in zip(self.phases, self._phase_losses):
            self.optimizer.zero_grad(set_to_none=False)
            losses = losses_of(*self._tensors, batch)
            losses.sum().backward()
            for name, p in self.params.items():
                if not name.startswith(phase.trains):
                    p.grad = None
            train_mode(self.optimizer)
            self.optimizer.step()
            first = losses.detach() if first is None else first
        self._steps += 1
        return first

    def _member_losses(self, params: dict, buffers: dict, batch: Any) -> Tensor:
        """The loss of each member in turn, on views of the stacked tensors."""
        # unbind, not indexing: its backward stacks the members' gradients in one tensor,
        # where P separate selects would each add a full-size zero-padded gradient
        params = {k: v.unbind(0) for k, v in params.items()}
        buffers = {k: v.unbind(0) for k, v in buffers.items()}
        out = []
        for i in range(self.P):
            member = ({k: v[i] for k, v in params.items()}, {k: v[i] for k, v in buffers.items()})
            one = batch[i] if isinstance(batch, Tensor) else type(batch)(b[i] for b in batch)
            out.append(functional_call(self._loss_module, member, (one,)))
        return torch.stack(out)

    def draw(self) -> tuple[Any, bool]:
        """(batch, shared): when every member draws rows of the same tensors (the built-in
        datasets), one gather, and, when they all drew the same rows, that one batch with
        ``shared`` True; else every member's ``next``, stacked."""
        its = self.iters
        first = its[0]
        if all(isinstance(it, Minibatches) and len(it.tensors) == len(first.tensors)
               and all(a is b for a, b in zip(it.tensors, first.tensors)) for it in its):
            idx = torch.stack([it.next_indices() for it in its])
            if bool((idx == idx[0]).all()):
                return tuple(t[idx[0]].to(self.device) for t in first.tensors), True
            return tuple(t[idx].to(self.device) for t in first.tensors), False
        return stack_batches([next(it) for it in its], self.device), False

    def _expand(self, batch: Any) -> Any:
        if isinstance(batch, Tensor):
            return batch.expand(self.P, *batch.shape)
        return type(batch)(t.expand(self.P, *t.shape) for t in batch)

    def _batched_losses(self, batch: Any, shared: bool) -> Tensor:
        if self._input_index is None:
            one = batch if shared else (batch[0] if isinstance(batch, Tensor)
                                        else type(batch)(t[0] for t in batch))
            self._input_index = batched.model_input(self.task, self.template, one)
        if isinstance(self._input_index, str):
            raise ValueError(f"forward='batched': {self._input_index}")
        output = self._program(self.params, batched.inputs(batch, self._input_index), shared)
        return batched.losses(self.task, output, batch, shared)

    def _losses(self, forward: str, batch: Any, shared: bool) -> Tensor:
        if forward == "batched":
            return self._batched_losses(batch, shared)
        batch = self._expand(batch) if shared else batch
        fn = self._vmapped if forward == "vmap" else self._member_losses
        return fn(*self._tensors, batch)

    def _check_batched(self, batch: Any, shared: bool, reference: Tensor) -> None:
        """``auto``'s first step: the batched losses must equal the vmapped ones (the same
        loss on the same model); batched from now on if they do, vmap for good if not."""
        self._check = False
        try:
            with torch.no_grad():
                ours = self._batched_losses(batch, shared)
        except Exception as err:  # a loss the stand-in model can't serve
            self.why_not_batched = f"{type(err).__name__}: {err}"
            return
        close = torch.allclose(ours, reference.detach(), rtol=1e-4, atol=1e-6)
        if close:
            self.forward = "batched"
        else:
            self.why_not_batched = "its losses differ from the vmapped ones"

    def step(self) -> Tensor:
        batch, shared = self.draw()
        self.shared_batch = shared
        if self.phases:
            return self._phased_step(self._expand(batch) if shared else batch)
        self.optimizer.zero_grad(set_to_none=False)
        trial = self._tune and self._steps in self.TRIAL_STEPS
        forward = (self.forward, "members")[self.TRIAL_STEPS.index(self._steps)] if trial \
            else self.forward
        start = time.perf_counter()
        losses = self._losses(forward, batch, shared)
        losses.sum().backward()
        if self._check:
            self._check_batched(batch, shared, losses)
        if trial:
            self._trial[forward] = time.perf_counter() - start
            if len(self._trial) == 2:
                self.forward = min(self._trial, key=self._trial.get)
        self._steps += 1
        train_mode(self.optimizer)  # Schedule-Free and the like step at their train weights
        self.optimizer.step()
        return losses.detach()

    @torch.no_grad()
    def evaluate(self, members: Sequence[int]) -> list[float]:
        out = []
        with evaluating(self.optimizer):  # every member at its evaluation weights
            for i in members:
                for name, p in self.template.named_parameters():
                    p.copy_(self.params[name][i])
                for name, b in self.template.named_buffers():
                    b.copy_(self.buffers[name][i])
                out.append(float(self.task.evaluate(self.template)))
        return out

    def parameters_of(self, i: int) -> dict[str, Tensor]:
        return {name: p[i].detach() for name, p in self.params.items()}

    @torch.no_grad()
    def load_member(self, i: int, module: nn.Module) -> None:
        for name, p in module.named_parameters():
            self.params[name][i] = p.to(self.device)
        for name, b in module.named_buffers():
            self.buffers[name][i] = b.to(self.device)

    def reinit(self, i: int, seed: int) -> None:
        self.load_member(i, self._initial(seed))
        self.optimizer.reset_member(i)
        self.iters[i] = member_data(self.task, seed)

    def _initial(self, seed: int) -> nn.Module:
        """The model ``build_member(task, seed)`` builds, built once per seed: a search refills
        slots with the same seed over and over, and building costs more than copying."""
        if seed not in self._initial_models:
            self._initial_models[seed] = build_member(self.task, seed, self.device)
        return self._initial_models[seed]

    @torch.no_grad()
    def copy_member(self, src: int, dst: int, hparams: bool = True) -> None:
        self.optimizer.copy_member(src, dst, hparams=hparams)
        for b in self.buffers.values():
            b[dst] = b[src]

    def read_hparam(self, name: str) -> Tensor:
        """Every member's value of hyperparameter ``name`` (flat), ``[P]``."""
        return hyperparams.read(self.optimizer, name)

    def write_hparam(self, name: str, values: Tensor) -> None:
        hyperparams.write(self.optimizer, name, values)

    def write_member(self, i: int, name: str, value: float) -> None:
        hyperparams.write(self.optimizer, name, value, member=i)


class LoopEngine:
    """One module and one optimizer per member, stepped in turn: for tasks vmap can't serve
    (their own ``train_step``, BatchNorm, dropout) and for optimizers without populations."""

    mode = "loop"

    def __init__(self, task: Task, make_optimizer: OptimizerFactory,
                 hparams: Sequence[Mapping[str, Any]], seeds: Sequence[int],
                 device: torch.device | str = "cpu") -> None:
        self.task, self.device, self.P = task, device, len(seeds)
        self.make_optimizer = make_optimizer
        self.hparams = [dict(h) for h in hparams]
        self.modules = [build_member(task, s, device) for s in seeds]
        self.optimizers = [make_optimizer(m.parameters(), **h)
                           for m, h in zip(self.modules, self.hparams)]
        self.iters = [member_data(task, s) for s in seeds]
        self.active = [True] * self.P

    def step(self) -> Tensor:
        losses = []
        for i, (module, opt, it) in enumerate(zip(self.modules, self.optimizers, self.iters)):
            batch = next(it)
            if not self.active[i]:
                losses.append(torch.tensor(float("nan")))
                continue
            train_mode(opt)
            losses.append(take_step(self.task, module, opt, batch)[0].float().cpu())
        return torch.stack(losses)

    def evaluate(self, members: Sequence[int]) -> list[float]:
        out = []
        for i in members:
            with evaluating(self.optimizers[i]):
                out.append(float(self.task.evaluate(self.modules[i])))
        return out

    def parameters_of(self, i: int) -> dict[str, Tensor]:
        return {name: p.detach() for name, p in self.modules[i].named_parameters()}

    def reinit(self, i: int, seed: int) -> None:
        self.modules[i] = build_member(self.task, seed, self.device)
        self.optimizers[i] = self.make_optimizer(self.modules[i].parameters(), **self.hparams[i])
        self.iters[i] = member_data(self.task, seed)

    def copy_member(self, src: int, dst: int, hparams: bool = True) -> None:
        self.modules[dst].load_state_dict(self.modules[src].state_dict())
        saved = copy.deepcopy(self.optimizers[src].state_dict())
        if not hparams:  # keep dst's own hyperparameters (group entries that are state, such
            # as D-Adaptation's step-size estimate, come from src like the rest of the state)
            mine = self.optimizers[dst].state_dict()["param_groups"]
            keys = [{key for key, _ in hyperparams.flat_names(g).values()}
                    for g in self.optimizers[dst].param_groups]
            saved["param_groups"] = [{**g, **{k: v for k, v in m.items() if k in own}}
                                     for g, m, own in zip(saved["param_groups"], mine, keys)]
        self.optimizers[dst].load_state_dict(saved)

    def read_hparam(self, name: str) -> Tensor:
        return torch.stack([torch.as_tensor(hyperparams.read(o, name), dtype=torch.float64)
                            for o in self.optimizers])

    def write_hparam(self, name: str, values: Tensor) -> None:
        values = torch.as_tensor(values, dtype=torch.float64).expand(self.P)
        for opt, value in zip(self.optimizers, values):
            hyperparams.write(opt, name, value)

    def write_member(self, i: int, name: str, value: float) -> None:
        hyperparams.write(self.optimizers[i], name, value)


def _is_option(value: Any) -> bool:
    """Non-numeric constructor options (``nesterov``, Lookahead's ``base``) are shared by a
    stacked population; numbers and tuples of numbers are per-member hyperparameters."""
    return isinstance(value, (bool, str)) or value is None


def set_member_hparams(engine: StackedEngine | LoopEngine, i: int,
                       hparams: Mapping[str, Any]) -> None:
    """Give member ``i`` new hyperparameter values (flat names or constructor keywords such
    as ``betas``), validated like any write. Options (``nesterov``, ...) must keep the values
    the member was built with."""
    built = engine.options if isinstance(engine, StackedEngine) else engine.hparams[i]
    changed = {k: v for k, v in hparams.items() if _is_option(v) and built.get(k) != v}
    if changed:
        was = {k: built.get(k) for k in changed}
        raise ValueError(f"member {i}: options {changed} differ from the ones it was built "
                         f"with ({was}); options can't change per member")
    numeric = {k: v for k, v in hparams.items() if not _is_option(v)}
    optimizer = engine.optimizer if isinstance(engine, StackedEngine) else engine.optimizers[i]
    for name, value in hyperparams.flatten(optimizer, numeric).items():
        engine.write_member(i, name, value)
    if isinstance(engine, LoopEngine):
        engine.hparams[i].update(hparams)
