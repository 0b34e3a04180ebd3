"""Multi-layer perceptrons on the 8x8 digits (1,347 train / 450 validation images).

``digits_mlp``: 64-64-10 with ReLU, the framework's demo workload. ``digits_mlp_sigmoid``: one
hidden layer of 20 sigmoid units, the MNIST network of Andrychowicz et al. (2016) scaled to
digits, used to meta-train the learned optimizer.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from metaopt.tasks import datasets
from metaopt.tasks.losses import Supervised
from metaopt.tasks.task import Task

BATCH_SIZE = 128


def mlp(hidden: tuple[int, ...], activation: type[nn.Module]) -> nn.Module:
    """64 inputs, the ``hidden`` layers with ``activation`` after each, 10 logits."""
    layers: list[nn.Module] = []
    width = 64
    for h in hidden:
        layers += [nn.Linear(width, h), activation()]
        width = h
    return nn.Sequential(*layers, nn.Linear(width, 10))


def relu_mlp() -> nn.Module:
    return mlp((64,), nn.ReLU)


def sigmoid_mlp() -> nn.Module:
    return mlp((20,), nn.Sigmoid)


loss = Supervised(F.cross_entropy)


data = datasets.TrainBatches(datasets.digits, BATCH_SIZE)
evaluate = datasets.ValidationLoss(datasets.digits, loss)


def digits_mlp() -> Task:
    return Task(
        name="digits_mlp",
        model=relu_mlp,
        loss=loss,
        data=data,
        evaluate=evaluate,
        steps=500,
        default_optimizer="adam",
        default_hparams={"lr": 1e-3},
        target=0.15,
        description="digits MLP 64-64-10 (ReLU), batch 128, validation cross-entropy on 450 images",
    )


def digits_mlp_sigmoid() -> Task:
    return Task(
        name="digits_mlp_sigmoid",
        model=sigmoid_mlp,
        loss=loss,
        data=data,
        evaluate=evaluate,
        steps=200,
        default_optimizer="adam",
        default_hparams={"lr": 1e-2},
        target=0.2,
        description="digits MLP 64-20-10 (sigmoid, as in Andrychowicz et al. 2016), batch 128, "
        "validation cross-entropy on 450 images",
    )
