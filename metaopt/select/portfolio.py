"""The candidates ``metaopt select`` chooses among: (optimizer, fixed settings, schedule).

A candidate is one optimizer from the registry with the settings it is tried with (SGD with
heavy-ball momentum, say), the schedule it is paired with and the learning rate its probes
start from. Learning-rate-free methods (Prodigy, D-Adaptation) and the learned LSTM take an
``lr`` that *multiplies* their own step size, so their probes centre on 1; Schedule-Free
methods replace a decaying schedule by their own iterate averaging and are never paired with
one (:func:`check_pairing`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from metaopt import optim

COSINE = {"name": "cosine"}  # to zero over the run (T_max filled in with the run's length)


@dataclass(frozen=True)
class Candidate:
    """``name`` labels the candidate in rankings and the results store; ``optimizer`` is its
    registry name; ``hparams`` its fixed settings; ``schedule`` a spec (``T_max`` filled in
    with the run's length) or None; ``lr`` where its learning-rate probes centre."""

    name: str
    optimizer: str
    hparams: dict[str, Any] = field(default_factory=dict)
    schedule: dict[str, Any] | None = None
    lr: float = 1e-3
    spread: float = 1.0  # probes cover lr x 10^[-spread, +spread] when nothing is known

    def schedule_for(self, steps: int) -> dict[str, Any] | None:
        """The schedule spec for a run of ``steps`` steps."""
        if self.schedule is None:
            return None
        spec = dict(self.schedule)
        if spec.get("name") == "cosine":
            spec.setdefault("T_max", steps)
            spec.setdefault("eta_min", 0.0)
        return spec


def _c(name: str, optimizer: str | None = None, lr: float | None = None,
       schedule: dict | None = COSINE, **hparams: Any) -> Candidate:
    optimizer = optimizer or name
    if lr is None:
        lr = _default_lr(optimizer)
    if getattr(_lookup(optimizer), "schedule_free", False):
        schedule = None
    # a default lr of 1 multiplies a step size the method finds (D-Adaptation, Prodigy,
    # Adadelta, the learned LSTM): its probes stay closer to it
    spread = 0.5 if _default_lr(optimizer) == 1.0 else 1.0
    return Candidate(name, optimizer, dict(hparams), schedule, lr, spread)


def _lookup(optimizer: str) -> Any:
    try:
        return optim.lookup(optimizer)
    except ValueError:
        return None


def _default_lr(optimizer: str) -> float:
    info = optim.hyperparameters(optimizer).get("lr")
    return float(info.default) if info is not None else 1.0


# The default portfolio: the optimizers Schmidt et al. 2021 found worth trying (adaptive
# methods, momentum SGD), the learned LSTM and the learning-rate-free methods many users reach
# for instead of tuning.
DEFAULT_NAMES = ("sgd_momentum", "adam", "adamw", "nadam", "radam", "rmsprop", "adagrad",
                 "lion", "lamb", "lstm", "prodigy", "dadapt_adam", "schedulefree_adamw")


def _builtin() -> dict[str, Candidate]:
    """Every candidate metaopt knows by name (the default portfolio and a few more)."""
    table = {
        "sgd_momentum": lambda: _c("sgd_momentum", "sgd", lr=0.01, momentum=0.9),
        "sgd_nesterov": lambda: _c("sgd_nesterov", "sgd", lr=0.01, momentum=0.9,
                                   nesterov=True),
        "lion": lambda: _c("lion", lr=1e-4),
        "lstm": lambda: _c("lstm", schedule=None),
    }
    return table


def known() -> list[str]:
    """Candidate names :func:`resolve` accepts: the named variants and every registry name."""
    return sorted({*_builtin(), *optim.names()})


def resolve(name: str) -> Candidate:
    """The candidate called ``name``: a named variant (``sgd_momentum``) or any registry
    optimizer at its defaults, cosine-scheduled unless it is schedule-free or learned.
    ValueError names the unknown candidate."""
    key = str(name).lower()
    builtin = _builtin()
    if key in builtin:
        return builtin[key]()
    _lookup_or_raise(key)
    return _c(key)


def _lookup_or_raise(name: str) -> None:
    try:
        optim.lookup(name)
    except ValueError as err:
        raise ValueError(str(err).replace("unknown optimizer", "unknown candidate")
                         + ", sgd_momentum, sgd_nesterov") from None


def default_portfolio() -> list[Candidate]:
    """The default candidates that this installation has (all of DEFAULT_NAMES normally)."""
    out = []
    for name in DEFAULT_NAMES:
        try:
            out.append(resolve(name))
        except ValueError:
            continue  # an optimizer this installation lacks (a plugin not installed)
    return out


def check_pairing(candidate: Candidate) -> None:
    """Schedule-Free methods replace the schedule: pairing one with a decaying schedule is a
    mistake this refuses (ValueError)."""
    cls = _lookup(candidate.optimizer)
    if getattr(cls, "schedule_free", False) and candidate.schedule is not None:
        raise ValueError(f"candidate {candidate.name!r}: {candidate.optimizer} is schedule-free "
                         f"and must not be paired with the schedule {candidate.schedule!r}")


def lr_grid(centre: float, count: int, spread: float) -> list[float]:
    """``count`` learning rates log-spaced over ``centre`` × 10^[-spread, +spread]."""
    if count == 1:
        return [centre]
    exps = [-spread + 2 * spread * i / (count - 1) for i in range(count)]
    return [centre * 10 ** e for e in exps]

