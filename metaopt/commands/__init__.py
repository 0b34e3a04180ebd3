"""The ``metaopt`` subcommands: each module offers ``add_arguments(parser)`` and
``run(args) -> int``; ``COMMANDS`` maps a name to its module (later commands plug in here)."""

from __future__ import annotations

import importlib
from types import ModuleType

COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("metaopt.commands.demo", "compare optimizers on the digits MLP (the main job)"),
    "train": ("metaopt.commands.train", "train one model as an experiment file describes"),
    "report": ("metaopt.commands.report", "render a run directory's figures and report.md"),
    "meta-train": ("metaopt.commands.meta_train",
                   "meta-train a learned optimizer (the lstm) as an experiment file describes"),
    "tune": ("metaopt.commands.tune", "search optimizers, hyperparameters and schedules with "
             "Optuna, trials trained together as populations"),
    "dashboard": ("metaopt.commands.dashboard", "serve a tune run's study in optuna-dashboard"),
    "pbt": ("metaopt.commands.pbt", "population-based training: exploit and explore, vectorised"),
    "select": ("metaopt.commands.select", "pick the best optimizer, hyperparameters and schedule "
               "for a task within a budget"),
}


def load(name: str) -> ModuleType:
    return importlib.import_module(COMMANDS[name][0])
