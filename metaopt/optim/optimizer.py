"""The ``torch.optim.Optimizer`` facade over metaopt's functional update rules.

Each optimizer class names its tensor hyperparameters (``hypers``), a state initialiser and
an update rule; this base class does the rest the way torch users expect: ``param_groups``,
``state_dict``/``load_state_dict`` (compatible with torch.optim's in both directions), hooks,
``zero_grad``, closures, torch ``lr_scheduler``s — plus populations: a group with
``population=P`` holds ``[P, ...]`` parameters stepped as P independent members, each of which
can be reset or overwritten from another.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor

from metaopt.optim import backends
from metaopt.optim.flat import Bucket
from metaopt.optim.hyperparams import SCHEDULER_KEYS, Hyper, HyperGroup, _to_plain

State = dict[str, Any]


class GradientTransform(Protocol):
    """What :meth:`MetaOptimizer.add_transform` accepts (see :mod:`metaopt.transforms`)."""

    def bind(self, optimizer: MetaOptimizer) -> None: ...

    def __call__(self, params: list[Tensor], grads: list[Tensor],
                 population: int | None) -> list[Tensor]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


InitFn = Callable[[Tensor, Mapping[str, Tensor], Mapping[str, Any]], State]
UpdateFn = Callable[[list[Tensor], list[Tensor], list[State], Mapping[str, Tensor],
                     Mapping[str, Any]], None]


def _scalar_dtype() -> torch.dtype:
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


class MetaOptimizer(torch.optim.Optimizer):
    """Base class: a torch optimizer whose hyperparameters are tensors.

    Subclasses set ``hypers``, ``init`` (``(param, hparams, options) -> state``) and ``rule``
    (``(params, grads, states, hparams, options) -> None``, updating in place and never
    reading a tensor value into Python) as static functions.
    """

    hypers: ClassVar[tuple[Hyper, ...]] = ()
    init: ClassVar[InitFn]
    rule: ClassVar[UpdateFn]
    needs_closure: ClassVar[bool] = False
    needs_model: ClassVar[bool] = False
    supports_population: ClassVar[bool] = True
    flat_ok: ClassVar[bool] = False  # the rule may run on flat buffers (eager/compiled)
    segmented: ClassVar[bool] = False  # flat, but it also sums per parameter (see elementwise)
    state_at_construction: ClassVar[bool] = False  # flat state built with the layout (torch's
    # Adagrad builds its state in the constructor)
    block: ClassVar[int] = 256  # block size of a segmented rule's flat buffers

    def __init__(self, params: Iterable, defaults: dict[str, Any], *,
                 population: int | None = None, backend: str = "auto") -> None:
        if defaults.get("differentiable"):
            raise ValueError(
                f"{type(self).__name__}: differentiable=True is not supported; metaopt steps "
                f"run under no_grad. For meta-gradients through updates use the functional "
                f"rules (metaopt.optim.<module>.rule) under torch.func, as learned.meta_train does"
            )
        defaults = dict(defaults, population=population, backend=backend)
        backends.check(backend)
        self.transforms: list[GradientTransform] = []
        self._buckets: dict[int, list[Bucket]] = {}
        self._runners: dict[int, backends.Runner] = {}  # per group: eager / compiled / auto
        super().__init__(params, defaults)

    # -- groups -------------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        plain = self.param_groups.pop()
        where = f"{type(self).__name__} (param group {len(self.param_groups)})"
        group = HyperGroup(plain, self.hypers, where)
        self.check_group(group)
        group.listeners.append(self.on_write)
        self.param_groups.append(group)
        if not any(p.grad is not None and p.grad.is_sparse for p in group["params"]):
            self._layout(group)

    def check_group(self, group: HyperGroup) -> None:
        """Cross-field checks of one group (override); raise ValueError saying why."""

    def on_write(self, group: HyperGroup, key: str) -> None:
        """Called after ``group[key] = value`` wrote new hyperparameter values (override)."""

    @property
    def hparams(self) -> list[dict[str, Tensor | None]]:
        """Per group, the hyperparameter tensors by flat name (``lr``, ``beta1``, ...).

        Write into them in place (``opt.hparams[0]["lr"].fill_(3e-4)``) or assign through
        ``param_groups``; both reach the step without recompiling.
        """
        return [g.hparams for g in self.param_groups]

    @staticmethod
    def options(group: HyperGroup) -> dict[str, Any]:
        """The group's static (non-tensor) settings, as the update rule sees them."""
        skip = set(group.spec) | {"params", "param_names", *SCHEDULER_KEYS}
        return {k: v for k, v in group.items() if k not in skip}

    # -- stepping -----------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one optimization step (evaluating ``closure`` first when given)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        plans = [self._plan(group) for group in self.param_groups]
        if self.transforms:
            self._transform(plans)
        for plan in plans:
            plan.run()
        return loss

    def _plan(self, group: HyperGroup) -> _Plan:
        algorithm, hp, opts = type(self), group.hparams, self.options(group)
        buckets = self._flat_buckets(group)
        if buckets is not None:
            status = {b.grad_status() for b in buckets}
            if status == {"none"}:
                return _Plan(group, algorithm, hp, opts, [], [], [])
            if status != {"all"} or not all(b.uniform for b in buckets):
                for b in buckets:  # some parameters skip this step: counters will differ
                    b.uniform = b.uniform and b.grad_status() != "some"
                buckets = None
        if buckets is None:
            params, grads, states = self._gather(group)
            return _Plan(group, algorithm, hp, opts, params, grads, states)
        for bucket in buckets:
            bucket.gather_grads()
        return _Plan(group, algorithm, hp, opts, [b.param for b in buckets],
                     [b.grad for b in buckets], [b.state for b in buckets], buckets,
                     self._runners[id(group)])

    # -- flat buckets (eager / compiled backends) ---------------------------------------
    def _flat_buckets(self, group: HyperGroup) -> list[Bucket] | None:
        """The group's buckets with their state, built on first use; None when it runs the
        reference path."""
        buckets = self._buckets.get(id(group))
        if buckets is None or not all(b.intact() for b in buckets):
            params = list(group["params"])
            if not backends.uses_flat(group["backend"], type(self).flat_ok) or not params:
                return None
            if any(p.grad is not None and p.grad.is_sparse for p in params):
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
            buckets = self._layout(group)
            if buckets is None:
                return None
        if not all(b.ready for b in buckets):
            opts = self.options(group)
            for bucket in buckets:
                bucket.init_state(type(self).init, group.hparams, opts,
                                  [self.state[p] for p in bucket.params])
        return buckets

    def _layout(self, group: HyperGroup) -> list[Bucket] | None:
        """The group's parameters (and gradients) moved into flat buffers, one per dtype and
        device; the state comes at the first step. Done when the group is added, as torch's
        fused optimizers prepare their state up front, so the first step pays no layout."""
        params = list(group["params"])
        if not backends.uses_flat(group["backend"], type(self).flat_ok) or not params:
            return None
        by_kind: dict[tuple, list[Tensor]] = {}
        for p in params:
            by_kind.setdefault((p.dtype, p.device), []).append(p)
        align = type(self).block if type(self).segmented else 1
        buckets = [Bucket(members, group.population, align) for members in by_kind.values()]
        self._buckets[id(group)] = buckets
        if type(self).state_at_construction:
            opts = self.options(group)
            for bucket in buckets:
                bucket.init_state(type(self).init, group.hparams, opts,
                                  [self.state[p] for p in bucket.params])
        self._runners.setdefault(id(group), backends.Runner(group["backend"], rent=False))
        return buckets

    def _invalidate_buckets(self, group: HyperGroup | None = None) -> None:
        """Rebuild flat buffers at the next step (after a load or a change of state layout)."""
        if group is None:
            self._buckets.clear()
        else:
            self._buckets.pop(id(group), None)

    # -- gradient transforms --------------------------------------------------------------
    def add_transform(self, transform: GradientTransform) -> MetaOptimizer:
        """Apply ``transform`` to the gradients of every group before each update (in the
        order added): clipping, noise, ... (see :mod:`metaopt.transforms`). Returns self."""
        transform.bind(self)
        self.transforms.append(transform)
        return self

    def _transform(self, plans: list[_Plan]) -> None:
        active = [plan for plan in plans if plan.params]
        populations = {plan.group.population for plan in active}
        if len(populations) > 1:
            raise ValueError(f"{type(self).__name__}: gradient transforms need every group to "
                             f"have the same population, got {sorted(map(str, populations))}")
        population = populations.pop() if populations else None
        flat_ok = all(getattr(t, "flat_ok", False) for t in self.transforms)
        views = [plan.tensors(per_parameter=not flat_ok) for plan in active]
        params = [p for ps, _ in views for p in ps]
        grads = [g for _, gs in views for g in gs]
        for transform in self.transforms:
            grads = transform(params, grads, population)
        start = 0
        for plan, (ps, _) in zip(active, views):
            plan.set_grads(grads[start:start + len(ps)], per_parameter=not flat_ok)
            start += len(ps)

    def _gather(self, group: HyperGroup) -> tuple[list[Tensor], list[Tensor], list[State]]:
        params, grads, states = [], [], []
        opts = None
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
            state = self.state[p]
            if not state:
                opts = opts or self.options(group)
                state.update(type(self).init(p, group.hparams, opts))
            params.append(p)
            grads.append(-p.grad if group.get("maximize", False) else p.grad)
            states.append(state)
        return params, grads, states

    # -- populations --------------------------------------------------------------------
    def _population_groups(self) -> list[HyperGroup]:
        groups = [g for g in self.param_groups if g.population is not None]
        if not groups:
            raise ValueError(f"{type(self).__name__} has no population groups "
                             f"(construct it with population=P)")
        return groups

    @staticmethod
    def _check_member(group: HyperGroup, i: int) -> None:
        if not 0 <= i < group.population:
            raise ValueError(f"member {i} is out of range for population={group.population}")

    @torch.no_grad()
    def reset_member(self, i: int) -> None:
        """Forget member ``i``'s optimizer state: moments, step count and the like start
        afresh, as for a new optimizer. Other members are untouched. (Re-initialising the
        member's *weights* is up to the caller, who knows how the model is built.)"""
        for group in self._population_groups():
            self._check_member(group, i)
            hp = {k: (None if v is None else v[i:i + 1]) for k, v in group.hparams.items()}
            opts = dict(self.options(group), population=1)
            for p in group["params"]:
                state = self.state.get(p)
                if not state:
                    continue
                fresh = type(self).init(p[i:i + 1], hp, opts)
                for key, value in fresh.items():
                    state[key][i:i + 1].copy_(value)
        for transform in self.transforms:
            transform.reset_member(i)

    @torch.no_grad()
    def copy_member(self, src: int, dst: int, *, params: bool = True, state: bool = True,
                    hparams: bool = True) -> None:
        """Overwrite member ``dst`` with member ``src``: its weights, optimizer state (step
        count included) and hyperparameters, each optional (PBT's exploit step)."""
        for group in self._population_groups():
            self._check_member(group, src)
            self._check_member(group, dst)
            if hparams:
                for value in group.hparams.values():
                    if value is not None:
                        value[dst] = value[src]
            for p in group["params"]:
                if params:
                    p[dst] = p[src]
                if state:
                    for value in self.state.get(p, {}).values():
                        if isinstance(value, Tensor):
                            value[dst] = value[src]
        for transform in self.transforms:
            transform.copy_member(src, dst, hparams=hparams)

    # -- copies -------------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["transforms"] = self.transforms
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("transforms", [])
        self._buckets, self._runners = {}, {}  # rebuilt from per-parameter state on use

    # -- checkpoints --------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """torch.optim's format: 0-d hyperparameters as floats, so torch can load it."""
        sd = super().state_dict()
        for group, packed in zip(self.param_groups, sd["param_groups"]):
            for key in group.spec:
                if key in packed:
                    packed[key] = _to_plain(packed[key])
        if self.transforms:
            sd["transforms"] = [t.state_dict() for t in self.transforms]
        seen: set[int] = set()  # flat backends share step counters: give each param its own
        for state in sd["state"].values():
            for key, value in state.items():
                if isinstance(value, Tensor):
                    if id(value) in seen:
                        state[key] = value.clone()
                    seen.add(id(value))
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a metaopt or torch.optim state dict; hyperparameters are written into the
        existing tensors, state tensors moved to each parameter's device."""
        groups = self.param_groups
        saved_transforms = state_dict.get("transforms", [])
        if len(saved_transforms) != len(self.transforms):
            raise ValueError(f"{type(self).__name__}: state dict has {len(saved_transforms)} "
                             f"gradient transforms, this optimizer has {len(self.transforms)}")
        for transform, saved in zip(self.transforms, saved_transforms):
            transform.load_state_dict(saved)
        self._invalidate_buckets()
        super().load_state_dict(state_dict)
        loaded, self.param_groups = self.param_groups, groups
        for group, plain in zip(groups, loaded):
            saved_population = plain.get("population", group.population)
            if saved_population != group.population:
                raise ValueError(f"{type(self).__name__}: state dict has population="
                                 f"{saved_population}, this group has {group.population}")
            for key, value in plain.items():
                if key not in ("params", "param_names", "population"):
                    group[key] = value
            for p in group["params"]:
                if p in self.state and self.state[p]:
                    self.adopt_state(p, self.state[p], group)

    def adopt_state(self, param: Tensor, state: State, group: HyperGroup) -> None:
        """Bring a loaded per-parameter state to this class's conventions (override to add
        what torch's format lacks). Step counters become tensors on the param's device."""
        if "step" in state:
            shape = () if group.population is None else (group.population,)
            step = torch.as_tensor(state["step"], dtype=_scalar_dtype())
            state["step"] = step.to(param.device).expand(shape).clone()

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for key in sorted(group):
                if key != "params":
                    value = _to_plain(group[key]) if key in group.spec else group[key]
                    lines.append(f"    {key}: {value}")
        lines.append(")")
        return "\n".join(lines)


