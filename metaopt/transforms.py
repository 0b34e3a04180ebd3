"""Gradient transforms: clipping and noise, composable with any metaopt optimizer.

    opt = metaopt.optim.AdamW(params, lr=3e-4)
    opt.add_transform(ClipByGlobalNorm(1.0)).add_transform(GradientNoise(eta=0.01))

A transform maps the gradients of every group to new gradients before each update (it never
writes into the incoming tensors: they may be the user's ``.grad``). Its hyperparameters are
tensors in ``t.hparams``: 0-d, or ``[P]`` once bound to an optimizer whose groups have
``population=P`` (a float or a 0-d value is broadcast; a length-P list gives one value per
member), so schedules and searches write into them as into an optimizer's. Take
``t.hparams`` after ``add_transform`` (binding to a population replaces 0-d tensors by
``[P]`` ones); ``t.set(name=value)`` writes with validation. Everything a transform computes
over "all parameters" (the global norm, the noise step count) is computed per member.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from metaopt.optim.hyperparams import Hyper, as_hparam_tensor, hparam_dtype
from metaopt.optim.members import member_ndim, per_member


class Transform:
    """Base class: named tensor hyperparameters (``hypers``), validated, bound to an optimizer.

    Subclasses implement ``__call__(params, grads, population) -> grads``, and, when they keep
    state, ``on_bind``, ``extra_state``/``load_extra_state`` and ``reset_member``."""

    hypers: ClassVar[tuple[Hyper, ...]] = ()
    flat_ok: ClassVar[bool] = False  # elementwise: may see a flat-backend bucket as one tensor

    def __init__(self, **values: Any) -> None:
        self.population: int | None = None
        self.hparams: dict[str, Tensor] = {}
        for h in self.hypers:
            self.hparams[h.key] = self._validated(h, values[h.key])

    @property
    def name(self) -> str:
        return type(self).__name__

    def _validated(self, h: Hyper, value: Any) -> Tensor:
        if isinstance(value, bool) or not isinstance(value, (int, float, Tensor, list, tuple)):
            raise ValueError(f"{self.name}: {h.key} must be a number or a tensor, got {value!r}")
        t = torch.as_tensor(value, dtype=torch.float64).detach().clone()
        if t.dim() > 1:
            raise ValueError(f"{self.name}: {h.key} must be a scalar or one value per member, "
                             f"got shape {tuple(t.shape)}")
        h.check(h.key, t, self.name)
        return t

    # -- binding ------------------------------------------------------------------------
    def bind(self, optimizer: torch.optim.Optimizer) -> None:
        """Shape the hyperparameters for ``optimizer``'s population (``[P]`` or 0-d), on its
        parameters' device, and set up per-member state."""
        populations = {g.get("population") for g in optimizer.param_groups}
        if len(populations) > 1:
            raise ValueError(f"{self.name}: every param group needs the same population, got "
                             f"{sorted(map(str, populations))}")
        population = populations.pop()
        params = [p for g in optimizer.param_groups for p in g["params"]]
        dtype = hparam_dtype(params, population)
        device = params[0].device if params else torch.device("cpu")
        for h in self.hypers:
            current = self.hparams[h.key]
            shape = () if population is None else (population,)
            if current.shape == shape and current.dtype == dtype and current.device == device:
                continue
            t = as_hparam_tensor(current, h.key, population, dtype, device, self.name)
            self.hparams[h.key] = t
        self.population = population
        self.on_bind(params, population)

    def on_bind(self, params: list[Tensor], population: int | None) -> None:
        """Allocate per-member state (override)."""

    def set(self, **values: Any) -> None:
        """Validate and write hyperparameters in place (all or nothing)."""
        new = {}
        for key, value in values.items():
            if key not in self.hparams:
                raise ValueError(f"{self.name}: unknown hyperparameter {key!r}; expected one of "
                                 f"{', '.join(self.hparams)}")
            h = next(h for h in self.hypers if h.key == key)
            current = self.hparams[key]
            t = as_hparam_tensor(value, key, self.population, current.dtype, current.device,
                                 self.name)
            h.check(key, t, self.name)
            new[key] = t
        for key, t in new.items():
            self.hparams[key].copy_(t)

    # -- populations --------------------------------------------------------------------
    def reset_member(self, i: int) -> None:
        """Forget member ``i``'s state (override where there is state)."""

    def copy_member(self, src: int, dst: int, *, hparams: bool = True,
                    state: bool = True) -> None:
        """Member ``dst`` takes member ``src``'s hyperparameters (and state)."""
        if hparams:
            for value in self.hparams.values():
                value[dst] = value[src]

    # -- checkpoints --------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"hparams": {k: v.detach().clone() for k, v in self.hparams.items()},
                **self.extra_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        saved = state["hparams"]
        if set(saved) != set(self.hparams):
            raise ValueError(f"{self.name}: state dict has hyperparameters {sorted(saved)}, "
                             f"expected {sorted(self.hparams)}")
        self.set(**saved)
        self.load_extra_state(state)

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        pass

    def __repr__(self) -> str:
        values = ", ".join(f"{k}={v.tolist()}" for k, v in self.hparams.items())
        return f"{self.name}({values})"


