"""A tiny causal transformer on a copy task.

Each sequence is ``LENGTH`` random symbols, a separator, then the same symbols again; the model
reads it left to right and is scored (cross-entropy) only on predicting the copy. Guessing
scores ln(VOCAB) ≈ 2.08; copying needs attention from each copy position back to its source.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaopt.tasks.task import Task, module_device

VOCAB = 8  # symbols 0..7; token VOCAB is the separator
LENGTH = 6
D_MODEL = 32
HEADS = 2
LAYERS = 1
BATCH_SIZE = 64
VAL_SIZE = 512
VAL_SEED = 10_001


def sample(n: int, generator: torch.Generator) -> Tensor:
    """``n`` token sequences ``[n, 2 * LENGTH + 1]``: symbols, separator, symbols."""
    symbols = torch.randint(0, VOCAB, (n, LENGTH), generator=generator)
    separator = torch.full((n, 1), VOCAB, dtype=torch.long)
    return torch.cat([symbols, separator, symbols], dim=1)


@functools.cache
def validation() -> Tensor:
    return sample(VAL_SIZE, torch.Generator().manual_seed(VAL_SEED))


class Block(nn.Module):
    """Pre-norm transformer block with causal self-attention, written out (no dropout, no
    fused kernels) so that ``torch.func.vmap`` serves it."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: Tensor) -> Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(n, t, 3, self.heads, d // self.heads).unbind(2)
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))  # [n, heads, t, head_dim]
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
        attended = (scores.softmax(-1) @ v).transpose(1, 2).reshape(n, t, d)
        x = x + self.proj(attended)
        return x + self.mlp(self.norm2(x))


class CopyTransformer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB + 1, D_MODEL)
        self.position = nn.Parameter(0.02 * torch.randn(2 * LENGTH, D_MODEL))
        self.blocks = nn.Sequential(*(Block(D_MODEL, HEADS) for _ in range(LAYERS)))
        self.norm = nn.LayerNorm(D_MODEL)
        self.head = nn.Linear(D_MODEL, VOCAB)

    def forward(self, tokens: Tensor) -> Tensor:
        """Next-symbol logits ``[n, t, VOCAB]`` for input tokens ``[n, t]``."""
        x = self.embed(tokens) + self.position[: tokens.shape[1]]
        return self.head(self.norm(self.blocks(x)))


def loss(module: nn.Module, batch: Tensor) -> Tensor:
    """Cross-entropy of the copied half, given everything before it."""
    logits = module(batch[:, :-1])[:, LENGTH:]  # positions predicting the copy
    return F.cross_entropy(logits.reshape(-1, VOCAB), batch[:, LENGTH + 1 :].reshape(-1))


def data(generator: torch.Generator) -> Iterator[Tensor]:
    """Fresh sequences every batch (the task has no fixed training set)."""
    while True:
        yield sample(BATCH_SIZE, generator)


@torch.no_grad()
def evaluate(module: nn.Module) -> float:
    return float(loss(module, validation().to(module_device(module))))


def transformer_copy() -> Task:
    return Task(
        name="transformer_copy",
        model=CopyTransformer,
        loss=loss,
        data=data,
        evaluate=evaluate,
        steps=200,
        default_optimizer="adam",
        default_hparams={"lr": 3e-3},
        target=0.02,
        description=f"causal transformer ({LAYERS} layers, d_model {D_MODEL}, {HEADS} heads) "
        f"copying {LENGTH} symbols from {VOCAB}, batch {BATCH_SIZE}; validation cross-entropy "
        f"of the copy on {VAL_SIZE} fixed sequences (guessing scores 2.08)",
    )
