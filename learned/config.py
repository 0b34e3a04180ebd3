"""What a meta-training run is: :class:`MetaTrainConfig`, one field per ``meta_train:`` key."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

MODELS = ("per_tensor", "coordinatewise")
META_LOSSES = ("log", "sum")


@dataclass
class MetaTrainConfig:
    """A meta-training recipe (``experiments/meta-train-lstm.yaml`` is the shipped
    checkpoint's; ``paper()`` is Andrychowicz et al.'s).

    - ``tasks``: problem families (:mod:`learned.problems`) trained on together.
    - ``model``: ``per_tensor`` (shipped design) or ``coordinatewise`` (the paper's LSTM);
      ``model_args``: its constructor arguments (e.g. ``hidden``, ``preprocess``).
    - ``unroll``/``unroll_max``: truncation length, growing geometrically from the first to
      the second over the first ``curriculum`` meta-steps (default: half of them);
      ``horizon``/``horizon_max``: each problem's length is drawn log-uniformly from
      ``[horizon, h]``, ``h`` growing the same way (an unroll-length curriculum: short, stable
      problems first). ``horizon_max`` may be ``{family: steps}``.
    - ``batch``: problems per family in flight (an int for all, or ``{family: n}``).
    - ``meta_lr`` (``meta_lr_schedule``: ``constant``, or ``cosine`` down to a tenth over
      ``schedule_steps`` meta-steps, by default ``meta_steps``: a run may stop early in a
      longer schedule);
      ``clip``: meta-gradient norm (0: off); ``balance``: divide each family's meta-gradient
      by its running norm, so no family drowns the others; ``second_order``: keep
      ``∂∇f/∂φ`` (off is the paper's approximation); ``meta_loss``: ``log`` | ``sum``;
      ``meta_loss_power`` p weights a problem's loss at step t by ``(t/horizon)^p``;
      ``scale``: random coordinate scaling ``exp(U(−r, r))`` (0: off; or ``{family: r}``).
    - every ``eval_every`` meta-steps the learned optimizer is scored on ``eval_seeds``
      held-out problems per family at each of ``eval_horizons`` (default: the family's
      shortest and longest training horizon),
      against Adam tuned on the same problems; the best weights are the result.
      ``gain_cap``: each family@horizon's log10 gain over tuned Adam counts at most this much
      in that validation score (``None``: uncapped), so a large win on one problem cannot pay
      for a loss on another.
      ``checkpoint_every``: resumable state is written this often. ``time_limit`` (seconds):
      stop early, keeping the best weights.
    """

    tasks: tuple[str, ...] = ("quadratic", "digits_mlp_sigmoid")
    model: str = "per_tensor"
    model_args: dict[str, Any] = field(default_factory=dict)
    unroll: int = 20
    unroll_max: int | None = None
    horizon: int = 100
    horizon_max: int | dict[str, int] | None = None
    curriculum: int | None = None
    meta_steps: int = 1000
    meta_lr: float = 1e-3
    meta_lr_schedule: str = "constant"
    schedule_steps: int | None = None
    batch: int | dict[str, int] = 16
    clip: float = 1.0
    balance: bool = True
    second_order: bool = False
    meta_loss: str = "log"
    meta_loss_power: float = 0.0
    scale: float | dict[str, float] = 0.0
    eval_every: int = 100
    eval_seeds: int = 8
    eval_horizons: tuple[int, ...] | None = None
    gain_cap: float | None = None
    checkpoint_every: int = 25
    time_limit: float | None = None
    seed: int = 0
    threads: int = 1

    def __post_init__(self) -> None:
        self.tasks = (self.tasks,) if isinstance(self.tasks, str) else tuple(self.tasks)
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {', '.join(MODELS)}, got {self.model!r}")
        if self.meta_loss not in META_LOSSES:
            raise ValueError(f"meta_loss must be one of {', '.join(META_LOSSES)}, "
                             f"got {self.meta_loss!r}")
        if self.meta_lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"meta_lr_schedule must be constant or cosine, "
                             f"got {self.meta_lr_schedule!r}")
        if self.eval_horizons is not None:
            self.eval_horizons = tuple(int(h) for h in self.eval_horizons)

    @classmethod
    def paper(cls, **overrides: Any) -> MetaTrainConfig:
        """Andrychowicz et al. 2016: coordinatewise 2×20 LSTM, log/sign inputs (p = 10), sum
        of losses over 20-step truncations of 100-step problems, first order, meta-Adam 1e-3,
        no curriculum, no scaling."""
        base = dict(model="coordinatewise", model_args={"hidden": 20, "layers": 2,
                                                         "preprocess": "logsign", "p": 10.0,
                                                         "output_scale": 0.1},
                    unroll=20, horizon=100, meta_loss="sum", second_order=False, clip=0.0)
        return cls(**{**base, **overrides})

    def batch_for(self, family: str) -> int:
        if isinstance(self.batch, dict):
            return int(self.batch.get(family, 16))
        return int(self.batch)

    def longest(self, family: str) -> int:
        """The longest horizon ``family``'s problems reach after the curriculum."""
        top = self.horizon_max
        if isinstance(top, dict):
            top = top.get(family)
        return int(top or self.horizon)

    def schedule(self, k: int, family: str) -> tuple[int, int]:
        """``(unroll, longest horizon of family)`` at meta-step ``k`` (geometric growth)."""
        span = self.curriculum if self.curriculum is not None else self.meta_steps // 2
        frac = min(1.0, k / span) if span > 0 else 1.0
        grow = lambda a, b: int(round(a * math.exp(frac * math.log(b / a))))  # noqa: E731
        return (grow(self.unroll, self.unroll_max or self.unroll),
                grow(self.horizon, self.longest(family)))

    def meta_lr_at(self, k: int) -> float:
        """The meta-learning rate at meta-step ``k``."""
        if self.meta_lr_schedule == "constant":
            return self.meta_lr
        frac = min(1.0, k / max(1, self.schedule_steps or self.meta_steps))
        return self.meta_lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    def horizons(self, family: str) -> tuple[int, ...]:
        """Validation horizons of ``family``: ``eval_horizons``, or its shortest and longest
        training horizons."""
        return self.eval_horizons or tuple(sorted({self.horizon, self.longest(family)}))

    def scale_for(self, family: str) -> float:
        if isinstance(self.scale, dict):
            return float(self.scale.get(family, 0.0))
        return float(self.scale)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["tasks"] = list(self.tasks)
        if self.eval_horizons is not None:
            out["eval_horizons"] = list(self.eval_horizons)
        return out