def _member_norms(x: Tensor, population: bool, norm_type: float) -> Tensor:
    if not population:
        return torch.linalg.vector_norm(x, norm_type)
    return torch.linalg.vector_norm(x.reshape(x.shape[0], -1), norm_type, dim=1)


class ClipByGlobalNorm(Transform):
    """Scale all gradients by min(1, max_norm / (‖g‖ + 1e-6)), ‖g‖ the norm over every
    parameter (of each member): torch.nn.utils.clip_grad_norm_, per member."""

    hypers = (Hyper("max_norm"),)

    def __init__(self, max_norm: float | Tensor, norm_type: float = 2.0) -> None:
        norm_type = float(norm_type)
        if not norm_type > 0:
            raise ValueError(f"ClipByGlobalNorm: norm_type must be > 0 (inf for the max norm), "
                             f"got {norm_type}")
        self.norm_type = norm_type
        super().__init__(max_norm=max_norm)

    def __call__(self, params: list[Tensor], grads: list[Tensor],
                 population: int | None) -> list[Tensor]:
        if not grads:
            return grads
        norms = [_member_norms(g, population is not None, self.norm_type) for g in grads]
        dtype = functools.reduce(torch.promote_types, (n.dtype for n in norms))
        device = norms[0].device
        total = torch.linalg.vector_norm(torch.stack([n.to(dtype=dtype, device=device)
                                                      for n in norms]), self.norm_type, dim=0)
        coef = torch.clamp(self.hparams["max_norm"].to(total) / (total + 1e-6), max=1.0)
        return [g * per_member(coef.to(g.device), g) for g in grads]


class ClipByValue(Transform):
    """Clamp every gradient element into [-clip_value, clip_value] (clip_grad_value_)."""

    hypers = (Hyper("clip_value"),)
    flat_ok = True

    def __init__(self, clip_value: float | Tensor) -> None:
        super().__init__(clip_value=clip_value)

    def __call__(self, params: list[Tensor], grads: list[Tensor],
                 population: int | None) -> list[Tensor]:
        out = []
        for g in grads:
            c = per_member(self.hparams["clip_value"].to(g.device), g)
            out.append(torch.clamp(g, min=-c, max=c))
        return out


def unitwise_norm(x: Tensor, population: bool) -> Tensor:
    """The 2-norm of each unit, keeping dims: one per output row of a matrix or conv filter
    (dims after the first reduced), one per tensor for vectors and scalars; per member."""
    start = 1 if population else 0
    if member_ndim(x, population) >= 2:
        dims = tuple(range(start + 1, x.dim()))
    else:
        dims = tuple(range(start, x.dim()))
    if not dims:
        return x.abs()
    return torch.linalg.vector_norm(x, dim=dims, keepdim=True)


