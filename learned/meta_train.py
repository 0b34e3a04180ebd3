"""``learned.meta_train``: train a learned optimizer by truncated backpropagation.

Each meta-step advances a pool of problems per family (:mod:`learned.unroll`) by one
truncation, backpropagates the summed meta-losses into the network, clips the meta-gradient
and takes a meta-Adam step. Every ``eval_every`` steps the network is scored as an optimizer
(through :class:`learned.LSTMOptimizer` itself) on held-out problems; the best weights are
kept as the result (``lstm.pt``). The full training state (network, meta-optimizer, problem
pools, random generator, curves) is written atomically every ``checkpoint_every`` steps, so a
killed run continues where it stopped, with the same result.
"""

from __future__ import annotations

import io
import math
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from learned import compare, nets, problems
from learned.config import MetaTrainConfig
from learned.optimizer import LSTMOptimizer
from learned.rollout import rollout
from learned.unroll import Pool, unroll
from metaopt.runs import write_atomic

STATE_FILE = "meta_state.pt"
CHECKPOINT_FILE = "lstm.pt"
TRAIN_SEEDS = 1_000_000  # problems met in meta-training: seeds from here on
VALID_SEEDS = 500_000  # held-out problems scored during meta-training


@dataclass
class MetaTrainResult:
    """The run's outcome: the best checkpoint, its validation meta-loss and the curves."""

    checkpoint: Path
    value: float
    best_step: int
    steps: int
    curve: list[tuple[int, float]] = field(default_factory=list)
    val_curve: list[tuple[int, float]] = field(default_factory=list)
    val_parts: dict[str, float] = field(default_factory=dict)
    grad_norms: list[float] = field(default_factory=list)
    skipped: int = 0
    inner_steps: int = 0
    evaluations: int = 0
    seconds: float = 0.0
    peak_rss_mb: float = 0.0


