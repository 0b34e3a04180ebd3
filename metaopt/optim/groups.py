"""The usual parameter-group policies, as small visible functions (nanoGPT style)."""

from __future__ import annotations

from typing import Any

from torch import nn

NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm,
               nn.RMSNorm)


def _named_params(model: nn.Module) -> list[tuple[str, nn.Module, nn.Parameter]]:
    out = []
    for module_name, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            if p.requires_grad:
                out.append((f"{module_name}.{name}".lstrip("."), module, p))
    return out


def _decays(module: nn.Module, name: str) -> bool:
    return not (name.endswith("bias") or isinstance(module, NORM_LAYERS))


def weight_decay_groups(model: nn.Module, weight_decay: float,
                        **hparams: Any) -> list[dict[str, Any]]:
    """Two groups: weights with ``weight_decay``, and biases and norm-layer gains without."""
    decay, no_decay = [], []
    for name, module, p in _named_params(model):
        (decay if _decays(module, name) else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, **hparams},
              {"params": no_decay, "weight_decay": 0.0, **hparams}]
    return [g for g in groups if g["params"]]


def muon_groups(model: nn.Module, *, lr: float = 0.02, weight_decay: float = 0.1,
                adamw_lr: float = 3e-4, adamw_weight_decay: float = 0.01,
                head: str | None = None, population: int | None = None,
                ) -> list[dict[str, Any]]:
    """Groups for :class:`Composite`: Muon for hidden matrices, AdamW for the rest.

    Hidden matrices are the 2-D (per member) weights of ``nn.Linear`` layers other than the
    output head (``head``: the module's name; default the last ``nn.Linear``). Embeddings,
    the head, biases and norms go to AdamW, without weight decay on biases and norms.
    """
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    head = head if head is not None else (linears[-1] if linears else None)
    member_dims = 3 if population else 2
    muon, adamw_decay, adamw_plain = [], [], []
    for name, module, p in _named_params(model):
        module_name = name.rsplit(".", 1)[0] if "." in name else ""
        hidden = (isinstance(module, nn.Linear) and module_name != head
                  and p.dim() == member_dims)
        if hidden:
            muon.append(p)
        elif _decays(module, name):
            adamw_decay.append(p)
        else:
            adamw_plain.append(p)
    groups = [
        {"params": muon, "optimizer": "muon", "lr": lr, "weight_decay": weight_decay},
        {"params": adamw_decay, "optimizer": "adamw", "lr": adamw_lr,
         "weight_decay": adamw_weight_decay},
        {"params": adamw_plain, "optimizer": "adamw", "lr": adamw_lr, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]
