"""REINFORCE (Williams 1992) on batched CartPole: a small policy network learns to balance the
pole for ``HORIZON`` steps.

A batch is the randomness of one round of episodes (start states and the uniform noise that
samples actions), so training is deterministic for a given generator, and the loss (roll out
with the current policy, then the surrogate) is an ordinary loss: one on-policy update is one
gradient step on it, and a population of policies vmaps (each member's own episodes).
Validation is minus the mean return of the stochastic policy on fixed evaluation episodes
(best possible: −HORIZON).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaopt.tasks import cartpole
from metaopt.tasks.task import Task, module_device

HORIZON = 100
EPISODES = 32  # per training batch
GAMMA = 0.99
VAL_EPISODES = 100
VAL_SEED = 10_003


def policy() -> nn.Module:
    """State (4) → 16 tanh units → logit of pushing right."""
    return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))


def sample(n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Randomness for ``n`` episodes: start states ``[n, 4]`` and action noise ``[n, HORIZON]``."""
    return cartpole.initial_states(n, generator), torch.rand(n, HORIZON, generator=generator)


@functools.cache
def validation() -> tuple[Tensor, Tensor]:
    return sample(VAL_EPISODES, torch.Generator().manual_seed(VAL_SEED))


def _returns_to_go(rewards: Tensor) -> Tensor:
    """Discounted returns-to-go along dim 0 of ``rewards`` ``[T, n]``."""
    out, running = torch.empty_like(rewards), torch.zeros_like(rewards[0])
    for t in range(len(rewards) - 1, -1, -1):
        running = rewards[t] + GAMMA * running
        out[t] = running
    return out


def masked_std(x: Tensor, mask: Tensor) -> Tensor:
    """``x[mask].std()`` (Bessel-corrected) without indexing by the mask, so the loss vmaps
    over a stacked population (each member's episodes end at different steps)."""
    count = mask.sum()
    mean = torch.where(mask, x, 0.0).sum() / count
    return (torch.where(mask, (x - mean) ** 2, 0.0).sum() / (count - 1)).sqrt()


def loss(module: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    """REINFORCE surrogate: roll out (no grad), then −Σ log π(a|s) · advantage over the steps
    taken, with the per-step batch mean as baseline and normalised advantages."""
    start, noise = batch
    run = cartpole.rollout(module, start, noise)
    returns = _returns_to_go(run.alive)
    advantage = returns - returns.mean(1, keepdim=True)
    advantage = advantage / (masked_std(advantage, run.alive > 0) + 1e-6)
    logits = module(run.states).squeeze(-1)
    log_prob = -F.binary_cross_entropy_with_logits(logits, run.actions.float(), reduction="none")
    return -(log_prob * advantage * run.alive).sum() / run.alive.sum()


def data(generator: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
    while True:
        yield sample(EPISODES, generator)


@torch.no_grad()
def evaluate(module: nn.Module) -> float:
    start, noise = (t.to(module_device(module)) for t in validation())
    return -float(cartpole.rollout(module, start, noise).alive.sum(0).mean())


def policy_gradient() -> Task:
    return Task(
        name="policy_gradient",
        model=policy,
        loss=loss,
        data=data,
        evaluate=evaluate,
        steps=40,
        default_optimizer="adam",
        default_hparams={"lr": 1e-2},
        target=-70.0,
        description=f"REINFORCE on batched CartPole (horizon {HORIZON}, {EPISODES} episodes per "
        f"step), policy 4-16-1; validation: minus the mean return on {VAL_EPISODES} fixed episodes",
    )
