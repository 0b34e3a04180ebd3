"""Logistic regression on the Wisconsin breast cancer data (30 standardised features)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from metaopt.tasks import datasets
from metaopt.tasks.losses import Supervised
from metaopt.tasks.task import Task

BATCH_SIZE = 64


def model() -> nn.Module:
    return nn.Linear(30, 1)


loss = Supervised(F.binary_cross_entropy_with_logits, squeeze=True)


data = datasets.TrainBatches(datasets.breast_cancer, BATCH_SIZE)
evaluate = datasets.ValidationLoss(datasets.breast_cancer, loss)


def logistic_breast_cancer() -> Task:
    return Task(
        name="logistic_breast_cancer",
        model=model,
        loss=loss,
        data=data,
        evaluate=evaluate,
        steps=300,
        default_optimizer="adam",
        default_hparams={"lr": 1e-2},
        target=0.15,
        description="logistic regression, breast cancer (455 train / 114 val), batch 64, "
        "validation binary cross-entropy",
    )