class AdaptiveClip(Transform):
    """Adaptive gradient clipping (Brock et al. 2021, "High-Performance Large-Scale Image
    Recognition Without Normalization"): per unit, G ← G · λ max(‖W‖, eps) / ‖G‖ where
    ‖G‖ / max(‖W‖, eps) > λ (λ = ``clipping``; ‖G‖ floored at 1e-6 as in the authors' code)."""

    hypers = (Hyper("clipping"), Hyper("eps"))

    def __init__(self, clipping: float | Tensor = 0.01, eps: float | Tensor = 1e-3) -> None:
        super().__init__(clipping=clipping, eps=eps)

    def __call__(self, params: list[Tensor], grads: list[Tensor],
                 population: int | None) -> list[Tensor]:
        pop = population is not None
        out = []
        for p, g in zip(params, grads):
            w_norm = unitwise_norm(p.detach(), pop)
            eps = per_member(self.hparams["eps"].to(p.device), w_norm)
            clipping = per_member(self.hparams["clipping"].to(p.device), w_norm)
            max_norm = torch.clamp(w_norm, min=eps) * clipping
            g_norm = unitwise_norm(g, pop)
            clipped = g * (max_norm / g_norm.clamp(min=1e-6))
            out.append(torch.where(g_norm < max_norm, g, clipped))
        return out


class GradientNoise(Transform):
    """Annealed Gaussian gradient noise (Neelakantan et al. 2015, "Adding Gradient Noise
    Improves Learning for Very Deep Networks"): g ← g + N(0, σₜ²), σₜ² = eta / (1 + t)^gamma,
    t the number of noisy steps a member has taken (0 at the first).

    The noise comes from the transform's own ``torch.Generator`` seeded with ``seed`` (on the
    parameters' device), so runs are reproducible; its state is in ``state_dict``."""

    hypers = (Hyper("eta"), Hyper("gamma"))

    def __init__(self, eta: float | Tensor = 0.01, gamma: float | Tensor = 0.55,
                 seed: int = 0) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"GradientNoise: seed must be an int, got {seed!r}")
        super().__init__(eta=eta, gamma=gamma)
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.step = torch.zeros((), dtype=torch.float64)

    def on_bind(self, params: list[Tensor], population: int | None) -> None:
        device = params[0].device if params else torch.device("cpu")
        if self.generator.device != device:
            self.generator = torch.Generator(device).manual_seed(self.seed)
        shape = () if population is None else (population,)
        self.step = torch.zeros(shape, dtype=torch.float64, device=device)

    def std(self) -> Tensor:
        """σₜ per member (0-d or ``[P]``)."""
        return (self.hparams["eta"] / (1 + self.step) ** self.hparams["gamma"]).sqrt()

    def __call__(self, params: list[Tensor], grads: list[Tensor],
                 population: int | None) -> list[Tensor]:
        std = self.std()
        out = []
        for g in grads:
            noise = torch.randn(g.shape, generator=self.generator, dtype=g.dtype,
                                device=g.device)
            out.append(g + per_member(std.to(g.device), g) * noise)
        self.step.add_(1)
        return out

    def reset_member(self, i: int) -> None:
        self.step[i] = 0

    def copy_member(self, src: int, dst: int, *, hparams: bool = True,
                    state: bool = True) -> None:
        super().copy_member(src, dst, hparams=hparams)
        if state:
            self.step[dst] = self.step[src]

    def extra_state(self) -> dict[str, Any]:
        return {"step": self.step.clone(), "generator": self.generator.get_state()}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        step = torch.as_tensor(state["step"], dtype=torch.float64)
        if step.shape != self.step.shape:
            raise ValueError(f"GradientNoise: state dict has step counts of shape "
                             f"{tuple(step.shape)}, this transform has {tuple(self.step.shape)}")
        self.step.copy_(step)
        self.generator.set_state(state["generator"])


__all__ = ["Transform", "ClipByGlobalNorm", "ClipByValue", "AdaptiveClip", "GradientNoise",
           "unitwise_norm"]
