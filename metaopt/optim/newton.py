"""Newton's method with Levenberg–Marquardt damping, and Hessian-free optimisation.

``Newton`` builds the exact Hessian of the closure's loss over all parameters (small models:
n parameters cost n² numbers, checked against ``max_hessian_bytes`` when the optimizer is
built, before anything is allocated) and steps d = -(|H| + λI)⁻¹ g, where |H| flips the sign
of negative eigenvalues (Dauphin et al. 2014, "saddle-free Newton"): on a convex problem it
is plain damped Newton, at a saddle it descends instead of climbing.

``HessianFree`` (Martens 2010) never forms H: it solves (H + λI) d = -g by conjugate
gradients on Hessian-vector products, warm-started from the previous solution, stopping at
negative curvature. CG runs a fixed ``cg_max_iter`` iterations with converged ones masked
(``torch.where``), so it never reads a value back to the host.

Both adapt λ like Levenberg–Marquardt (Martens' rule): after a step the closure is evaluated
once more and ρ = actual / predicted reduction; ρ < 1/4 raises λ by ``damping_boost``,
ρ > 3/4 lowers it by the same factor; a step that raised the loss is undone. (This is the
one place they synchronise with the host.)

Curvature products: exact double backward when the closure called
``loss.backward(create_graph=True)``; otherwise central differences of the gradient,
(g(x + εv) - g(x - εv)) / 2ε, two closure calls each (exact on quadratics up to rounding) —
which is what a plain ``metaopt.train`` closure gets. Budgets count every call.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from metaopt.optim.hyperparams import Hyper
from metaopt.optim.optimizer import MetaOptimizer


def conjugate_gradient(matvec: Callable[[Tensor], Tensor], b: Tensor, x0: Tensor | None = None,
                       max_iter: int = 50, tol: float = 1e-10) -> Tensor:
    """x ≈ A⁻¹ b for symmetric A given as ``matvec``, by ``max_iter`` CG iterations.

    Iterations after convergence (‖r‖² ≤ tol²‖b‖²) or after meeting non-positive curvature
    (pᵀAp ≤ 0) change nothing: the test is a mask, not a branch, so CG never syncs."""
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b - matvec(x) if x0 is not None else b.clone()
    p = r.clone()
    rr = r.dot(r)
    limit = tol ** 2 * b.dot(b)
    active = torch.ones((), dtype=torch.bool, device=b.device)
    for _ in range(max_iter):
        ap = matvec(p)
        pap = p.dot(ap)
        active = active & (rr > limit) & (pap > 0)
        alpha = torch.where(active, rr / torch.where(pap > 0, pap, 1.0), 0.0)
        x.add_(alpha * p)
        r.sub_(alpha * ap)
        rr_new = r.dot(r)
        beta = torch.where(active, rr_new / torch.where(rr > 0, rr, 1.0), 0.0)
        p = torch.where(active, r + beta * p, p)
        rr = torch.where(active, rr_new, rr)
    return x


class _Curvature(MetaOptimizer):
    """Shared machinery: flat views of the parameters, gradient, curvature products and the
    Levenberg–Marquardt damping loop."""

    needs_closure = True
    supports_population = False
    hypers = (Hyper("lr"), Hyper("damping"), Hyper("damping_boost", low=1.0),
              Hyper("fd_eps", low_open=True))

    def __init__(self, params, defaults: dict[str, Any], population: int | None,
                 backend: str) -> None:
        if population is not None:
            raise ValueError(f"{type(self).__name__}: populations are not supported (curvature "
                             f"comes from one closure per model); use engine='loop'")
        super().__init__(params, defaults, population=None, backend=backend)

    def _params(self) -> list[Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def _flat_grad(self) -> Tensor:
        return torch.cat([(p.new_zeros(p.numel()) if p.grad is None else p.grad.reshape(-1))
                          for p in self._params()])

    def _add(self, v: Tensor, scale: Any = 1.0) -> None:
        offset = 0
        for p in self._params():
            n = p.numel()
            p.add_(v[offset:offset + n].view_as(p) * scale)
            offset += n

    def _grad_at(self, closure: Callable, v: Tensor, eps: Tensor) -> Tensor:
        saved = [p.clone() for p in self._params()]
        self._add(v, eps)
        closure()
        grad = self._flat_grad()
        for p, s in zip(self._params(), saved):
            p.copy_(s)
        return grad

    def _hvp_fn(self, closure: Callable) -> Callable[[Tensor], Tensor]:
        """v ↦ H v at the current weights (after ``closure()`` has just run)."""
        params = self._params()
        graph = [p.grad for p in params]
        if all(g is not None and g.requires_grad for g in graph):
            def exact(v: Tensor) -> Tensor:
                vs, offset = [], 0
                for p in params:
                    vs.append(v[offset:offset + p.numel()].view_as(p))
                    offset += p.numel()
                with torch.enable_grad():
                    hv = torch.autograd.grad(graph, params, vs, retain_graph=True)
                return torch.cat([h.reshape(-1) for h in hv])
            return exact
        eps = self.param_groups[0]["fd_eps"]

        def central(v: Tensor) -> Tensor:
            scale = eps / v.norm().clamp(min=1e-30)
            plus = self._grad_at(closure, v, scale)
            minus = self._grad_at(closure, v, -scale)
            return (plus - minus) / (2 * scale)
        return central

    def direction(self, closure: Callable, grad: Tensor, damping: Tensor, state: dict
                  ) -> tuple[Tensor, Tensor]:
        """(d, dᵀ B d) for the damped model B = curvature + λI (subclasses)."""
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One damped Newton-type step; returns the loss before it."""
        if closure is None:
            raise RuntimeError(f"{type(self).__name__}.step needs a closure that re-evaluates "
                               f"the model and returns the loss")
        closure = torch.enable_grad()(closure)
        group = self.param_groups[0]
        state = self.state[self._params()[0]]
        if "damping" not in state:
            state["damping"] = group["damping"].detach().clone()
            state["step"] = torch.zeros((), dtype=group["lr"].dtype)
        loss = closure()
        grad = self._flat_grad()
        lam = state["damping"] if group["adaptive_damping"] else group["damping"]
        d, curvature = self.direction(closure, grad, lam, state)
        for p in self._params():  # drop the double-backward graph before moving
            p.grad = None if p.grad is None else p.grad.detach()
        lr = group["lr"]
        self._add(d, lr)
        state["step"].add_(1)
        if group["adaptive_damping"]:
            self._adapt(closure, loss, grad, d, curvature, lam, lr, group)
        return loss

    def _adapt(self, closure, loss, grad, d, curvature, lam, lr, group) -> None:
        new_loss = closure()
        predicted = lr * grad.dot(d) + 0.5 * lr ** 2 * (curvature - lam * d.dot(d))
        actual = new_loss.detach() - loss.detach()
        rho = float(actual / predicted) if float(predicted) < 0 else -math.inf
        boost = group["damping_boost"]
        if rho < 0.25:
            lam.mul_(boost)
        elif rho > 0.75:
            lam.div_(boost)
        if not float(actual) <= 0:  # worse (or NaN): undo the step
            self._add(d, -lr)


