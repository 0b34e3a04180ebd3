"""``metaopt demo``: train the digits MLP with several metaopt optimizers and compare them."""

from __future__ import annotations

import time

import torch

from metaopt import optim, tasks
from metaopt.tasks.task import take_step

# (label, optimizer name, hyperparameters): sensible settings, not tuned per optimizer
CONTENDERS = [
    ("sgd+momentum", "sgd", {"lr": 0.05, "momentum": 0.9}),
    ("adagrad", "adagrad", {"lr": 0.05}),
    ("rmsprop", "rmsprop", {"lr": 1e-3}),
    ("adam", "adam", {"lr": 3e-3}),
    ("adamw", "adamw", {"lr": 3e-3, "weight_decay": 1e-2}),
    ("adamax", "adamax", {"lr": 6e-3}),
    ("nadam", "nadam", {"lr": 3e-3}),
    ("radam", "radam", {"lr": 3e-3}),
    ("adadelta", "adadelta", {"lr": 1.0}),
    ("adafactor", "adafactor", {"lr": 0.03}),
    ("muon+adamw", "composite", {"lr": 0.02, "adamw_lr": 3e-3}),
    ("lstm (learned)", "lstm", {}),  # the shipped meta-trained optimizer, untuned
]


def build(name: str, module: torch.nn.Module, hparams: dict) -> torch.optim.Optimizer:
    if name == "composite":
        return optim.Composite(optim.muon_groups(module, **hparams))
    return optim.create(name, module.parameters(), **hparams)


def train_once(task: tasks.Task, name: str, hparams: dict, steps: int, seed: int = 0
               ) -> tuple[float, float]:
    """Train ``task`` with one optimizer; returns (validation loss, seconds)."""
    torch.manual_seed(seed)
    module = task.model()
    opt = build(name, module, hparams)
    batches = task.data(torch.Generator().manual_seed(seed))
    start = time.perf_counter()
    for _ in range(steps):
        take_step(task, module, opt, next(batches))
    seconds = time.perf_counter() - start
    return task.evaluate(module), seconds


def add_arguments(parser) -> None:
    parser.add_argument("--steps", type=int, default=None, help="steps per optimizer")


def run(args) -> int:
    main(args.steps)
    return 0


def main(steps: int | None = None) -> list[dict]:
    torch.set_flush_denormal(True)
    task = tasks.get("digits_mlp")
    steps = steps or task.steps
    print(f"metaopt demo: {len(CONTENDERS)} optimizers on {task.name} ({task.description}), "
          f"{steps} steps each, seed 0")
    rows = []
    for label, name, hparams in CONTENDERS:
        val, seconds = train_once(task, name, hparams, steps)
        rows.append({"optimizer": label, "hparams": hparams, "val_loss": val, "seconds": seconds})
        print(f"  {label:<15} val loss {val:.4f}  {seconds:5.2f} s", flush=True)
    rows.sort(key=lambda r: r["val_loss"])
    print()
    print("| rank | optimizer | hyperparameters | val loss | train time (s) |")
    print("|---:|---|---|---:|---:|")
    for i, r in enumerate(rows, 1):
        hp = ", ".join(f"{k}={v:g}" for k, v in r["hparams"].items())
        print(f"| {i} | {r['optimizer']} | {hp} | {r['val_loss']:.4f} | {r['seconds']:.2f} |")
    return rows
