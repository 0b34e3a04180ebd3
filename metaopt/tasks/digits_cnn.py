"""A small convolutional net on the 8x8 digits (1,347 train / 450 validation images)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from metaopt.tasks import datasets
from metaopt.tasks.losses import Supervised
from metaopt.tasks.task import Task

BATCH_SIZE = 128


def model() -> nn.Module:
    """conv3x3(8) → ReLU → conv3x3(16, stride 2) → ReLU → linear(256 → 10). A strided conv
    instead of max-pooling (cheaper on CPU); no BatchNorm, so populations can vmap it."""
    return nn.Sequential(
        nn.Unflatten(-1, (1, 8, 8)),
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(-3),
        nn.Linear(16 * 4 * 4, 10),
    )


loss = Supervised(F.cross_entropy)


data = datasets.TrainBatches(datasets.digits, BATCH_SIZE)
evaluate = datasets.ValidationLoss(datasets.digits, loss)


def digits_cnn() -> Task:
    return Task(
        name="digits_cnn",
        model=model,
        loss=loss,
        data=data,
        evaluate=evaluate,
        steps=300,
        default_optimizer="adam",
        default_hparams={"lr": 3e-3},
        target=0.18,
        description="digits CNN (conv 8, strided conv 16, linear) on 1x8x8 images, batch 128, "
        "validation cross-entropy on 450 images",
    )