class Newton(_Curvature):
    """Damped Newton with the exact Hessian (see the module docstring).

    ``Newton(params, lr=1.0, damping=0.0, adaptive_damping=False)`` is the undamped method:
    one step solves a strictly convex quadratic. ``max_hessian_bytes`` bounds n²·itemsize.
    """

    def __init__(self, params, lr: float = 1.0, damping: float = 1e-4,
                 adaptive_damping: bool = True, damping_boost: float = 1.5,
                 fd_eps: float = 1e-4, max_hessian_bytes: int = 2 ** 30, *,
                 population: int | None = None, backend: str = "auto") -> None:
        defaults = dict(lr=lr, damping=damping, adaptive_damping=adaptive_damping,
                        damping_boost=damping_boost, fd_eps=fd_eps,
                        max_hessian_bytes=max_hessian_bytes)
        super().__init__(params, defaults, population, backend)
        params_ = self._params()
        n = sum(p.numel() for p in params_)
        itemsize = params_[0].element_size() if params_ else 8
        if n * n * itemsize > max_hessian_bytes:
            raise ValueError(
                f"Newton: the exact Hessian of {n:,} parameters needs {n * n * itemsize:,} "
                f"bytes, over max_hessian_bytes={max_hessian_bytes:,}; use HessianFree (CG on "
                f"Hessian-vector products), LBFGS, or a larger max_hessian_bytes")

    def hessian(self, closure: Callable) -> Tensor:
        """The Hessian at the current weights, column by column from curvature products
        (symmetrised)."""
        hvp = self._hvp_fn(closure)
        n = sum(p.numel() for p in self._params())
        eye = torch.eye(n, dtype=self._params()[0].dtype, device=self._params()[0].device)
        h = torch.stack([hvp(eye[i]) for i in range(n)], dim=1)
        return (h + h.T) / 2

    def direction(self, closure, grad, damping, state):
        h = self.hessian(closure)
        values, vectors = torch.linalg.eigh(h)
        scaled = vectors.T @ grad / (values.abs() + damping)
        d = -(vectors @ scaled)
        curvature = (scaled * (values.abs() + damping) * scaled).sum()
        return d, curvature


class HessianFree(_Curvature):
    """Hessian-free optimisation (Martens 2010): CG on damped Hessian-vector products, warm
    started from ``cg_decay`` × the previous solution (see the module docstring)."""

    hypers = _Curvature.hypers + (Hyper("cg_decay", high=1.0), Hyper("cg_tol"))

    def __init__(self, params, lr: float = 1.0, damping: float = 1e-2,
                 adaptive_damping: bool = True, damping_boost: float = 1.5,
                 cg_max_iter: int = 20, cg_tol: float = 1e-6, cg_decay: float = 0.95,
                 fd_eps: float = 1e-4, *, population: int | None = None,
                 backend: str = "auto") -> None:
        if isinstance(cg_max_iter, bool) or not isinstance(cg_max_iter, int) or cg_max_iter < 1:
            raise ValueError(f"HessianFree: cg_max_iter must be a positive int, "
                             f"got {cg_max_iter!r}")
        defaults = dict(lr=lr, damping=damping, adaptive_damping=adaptive_damping,
                        damping_boost=damping_boost, cg_max_iter=cg_max_iter, cg_tol=cg_tol,
                        cg_decay=cg_decay, fd_eps=fd_eps)
        super().__init__(params, defaults, population, backend)

    def direction(self, closure, grad, damping, state):
        group = self.param_groups[0]
        hvp = self._hvp_fn(closure)

        def damped(v: Tensor) -> Tensor:
            return hvp(v) + damping * v

        start = state.get("cg_solution")
        x0 = None if start is None else start * group["cg_decay"]
        d = conjugate_gradient(damped, -grad, x0, group["cg_max_iter"], float(group["cg_tol"]))
        state["cg_solution"] = d.clone()
        return d, d.dot(damped(d))