class _Plan:
    """One group's work for one step: its rule over per-parameter tensors (the reference
    path) or over flat buckets (run eagerly or compiled as the group's runner says)."""

    def __init__(self, group: HyperGroup, algorithm: type[MetaOptimizer], hp, opts,
                 params, grads, states, buckets: list[Bucket] | None = None,
                 runner: backends.Runner | None = None) -> None:
        self.group, self.hp, self.opts = group, hp, opts
        self.algorithm, self.rule = algorithm, algorithm.rule
        self.params, self.grads, self.states = params, grads, states
        self.buckets, self.runner = buckets, runner

    def tensors(self, per_parameter: bool) -> tuple[list[Tensor], list[Tensor]]:
        """(params, grads) as transforms see them: true gradients (maximize applied)."""
        if self.buckets is None or not per_parameter:
            grads = self.grads
            if self.buckets is not None and self.opts.get("maximize", False):
                grads = [-g for g in grads]
            return self.params, grads
        params = [p for b in self.buckets for p in b.params]
        grads = [b.view(g, p, i) for b, g in zip(self.buckets, self.grads)
                 for i, p in enumerate(b.params)]
        if self.opts.get("maximize", False):
            grads = [-g for g in grads]
        return params, grads

    def set_grads(self, grads: list[Tensor], per_parameter: bool) -> None:
        if self.buckets is not None:
            if per_parameter:
                lead = 1 if self.group.population else 0
                merged, start = [], 0
                for b in self.buckets:
                    part = grads[start:start + len(b.params)]
                    merged.append(torch.cat([g.flatten(lead) for g in part], dim=-1))
                    start += len(b.params)
                grads = merged
            if self.opts.get("maximize", False):
                grads = [-g for g in grads]  # the flat call negates again
        self.grads = grads

    def run(self) -> None:
        if not self.params:
            return
        if self.buckets is None:
            self.rule(self.params, self.grads, self.states, self.hp, self.opts)
            return
        for bucket, grad in zip(self.buckets, self.grads):
            backends.run_flat(self.algorithm, self.runner, bucket, grad, self.hp, self.opts)
