"""A small GAN on the 2-d ring of 8 Gaussians (Metz et al. 2017, "Unrolled GANs").

Two players in one module (``generator``, ``discriminator``), trained by ``train_step`` with the
non-saturating loss. Validation is the energy distance between 1,000 generated points (fixed
latent noise) and 1,000 fixed real points: 0 for matching distributions, large when modes are
dropped.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaopt.tasks.task import Phase, Task, module_device, phased_train_step

MODES = 8
RADIUS = 2.0
STD = 0.02
LATENT = 8
HIDDEN = 64
BATCH_SIZE = 128
VAL_SIZE = 1000
VAL_SEED = 10_002


def sample_real(n: int, generator: torch.Generator) -> Tensor:
    """``n`` points from the mixture of ``MODES`` Gaussians evenly spaced on a circle."""
    angle = torch.randint(0, MODES, (n,), generator=generator) * (2 * math.pi / MODES)
    centres = RADIUS * torch.stack([angle.cos(), angle.sin()], dim=-1)
    return centres + STD * torch.randn(n, 2, generator=generator)


@functools.cache
def validation() -> tuple[Tensor, Tensor]:
    """Fixed real points and fixed latent noise for evaluation."""
    gen = torch.Generator().manual_seed(VAL_SEED)
    return sample_real(VAL_SIZE, gen), torch.randn(VAL_SIZE, LATENT, generator=gen)


def _mlp(inputs: int, outputs: int) -> nn.Module:
    """Two hidden layers with leaky ReLUs: with plain ReLUs the players cycle through single
    modes (the collapse of Metz et al.'s Figure 1) at most seeds; leaky ones cover the ring."""
    return nn.Sequential(
        nn.Linear(inputs, HIDDEN),
        nn.LeakyReLU(0.2),
        nn.Linear(HIDDEN, HIDDEN),
        nn.LeakyReLU(0.2),
        nn.Linear(HIDDEN, outputs),
    )


class GAN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.generator = _mlp(LATENT, 2)
        self.discriminator = _mlp(2, 1)


def _discriminator_loss(module: GAN, real: Tensor, fake: Tensor) -> Tensor:
    real_logits, fake_logits = module.discriminator(real), module.discriminator(fake)
    return F.binary_cross_entropy_with_logits(
        real_logits, torch.ones_like(real_logits)
    ) + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))


def _generator_loss(module: GAN, z: Tensor) -> Tensor:
    logits = module.discriminator(module.generator(z))
    return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))  # non-saturating


def loss(module: GAN, batch: tuple[Tensor, Tensor]) -> Tensor:
    """The discriminator's loss on ``batch`` (for monitoring; training goes through
    ``train_step``, since no single loss trains both players)."""
    real, z = batch
    return _discriminator_loss(module, real, module.generator(z))


def _discriminator_phase(module: GAN, batch: tuple[Tensor, Tensor]) -> Tensor:
    real, z = batch
    return _discriminator_loss(module, real, module.generator(z).detach())


def _generator_phase(module: GAN, batch: tuple[Tensor, Tensor]) -> Tensor:
    return _generator_loss(module, batch[1])


# One discriminator step, then one generator step, on one optimizer over both players: before
# each step the other player's grads are set to None, so it is skipped (no update, no moment
# decay, no weight decay). Returns the discriminator loss. As phases, a population stacks it.
train_step = phased_train_step(Phase("discriminator.", _discriminator_phase),
                               Phase("generator.", _generator_phase))


def data(generator: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
    """Batches ``(real points [128, 2], latent noise [128, 8])``."""
    while True:
        real = sample_real(BATCH_SIZE, generator)
        yield real, torch.randn(BATCH_SIZE, LATENT, generator=generator)


def energy_distance(x: Tensor, y: Tensor) -> Tensor:
    """2 E|X − Y| − E|X − X'| − E|Y − Y'| (Székely & Rizzo), ≥ 0, 0 iff the laws match."""
    return 2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean()


@torch.no_grad()
def evaluate(module: GAN) -> float:
    real, z = validation()
    device = module_device(module)
    return float(energy_distance(module.generator(z.to(device)), real.to(device)))


def gan_mixture() -> Task:
    return Task(
        name="gan_mixture",
        model=GAN,
        loss=loss,
        data=data,
        evaluate=evaluate,
        steps=500,
        default_optimizer="adam",
        default_hparams={"lr": 2e-3, "betas": (0.5, 0.999)},
        target=0.12,
        train_step=train_step,
        grad_evals_per_step=2,
        description="GAN (leaky-ReLU MLPs 64-64) on a ring of 8 Gaussians, batch 128, own "
        "train_step (two optimizer steps per batch); validation energy distance, 1,000 vs 1,000 "
        "points",
    )
