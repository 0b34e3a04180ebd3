"""L-BFGS (Liu & Nocedal 1989) with torch.optim.LBFGS's arguments, state and trajectory.

The inverse-Hessian approximation is the classic two-loop recursion over the last
``history_size`` curvature pairs (s = step, y = change of gradient), scaled by
H₀ = sᵀy / yᵀy; steps are a fixed ``lr`` or a strong-Wolfe line search (cubic interpolation,
Nocedal & Wright alg. 3.5/3.6, as minFunc and torch do it). One ``step(closure)`` runs up to
``max_iter`` iterations and ``max_eval`` closure calls.

Host synchronisation: the stopping tests of the inner loop, the curvature test sᵀy > 1e-10
and the line search read values into Python (as torch's does); the direction, the history
and the fixed-step updates stay on the device.

The state lives under the first parameter with torch's keys (``d``, ``t``, ``old_dirs``,
``old_stps``, ``ro``, ``H_diag``, ``prev_flat_grad``, ``prev_loss``, ``n_iter``,
``func_evals``), so a torch LBFGS state dict loads here and continues, and back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from metaopt.optim.hyperparams import Hyper
from metaopt.optim.optimizer import MetaOptimizer

LINE_SEARCHES = (None, "strong_wolfe")


def cubic_minimum(x1: float, f1: float, g1: float, x2: float, f2: float, g2: float,
                  bounds: tuple[float, float] | None = None) -> float:
    """Minimiser of the cubic through (x1, f1, g1) and (x2, f2, g2), clipped to ``bounds``
    (default: the interval between the points); the midpoint when the cubic has none."""
    low, high = bounds if bounds is not None else (min(x1, x2), max(x1, x2))
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    d2_square = d1 ** 2 - g1 * g2
    if d2_square < 0:
        return (low + high) / 2.0
    d2 = d2_square.sqrt() if isinstance(d2_square, Tensor) else d2_square ** 0.5
    if x1 <= x2:
        t = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
    else:
        t = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
    return min(max(t, low), high)


Evaluate = Callable[[Any, Any, Tensor], tuple[float, Tensor]]


def strong_wolfe(evaluate: Evaluate, x: list[Tensor], t: Any, d: Tensor, f: float, g: Tensor,
                 gtd: Tensor, c1: float = 1e-4, c2: float = 0.9,
                 tolerance_change: float = 1e-9, max_ls: int = 25
                 ) -> tuple[float, Tensor, Any, int]:
    """A step length ``t`` along ``d`` meeting the strong Wolfe conditions
    f(x + t d) ≤ f + c1 t gᵀd and |g(x + t d)ᵀd| ≤ c2 |gᵀd|: bracket, then zoom.
    ``evaluate(x, t, d)`` returns the loss and flat gradient at x + t d (x left unchanged).
    Returns (loss, gradient, t, evaluations)."""
    d_norm = d.abs().max()
    g = g.clone(memory_format=torch.contiguous_format)
    f_new, g_new = evaluate(x, t, d)
    evals, ls_iter = 1, 0
    gtd_new = g_new.dot(d)
    t_prev, f_prev, g_prev, gtd_prev = 0, f, g, gtd
    done = False
    # -- bracketing: grow t until the interval [t_prev, t] must hold a Wolfe point --------
    while ls_iter < max_ls:
        if f_new > (f + c1 * t * gtd) or (ls_iter > 1 and f_new >= f_prev):
            bracket, bf = [t_prev, t], [f_prev, f_new]
            bg, bgtd = [g_prev, g_new.clone(memory_format=torch.contiguous_format)], \
                [gtd_prev, gtd_new]
            break
        if abs(gtd_new) <= -c2 * gtd:
            bracket, bf, bg = [t], [f_new], [g_new]
            done = True
            break
        if gtd_new >= 0:
            bracket, bf = [t_prev, t], [f_prev, f_new]
            bg, bgtd = [g_prev, g_new.clone(memory_format=torch.contiguous_format)], \
                [gtd_prev, gtd_new]
            break
        low, high = t + 0.01 * (t - t_prev), t * 10
        t_prev, t = t, cubic_minimum(t_prev, f_prev, gtd_prev, t, f_new, gtd_new, (low, high))
        f_prev, g_prev, gtd_prev = f_new, g_new.clone(memory_format=torch.contiguous_format), \
            gtd_new
        f_new, g_new = evaluate(x, t, d)
        evals += 1
        gtd_new = g_new.dot(d)
        ls_iter += 1
    if ls_iter == max_ls:
        bracket, bf, bg = [0, t], [f, f_new], [g, g_new]
    # -- zoom: shrink the bracket until a point meets the conditions -------------------------
    insufficient = False
    lo, hi = (0, 1) if bf[0] <= bf[-1] else (1, 0)
    while not done and ls_iter < max_ls:
        if abs(bracket[1] - bracket[0]) * d_norm < tolerance_change:
            break
        t = cubic_minimum(bracket[0], bf[0], bgtd[0], bracket[1], bf[1], bgtd[1])
        # keep t at least 10% of the bracket away from its ends when progress stalls
        eps = 0.1 * (max(bracket) - min(bracket))
        if min(max(bracket) - t, t - min(bracket)) < eps:
            if insufficient or t >= max(bracket) or t <= min(bracket):
                t = max(bracket) - eps if abs(t - max(bracket)) < abs(t - min(bracket)) \
                    else min(bracket) + eps
                insufficient = False
            else:
                insufficient = True
        else:
            insufficient = False
        f_new, g_new = evaluate(x, t, d)
        evals += 1
        gtd_new = g_new.dot(d)
        ls_iter += 1
        if f_new > (f + c1 * t * gtd) or f_new >= bf[lo]:
            bracket[hi], bf[hi] = t, f_new
            bg[hi], bgtd[hi] = g_new.clone(memory_format=torch.contiguous_format), gtd_new
            lo, hi = (0, 1) if bf[0] <= bf[1] else (1, 0)
        else:
            if abs(gtd_new) <= -c2 * gtd:
                done = True
            elif gtd_new * (bracket[hi] - bracket[lo]) >= 0:
                bracket[hi], bf[hi], bg[hi], bgtd[hi] = bracket[lo], bf[lo], bg[lo], bgtd[lo]
            bracket[lo], bf[lo] = t, f_new
            bg[lo], bgtd[lo] = g_new.clone(memory_format=torch.contiguous_format), gtd_new
    return bf[lo], bg[lo], bracket[lo], evals


def two_loop(grad: Tensor, dirs: list[Tensor], steps: list[Tensor], ro: list[Tensor],
             h_diag: Any, al: list) -> Tensor:
    """-H g by the two-loop recursion (y = ``dirs``, s = ``steps``, ρ = 1 / yᵀs; ``al`` is
    scratch space of length ≥ len(dirs))."""
    q = grad.neg()
    for i in range(len(dirs) - 1, -1, -1):
        al[i] = steps[i].dot(q) * ro[i]
        q.add_(dirs[i], alpha=-al[i])
    r = torch.mul(q, h_diag)
    for i in range(len(dirs)):
        be = dirs[i].dot(r) * ro[i]
        r.add_(steps[i], alpha=al[i] - be)
    return r


class LBFGS(MetaOptimizer):
    """torch.optim.LBFGS's algorithm (same arguments, defaults and trajectory) with tensor
    ``lr``, ``tolerance_grad`` and ``tolerance_change``. One parameter group; no populations.
    ``step(closure)`` requires a closure that zeroes the gradients, computes the loss, calls
    ``backward()`` and returns the loss (``metaopt.train`` and the trainers pass one)."""

    hypers = (Hyper("lr"), Hyper("tolerance_grad"), Hyper("tolerance_change"))
    needs_closure = True
    supports_population = False

    def __init__(self, params, lr: float | Tensor = 1, max_iter: int = 20,
                 max_eval: int | None = None, tolerance_grad: float = 1e-7,
                 tolerance_change: float = 1e-9, history_size: int = 100,
                 line_search_fn: str | None = None, *, population: int | None = None,
                 backend: str = "auto") -> None:
        if population is not None:
            raise ValueError("LBFGS: populations are not supported (one closure per model); "
                             "train members one by one (engine='loop')")
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError("LBFGS: Tensor lr must be 1-element")
        if line_search_fn not in LINE_SEARCHES:
            raise ValueError(f"LBFGS: line_search_fn must be one of {LINE_SEARCHES}, "
                             f"got {line_search_fn!r}")
        for name, value in (("max_iter", max_iter), ("history_size", history_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"LBFGS: {name} must be a positive int, got {value!r}")
        if max_eval is None:
            max_eval = max_iter * 5 // 4
        defaults = dict(lr=lr, max_iter=max_iter, max_eval=max_eval,
                        tolerance_grad=tolerance_grad, tolerance_change=tolerance_change,
                        history_size=history_size, line_search_fn=line_search_fn)
        super().__init__(params, defaults, population=None, backend=backend)
        if len(self.param_groups) != 1:
            raise ValueError("LBFGS doesn't support per-parameter options (parameter groups)")

    @property
    def _params(self) -> list[Tensor]:
        return self.param_groups[0]["params"]

    # -- flat views -----------------------------------------------------------------------
    def _flat_grad(self) -> Tensor:
        views = []
        for p in self._params:
            if p.grad is None:
                views.append(p.new_zeros(p.numel()))
            elif p.grad.is_sparse:
                views.append(p.grad.to_dense().view(-1))
            else:
                views.append(p.grad.view(-1))
        return torch.cat(views, 0)

    def _add(self, t: Any, d: Tensor) -> None:
        offset = 0
        for p in self._params:
            n = p.numel()
            p.add_(d[offset:offset + n].view_as(p), alpha=t)
            offset += n

    def _evaluate(self, closure: Callable, x: list[Tensor], t: Any, d: Tensor
                  ) -> tuple[float, Tensor]:
        self._add(t, d)
        loss = float(closure())
        grad = self._flat_grad()
        for p, saved in zip(self._params, x):
            p.copy_(saved)
        return loss, grad

    # -- the step -------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Up to ``max_iter`` L-BFGS iterations; returns the loss before the first."""
        if closure is None:
            raise RuntimeError("LBFGS.step needs a closure that re-evaluates the model and "
                               "returns the loss")
        closure = torch.enable_grad()(closure)
        group = self.param_groups[0]
        lr = group["lr"]
        tol_grad, tol_change = float(group["tolerance_grad"]), float(group["tolerance_change"])
        max_iter, max_eval = group["max_iter"], group["max_eval"]
        history = group["history_size"]
        state = self.state[self._params[0]]
        state.setdefault("func_evals", 0)
        state.setdefault("n_iter", 0)

        orig_loss = closure()
        loss = float(orig_loss)
        evals = 1
        state["func_evals"] += 1
        grad = self._flat_grad()
        if grad.abs().max() <= tol_grad:
            return orig_loss
        d, t = state.get("d"), state.get("t")
        dirs, steps, ro = state.get("old_dirs"), state.get("old_stps"), state.get("ro")
        h_diag, prev_grad = state.get("H_diag"), state.get("prev_flat_grad")
        prev_loss = state.get("prev_loss")
        n_iter = 0
        while n_iter < max_iter:
            n_iter += 1
            state["n_iter"] += 1
            # -- direction ----------------------------------------------------------------
            if state["n_iter"] == 1:
                d, dirs, steps, ro, h_diag = grad.neg(), [], [], [], 1
            else:
                y = grad.sub(prev_grad)
                s = d.mul(t)
                ys = y.dot(s)
                if ys > 1e-10:  # keep only pairs of positive curvature
                    if len(dirs) == history:
                        dirs.pop(0)
                        steps.pop(0)
                        ro.pop(0)
                    dirs.append(y)
                    steps.append(s)
                    ro.append(1.0 / ys)
                    h_diag = ys / y.dot(y)
                if "al" not in state:
                    state["al"] = [None] * history
                d = two_loop(grad, dirs, steps, ro, h_diag, state["al"])
            if prev_grad is None:
                prev_grad = grad.clone(memory_format=torch.contiguous_format)
            else:
                prev_grad.copy_(grad)
            prev_loss = loss
            # -- step length --------------------------------------------------------------
            if state["n_iter"] == 1:
                t = torch.clamp(grad.abs().sum().reciprocal(), max=1.0) * lr
            else:
                t = lr
            gtd = grad.dot(d)
            if gtd > -tol_change:
                break
            ls_evals = 0
            if group["line_search_fn"] == "strong_wolfe":
                x = [p.clone(memory_format=torch.contiguous_format) for p in self._params]
                loss, grad, t, ls_evals = strong_wolfe(
                    lambda x_, t_, d_: self._evaluate(closure, x_, t_, d_), x, t, d, loss,
                    grad, gtd, max_ls=max_eval - evals)
                self._add(t, d)
                optimal = grad.abs().max() <= tol_grad
            else:
                self._add(t, d)
                optimal = False
                if n_iter != max_iter:  # the last iteration's loss would go unused
                    loss = float(closure())
                    grad = self._flat_grad()
                    optimal = grad.abs().max() <= tol_grad
                    ls_evals = 1
            evals += ls_evals
            state["func_evals"] += ls_evals
            # -- stopping tests -----------------------------------------------------------
            if n_iter == max_iter or evals >= max_eval or optimal:
                break
            if d.mul(t).abs().max() <= tol_change or abs(loss - prev_loss) < tol_change:
                break
        state.update(d=d, t=t, old_dirs=dirs, old_stps=steps, ro=ro, H_diag=h_diag,
                     prev_flat_grad=prev_grad, prev_loss=prev_loss)
        return orig_loss

    def adopt_state(self, param: Tensor, state: dict, group) -> None:
        """torch's LBFGS state needs nothing: its keys and types are used as they are."""
