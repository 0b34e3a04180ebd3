"""Curvature preconditioners in front of any metaopt optimizer, built from what the
``nn.Linear`` and ``nn.Conv2d`` layers see: K-FAC (:mod:`metaopt.optim.kfac`) and the
natural gradient (:mod:`metaopt.optim.natural_gradient`).

A :class:`LayerPreconditioner` wraps a metaopt optimizer (``base``), catches each layer's
input and output gradient, turns the layers' gradients into preconditioned ones
(:meth:`precondition`, the subclass's curvature), and lets the wrapped optimizer step.
Parameters outside such layers are stepped on their plain gradients.

Which gradients the curvature is built from (``fisher``):

- ``"empirical"``: those of the training loss itself, caught while ``step(closure)`` runs the
  closure (global module hooks, so no model is needed), or, with ``model=`` given, by hooks on
  its layers on every forward/backward (then ``loss.backward(); opt.step()`` works too);
- ``"sampled"`` (the true Fisher's Monte-Carlo estimate; needs ``model=``): after the training
  loss's backward, the model is run again on the same inputs and the layers' gradients are
  taken of a loss whose targets are drawn from the model's own predictive distribution
  (``likelihood``: ``"categorical"`` over the last dimension of the output (logits), or
  ``"gaussian"`` with unit variance), one draw per example, from ``torch``'s global generator.
  It costs one more forward and backward per step; the parameters' ``.grad`` stay those of the
  training loss.

Losses are taken to be means over the batch: ``n · (output gradient)`` is each example's own.
No populations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaopt.optim.hyperparams import Hyper, HyperGroup
from metaopt.optim.optimizer import MetaOptimizer
from metaopt.optim.registry import create
from metaopt.optim.wrapper import Wrapper

LAYERS = (nn.Linear, nn.Conv2d)
FISHERS = ("empirical", "sampled")
LIKELIHOODS = ("categorical", "gaussian")
Caught = dict[int, tuple[nn.Module, Tensor, Tensor]]  # weight index -> (layer, input, grad out)


def layer_rows(module: nn.Module, x: Tensor, grad_out: Tensor) -> tuple[Tensor, Tensor, int]:
    """(a, g, n): the layer's input rows (ones appended for a bias), its output-gradient rows
    (example-major: example i's rows are contiguous), and the batch size."""
    n = x.shape[0]
    if isinstance(module, nn.Conv2d):
        a = F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)
        a = a.transpose(1, 2).reshape(-1, a.shape[1])
        g = grad_out.flatten(2).transpose(1, 2).reshape(-1, grad_out.shape[1])
    else:
        a = x.reshape(-1, x.shape[-1])
        g = grad_out.reshape(-1, grad_out.shape[-1])
    if module.bias is not None:
        a = torch.cat([a, a.new_ones(a.shape[0], 1)], dim=1)
    return a, g, n


def gradient_matrix(module: nn.Module) -> Tensor:
    """[∇W, ∇b] as an out × (fan_in (+1)) matrix."""
    w = module.weight.grad.reshape(module.weight.shape[0], -1)
    if module.bias is None:
        return w
    bias = module.bias.grad if module.bias.grad is not None else torch.zeros_like(module.bias)
    return torch.cat([w, bias.reshape(-1, 1)], dim=1)


def sampled_loss(output: Tensor, likelihood: str) -> Tensor:
    """The batch-mean negative log-likelihood of targets drawn from the model's own
    predictive distribution (the draws carry no gradient)."""
    n = output.shape[0]
    if likelihood == "categorical":
        logits = output.reshape(-1, output.shape[-1])
        targets = torch.multinomial(logits.detach().softmax(-1), 1).squeeze(-1)
        return F.cross_entropy(logits, targets, reduction="sum") / n
    targets = output.detach() + torch.randn_like(output)
    return 0.5 * (output - targets).pow(2).sum() / n


