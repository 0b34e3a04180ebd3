"""metaopt: choose, tune, schedule and learn PyTorch optimizers.

- :mod:`metaopt.optim`: torch.optim-compatible optimizers whose hyperparameters are tensors,
  for one model or a population of stacked models;
- :mod:`metaopt.schedules`: schedules as pure functions of the step;
- :mod:`metaopt.tasks`: the Task protocol and built-in tasks;
- :func:`train` one model, :func:`train_population` many at once;
- :func:`search` (:mod:`metaopt.search`): Optuna studies over optimizers, hyperparameters and
  schedules, trials trained together as populations;
- :func:`pbt` (:mod:`metaopt.pbt`): population-based training, vectorised in one process;
- :func:`select` (:mod:`metaopt.select`): the best optimizer for a task within a budget.
"""

from metaopt import optim, pbt, schedules, search, select, tasks
from metaopt.population import Population, PopulationResult, train_population
from metaopt.train import TrainResult, train

__all__ = ["optim", "pbt", "schedules", "search", "select", "tasks", "train", "TrainResult",
           "train_population", "Population", "PopulationResult"]
__version__ = "0.1.0"