def peak_rss_mb() -> float:
    """This process's peak resident memory (ru_maxrss: KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1 << 20) if sys.platform == "darwin" else rss / 1024


def adam_reference(config: MetaTrainConfig) -> tuple[dict[str, float], int]:
    """Per family@horizon, the validation score of Adam with the grid learning rate that is
    best *on the validation problems themselves* (a slightly flattering reference); and the
    gradient evaluations that cost."""
    out, evaluations = {}, 0
    for name in config.tasks:
        family = problems.get(name)
        for horizon in config.horizons(name):
            tuned = compare.tune(family, "adam", horizon, config.eval_seeds, start=VALID_SEEDS)
            out[f"{name}@{horizon}"] = tuned.scores[tuned.lr]
            evaluations += len(compare.GRID) * config.eval_seeds * family.group * horizon
    return out, evaluations


def validate(net: nn.Module, config: MetaTrainConfig,
             reference: dict[str, float]) -> tuple[float, dict[str, float], int]:
    """The validation meta-loss: the mean over families and horizons of log10(final loss of
    the learned optimizer / final loss of tuned Adam) on held-out problems (for the quadratic,
    mean losses of batches of 128) — negative where it beats tuned Adam; each term at least
    ``-config.gain_cap``. The learned optimizer
    runs as :class:`~learned.LSTMOptimizer`. Returns ``(value, log10 final loss per
    family@horizon, gradient evaluations spent)``."""
    parts, evaluations = {}, 0
    for name in config.tasks:
        family = problems.get(name)
        seeds = compare.seeds(VALID_SEEDS, config.eval_seeds, family)
        for horizon in config.horizons(name):
            run = rollout(family, seeds, lambda ps, n: LSTMOptimizer(
                ps, checkpoint=net, population=n, backend="eager"), horizon)
            score = run.scores(family.group)
            evaluations += len(seeds) * horizon
            parts[f"{name}@{horizon}"] = float(score.mean()) if bool(score.isfinite().all()) \
                else math.inf
    cap = math.inf if config.gain_cap is None else config.gain_cap
    value = sum(max(parts[k] - reference[k], -cap) for k in parts) / len(parts)
    return value, parts, evaluations


class _Trainer:
    """Mutable state of one run; :meth:`state_dict` is everything resumption needs."""

    def __init__(self, config: MetaTrainConfig) -> None:
        self.config = config
        torch.manual_seed(config.seed)
        self.net = nets.build({"kind": config.model, **config.model_args})
        self.meta_opt = torch.optim.Adam(self.net.parameters(), lr=config.meta_lr)
        self.gen = torch.Generator().manual_seed(config.seed)
        self.next_seed = TRAIN_SEEDS
        self.families = {name: problems.get(name, config.scale_for(name))
                         for name in config.tasks}
        self.pools: dict[str, Pool] = {}
        self.k = 0
        self.result = MetaTrainResult(checkpoint=Path(), value=math.inf, best_step=-1, steps=0)
        self.best: dict[str, Any] | None = None
        self.seconds_before = 0.0
        self.reference: dict[str, float] = {}
        self.grad_scale: dict[str, float] = {}  # running meta-gradient norm per family

    def draw(self, count: int, longest: int) -> tuple[Tensor, Tensor]:
        """Seeds of ``count`` new problems and their horizons (log-uniform)."""
        seeds = torch.arange(count, dtype=torch.int64) + self.next_seed
        self.next_seed += count
        lo, hi = math.log(self.config.horizon), math.log(max(longest, self.config.horizon))
        u = torch.rand(count, generator=self.gen, dtype=torch.float64)
        return seeds, torch.exp(lo + u * (hi - lo)).round().to(torch.int64)

    def refill(self) -> None:
        """Replace finished problems with new ones (staggered at the very start)."""
        for name, family in self.families.items():
            longest = self.config.schedule(self.k, name)[1]
            pool = self.pools.get(name)
            if pool is None:  # the first problems end at staggered times, so that their
                # successors are not in lock step (each meta-step sees every phase)
                seeds, horizon = self.draw(self.config.batch_for(name), longest)
                u = torch.rand(len(seeds), generator=self.gen, dtype=torch.float64)
                horizon = (u * horizon).ceil().to(torch.int64).clamp_min(1)
                self.pools[name] = Pool.start(family, self.net, seeds, horizon)
                continue
            done = pool.finished()
            if bool(done.any()):
                seeds, horizon = self.draw(int(done.sum()), longest)
                pool.replace(self.net, done, seeds, horizon)

    def meta_step(self) -> float:
        """One truncation for every family, one meta-update; returns the meta-loss."""
        steps = self.config.schedule(self.k, self.config.tasks[0])[0]
        self.refill()
        total = 0.0
        params = list(self.net.parameters())
        combined = [torch.zeros_like(p) for p in params]
        for name, pool in self.pools.items():
            loss, value = unroll(self.net, pool, steps, second_order=self.config.second_order,
                                 kind=self.config.meta_loss,
                                 power=self.config.meta_loss_power)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
            weight = 1.0 / len(self.pools)
            if self.config.balance:  # each family's meta-gradient at its usual size: 1
                size = float(torch.linalg.vector_norm(torch.stack(
                    [torch.linalg.vector_norm(g) for g in grads])))
                if math.isfinite(size):
                    old = self.grad_scale.get(name, size)
                    self.grad_scale[name] = 0.9 * old + 0.1 * size
                weight /= max(self.grad_scale.get(name, 1.0), 1e-12)
            for c, g in zip(combined, grads):
                c.add_(g, alpha=weight)
            total += value / len(self.pools)
            self.result.inner_steps += steps * len(pool.t)
            self.result.evaluations += (steps + 1) * len(pool.t)
        for p, c in zip(params, combined):
            p.grad = c
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(c)
                                                     for c in combined]))
        if not bool(norm.isfinite()):
            self.result.skipped += 1
        else:
            for group in self.meta_opt.param_groups:
                group["lr"] = self.config.meta_lr_at(self.k)
            if self.config.clip > 0:
                torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.config.clip)
            self.meta_opt.step()
        self.result.grad_norms.append(float(norm))
        self.result.curve.append((self.k, total))
        self.k += 1
        return total

    def evaluate(self) -> float:
        if not self.reference:
            self.reference, evaluations = adam_reference(self.config)
            self.result.evaluations += evaluations
        value, parts, evaluations = validate(self.net, self.config, self.reference)
        self.result.evaluations += evaluations
        self.result.val_curve.append((self.k, value))
        if value < self.result.value or self.best is None:
            self.result.value, self.result.best_step = value, self.k
            self.result.val_parts = parts
            self.best = nets.to_checkpoint(self.net)
        return value

    def state_dict(self) -> dict[str, Any]:
        r = self.result
        return {"config": self.config.to_dict(), "k": self.k, "net": self.net.state_dict(),
                "meta_opt": self.meta_opt.state_dict(), "gen": self.gen.get_state(),
                "next_seed": self.next_seed, "best": self.best, "reference": self.reference,
                "grad_scale": self.grad_scale,
                "pools": {n: p.state_dict() for n, p in self.pools.items()},
                "result": {"value": r.value, "best_step": r.best_step, "curve": r.curve,
                           "val_curve": r.val_curve, "val_parts": r.val_parts,
                           "grad_norms": r.grad_norms, "skipped": r.skipped,
                           "inner_steps": r.inner_steps, "evaluations": r.evaluations},
                "seconds": self.seconds_before}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.k, self.next_seed, self.best = saved["k"], saved["next_seed"], saved["best"]
        self.reference, self.grad_scale = saved["reference"], saved["grad_scale"]
        self.net.load_state_dict(saved["net"])
        self.meta_opt.load_state_dict(saved["meta_opt"])
        self.gen.set_state(saved["gen"])
        for name, pool_state in saved["pools"].items():
            pool = Pool.start(self.families[name], self.net, pool_state["seeds"][:1],
                              pool_state["horizon"][:1])
            pool.load_state_dict(pool_state)
            self.pools[name] = pool
        r = saved["result"]
        self.result.value, self.result.best_step = r["value"], r["best_step"]
        self.result.curve = [tuple(x) for x in r["curve"]]
        self.result.val_curve = [tuple(x) for x in r["val_curve"]]
        self.result.val_parts, self.result.grad_norms = r["val_parts"], r["grad_norms"]
        self.result.skipped, self.result.inner_steps = r["skipped"], r["inner_steps"]
        self.result.evaluations = r["evaluations"]
        self.seconds_before = saved["seconds"]


def _save(path: Path, payload: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_atomic(path, buffer.getvalue())


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """The parts of a config that must match for a run to be resumed."""
    return {k: v for k, v in config.items() if k not in ("meta_steps", "time_limit")}


def meta_train(config: MetaTrainConfig, out: str | Path, *, resume: bool = True,
               progress: bool | None = None,
               on_step: Callable[[int, float], None] | None = None) -> MetaTrainResult:
    """Meta-train a learned optimizer as ``config`` says, writing into directory ``out``:
    ``lstm.pt`` (the best weights, loadable by :class:`learned.LSTMOptimizer`) and
    ``meta_state.pt`` (resumable state). With ``resume``, an existing ``meta_state.pt`` from
    the same recipe is continued. Runs with ``config.threads`` torch threads (1 is fastest for
    these many small ops on CPU)."""
    torch.set_flush_denormal(True)
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    trainer = _Trainer(config)
    state_file = out / STATE_FILE
    if resume and state_file.exists():
        saved = torch.load(state_file, map_location="cpu", weights_only=True)
        if _comparable(saved["config"]) != _comparable(config.to_dict()):
            raise ValueError(f"{state_file} was written by a different recipe; remove it or "
                             f"use another output directory")
        trainer.load_state_dict(saved)
    from tqdm.auto import tqdm

    show = sys.stderr.isatty() if progress is None else progress
    bar = tqdm(total=config.meta_steps, initial=trainer.k, desc="meta-train", disable=not show,
               unit="step", dynamic_ncols=True)
    try:
        if trainer.k == 0 and not trainer.result.val_curve:
            trainer.evaluate()
        while trainer.k < config.meta_steps:
            elapsed = trainer.seconds_before + time.perf_counter() - started
            if config.time_limit is not None and elapsed >= config.time_limit:
                break
            value = trainer.meta_step()
            if on_step is not None:
                on_step(trainer.k, value)
            if trainer.k % config.eval_every == 0 or trainer.k == config.meta_steps:
                trainer.evaluate()
            bar.update(1)
            bar.set_postfix(loss=f"{value:.3f}", val=f"{trainer.result.val_curve[-1][1]:.3f}",
                            refresh=False)
            if trainer.k % config.checkpoint_every == 0:
                trainer.seconds_before += time.perf_counter() - started
                started = time.perf_counter()
                _save(state_file, trainer.state_dict())
        if trainer.result.val_curve[-1][0] != trainer.k:
            trainer.evaluate()
        trainer.seconds_before += time.perf_counter() - started
        _save(state_file, trainer.state_dict())
    finally:
        bar.close()
        torch.set_num_threads(threads)
    result = trainer.result
    result.steps, result.seconds, result.peak_rss_mb = trainer.k, trainer.seconds_before, \
        peak_rss_mb()
    result.checkpoint = out / CHECKPOINT_FILE
    meta = {"value": result.value, "best_step": result.best_step, "meta_steps": result.steps,
            "seconds": result.seconds, "peak_rss_mb": result.peak_rss_mb,
            "config": config.to_dict()}
    _save(result.checkpoint, {**trainer.best, "meta": meta})
    return result