class LayerPreconditioner(Wrapper):
    """The wrapper (see the module docstring). Subclasses set ``HYPERS`` (tensor
    hyperparameters added to the wrapped optimizer's groups) and ``state_key`` (the name of
    their per-layer state in ``state_dict``), and implement :meth:`precondition`."""

    HYPERS: tuple[Hyper, ...] = ()
    state_key = "curvature"
    needs_closure = True  # catches the layers while the closure runs (or give model=)
    needs_model = False
    supports_population = False

    def __init__(self, params: Iterable, base: str, hypers: dict[str, Any], update_freq: int,
                 model: nn.Module | None, fisher: str, likelihood: str,
                 base_hparams: dict[str, Any]) -> None:
        name = type(self).__name__
        if base_hparams.get("population") is not None:
            raise ValueError(f"{name}: populations are not supported; use engine='loop'")
        if isinstance(update_freq, bool) or not isinstance(update_freq, int) or update_freq < 1:
            raise ValueError(f"{name}: update_freq must be a positive int, got {update_freq!r}")
        if fisher not in FISHERS:
            raise ValueError(f"{name}: fisher must be one of {', '.join(FISHERS)}, "
                             f"got {fisher!r}")
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"{name}: likelihood must be one of {', '.join(LIKELIHOODS)}, "
                             f"got {likelihood!r}")
        if fisher == "sampled" and model is None:
            raise ValueError(f"{name}: fisher='sampled' runs the model again on sampled "
                             f"targets: give model=")
        inner = create(base, params, **base_hparams)
        if not isinstance(inner, MetaOptimizer):
            raise TypeError(f"{name} wraps a metaopt optimizer, got {type(inner).__name__}")
        self.optimizer = inner
        self.base, self.update_freq = base, update_freq
        self.fisher, self.likelihood = fisher, likelihood
        self.curvature: dict[int, dict[str, Tensor]] = {}  # weight index -> the layer's state
        self.curvature_steps = 0
        self._caught: dict[int, tuple[nn.Module, Tensor, Tensor | None]] = {}
        self._hooks: list = []
        self._model, self._inputs = model, None
        self._catch = fisher == "empirical"  # sampled: only during the sampled pass
        super().__init__(inner.param_groups, dict(inner.defaults, **hypers))
        if model is not None:
            for module in model.modules():
                if isinstance(module, LAYERS) and self._index(module.weight) is not None:
                    self._hooks.append(module.register_forward_hook(self._forward_hook))
            if fisher == "sampled":
                self._hooks.append(model.register_forward_pre_hook(self._input_hook))

    # -- the wrapped optimizer's groups and state ----------------------------------------
    def own_state(self) -> dict[Tensor, dict[str, Tensor]]:
        """For a layer's weight, its curvature state."""
        params = self._params()
        return {params[i]: s for i, s in self.curvature.items()}

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        inner = self.optimizer.param_groups
        if any(param_group is g for g in inner):
            group, given = param_group, {}
        else:
            given = {h.key: param_group.pop(h.key) for h in self.HYPERS if h.key in param_group}
            self.optimizer.add_param_group(param_group)
            group = inner[-1]
        for h in self.HYPERS:
            if h.key in group.spec:
                raise ValueError(f"{type(self).__name__}: the {self.base} optimizer already "
                                 f"has a {h.key!r}")
            group.add_hyper(h, given.get(h.key, self.defaults[h.key]))

    def _index(self, param: Tensor) -> int | None:
        for i, p in enumerate(self._params()):
            if p is param:
                return i
        return None

    def group_of(self, param: Tensor) -> HyperGroup:
        return next(g for g in self.param_groups if any(p is param for p in g["params"]))

    # -- catching inputs and output gradients ----------------------------------------------
    def _forward_hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        if not self._catch or not isinstance(module, LAYERS) or not isinstance(output, Tensor):
            return
        index = self._index(module.weight)
        if index is None or not output.requires_grad or not torch.is_grad_enabled():
            return
        x = args[0].detach()
        self._caught[index] = (module, x, None)

        def grad_hook(grad: Tensor, index: int = index) -> None:
            module_, x_, _ = self._caught[index]
            self._caught[index] = (module_, x_, grad.detach())

        output.register_hook(grad_hook)

    def _input_hook(self, model: nn.Module, args: tuple) -> None:
        if torch.is_grad_enabled() and not self._catch:
            self._inputs = tuple(a.detach() if isinstance(a, Tensor) else a for a in args)

    @contextmanager
    def _catching(self):
        handle = (None if self._hooks else
                  nn.modules.module.register_module_forward_hook(self._forward_hook))
        try:
            yield
        finally:
            if handle is not None:
                handle.remove()

    def _sampled_pass(self) -> None:
        """The model again on the training step's inputs, the layers' output gradients taken
        of the sampled-target loss (the parameters' ``.grad`` untouched)."""
        if self._inputs is None:
            raise RuntimeError(f"{type(self).__name__}: fisher='sampled' saw no forward of "
                               f"the model this step")
        self._caught, self._catch = {}, True
        try:
            with torch.enable_grad():
                output = self._model(*self._inputs)
                loss = sampled_loss(output, self.likelihood)
                weights = [m.weight for m, _, _ in self._caught.values()]
                if weights:
                    torch.autograd.grad(loss, weights, allow_unused=True)
        finally:
            self._catch, self._inputs = False, None

    # -- stepping -------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Evaluate ``closure`` (catching the layers), precondition their gradients, then
        step the wrapped optimizer."""
        loss = None
        if closure is not None:
            if self._catch:
                self._caught = {}
            with self._catching(), torch.enable_grad():
                loss = closure()
        elif not self._hooks:
            raise RuntimeError(f"{type(self).__name__}.step needs a closure (to catch the "
                               f"layers' inputs and output gradients), or build it with model=")
        if self.fisher == "sampled":
            self._sampled_pass()
        caught = {i: c for i, c in self._caught.items() if c[2] is not None
                  and c[0].weight.grad is not None}
        self._caught = {}
        if caught:
            self._write(self.precondition(caught))
        self.curvature_steps += 1
        self.optimizer.step()
        return loss

    def refresh_due(self) -> bool:
        """Whether this step recomputes inverses (every ``update_freq`` steps, from the
        first)."""
        return self.curvature_steps % self.update_freq == 0

    def precondition(self, caught: Caught) -> list[tuple[nn.Module, Tensor, Tensor]]:
        """``(layer, preconditioned [∇W, ∇b], plain [∇W, ∇b])`` for the caught layers."""
        raise NotImplementedError

    def _write(self, natural: list[tuple[nn.Module, Tensor, Tensor]]) -> None:
        """The preconditioned gradients into ``.grad``, scaled by min(1, √(κ / (lr² Σ M'·M)))
        over all layers when ``kl_clip`` κ is set (kfac-pytorch's trust region)."""
        hp = self.param_groups[0].hparams
        nu: Tensor | float = 1.0
        if hp.get("kl_clip") is not None:
            vg = sum((nat * m).sum() for _, nat, m in natural) * hp["lr"] ** 2
            nu = torch.clamp(torch.sqrt(hp["kl_clip"] / vg.clamp(min=1e-30)), max=1.0)
        for module, nat, _ in natural:
            nat = nat * nu
            w = module.weight
            w.grad.copy_(nat[:, :w[0].numel()].reshape(w.shape))
            if module.bias is not None and module.bias.grad is not None:
                module.bias.grad.copy_(nat[:, -1])

    # -- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        sd = self.optimizer.state_dict()
        sd[self.state_key] = {i: dict(s) for i, s in self.curvature.items()}
        sd[f"{self.state_key}_steps"] = self.curvature_steps
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        saved = state_dict.pop(self.state_key, {})
        self.curvature_steps = int(state_dict.pop(f"{self.state_key}_steps", 0))
        self.optimizer.load_state_dict(state_dict)
        params = self._params()
        self.curvature = {int(i): {k: v.to(dtype=params[int(i)].dtype,
                                          device=params[int(i)].device).clone()
                                   for k, v in s.items()} for i, s in saved.items()}

    def __getstate__(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer, "defaults": self.defaults, "base": self.base,
                "update_freq": self.update_freq, "fisher": self.fisher,
                "likelihood": self.likelihood, "curvature": self.curvature,
                "curvature_steps": self.curvature_steps, "_caught": {}, "_hooks": [],
                "_model": None, "_inputs": None, "_catch": self.fisher == "empirical"}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.optimizer!r})"
