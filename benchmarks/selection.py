"""metaopt.select, leave-one-task-out over the built-in suite, against an exhaustive oracle,
"every optimizer at its defaults", each learning-rate-free optimizer alone and Optuna TPE
with the optimizer as a categorical at the same budget.

For each task T, the results store minus T's own record warm-starts the selection. Then:

- **oracle**: every candidate x 8 learning rates x 2 seeds (0, 1) at the full run length; its
  winner is the best mean over the two seeds; its median is the median over its (candidate,
  lr) means (a diverged configuration counts as +inf);
- **chosen**: ``metaopt.select(T)`` (seed 0), its best configuration;
- **defaults**: every candidate at its default learning rate, seed 0, the best of them;
- **LR-free alone**: each learning-rate-free optimizer at its defaults;
- **Optuna TPE**: ``metaopt.search`` (Optuna's TPESampler) over every candidate optimizer's
  shipped space with the optimizer as a categorical, as many full trials as the selection's
  budget pays for, seed 0.

Every configuration is re-trained on fresh seeds (100, 101, 102) and judged by its mean
validation loss there. Normalised regret = (chosen - oracle best) / (oracle median - oracle
best), both on the fresh seeds. Writes ``benchmarks/results/select_<device>.md``.

    python benchmarks/selection.py                    # the whole suite (about half an hour)
    python benchmarks/selection.py --tasks digits_mlp,quadratic
"""

from __future__ import annotations

import sys
from pathlib import Path

# Keep this folder off sys.path and load the shared helpers by path (see optim_step.py).
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]

import importlib.util  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

_spec = importlib.util.spec_from_file_location("common", HERE / "common.py")
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)

import metaopt  # noqa: E402
from metaopt import tasks  # noqa: E402
from metaopt.population import Population  # noqa: E402
from metaopt.search.study import loop_only  # noqa: E402
from metaopt.select import store  # noqa: E402
from metaopt.select.portfolio import default_portfolio, lr_grid  # noqa: E402

FRESH = (100, 101, 102)
ORACLE_SEEDS = (0, 1)
ORACLE_LRS = 8
LR_FREE = ("prodigy", "dadapt_adam", "dadapt_sgd", "schedulefree_adamw", "schedulefree_sgd")


def train(task, optimizer: str, hparams: list[dict], seeds: list[int], schedule, steps: int,
          device: str) -> list[float]:
    """Validation losses of one population (inf for a diverged or failed member)."""
    try:
        pop = Population(task, optimizer, hparams, seeds=seeds, schedule=schedule,
                         device=device, engine="loop" if loop_only(optimizer) else "auto")
        result = pop.run(steps, progress=False)
    except (ValueError, TypeError, RuntimeError):
        return [math.inf] * len(hparams)
    return [m.value if m.status == "ok" and math.isfinite(m.value) else math.inf
            for m in result.members]


def fresh(task, optimizer: str, hparams: dict, schedule, steps: int, device: str) -> float:
    values = train(task, optimizer, [dict(hparams)] * len(FRESH), list(FRESH), schedule,
                   steps, device)
    return sum(values) / len(values)


def oracle(task, candidates, steps: int, device: str) -> dict:
    """Every candidate x ORACLE_LRS learning rates x ORACLE_SEEDS seeds."""
    configs = []
    for c in candidates:
        spread = (-1.0, 1.0) if c.spread < 1 else (-2.0, 1.5)
        centre = c.lr * 10 ** ((spread[0] + spread[1]) / 2)
        lrs = lr_grid(centre, ORACLE_LRS, (spread[1] - spread[0]) / 2)
        hps = [{**c.hparams, "lr": lr} for lr in lrs for _ in ORACLE_SEEDS]
        seeds = [s for _ in lrs for s in ORACLE_SEEDS]
        values = train(task, c.optimizer, hps, seeds, c.schedule_for(steps), steps, device)
        for i, lr in enumerate(lrs):
            pair = values[i * len(ORACLE_SEEDS):(i + 1) * len(ORACLE_SEEDS)]
            configs.append((sum(pair) / len(pair), c, lr))
    best = min(configs, key=lambda x: x[0])
    return {"best": best, "median": statistics.median(v for v, _, _ in configs),
            "evaluations": len(configs) * len(ORACLE_SEEDS) * steps * task.grad_evals_per_step}


def defaults(task, candidates, steps: int, device: str) -> tuple[float, object]:
    scored = []
    for c in candidates:
        value = train(task, c.optimizer, [{**c.hparams, "lr": c.lr}], [0],
                      c.schedule_for(steps), steps, device)[0]
        scored.append((value, c))
    value, c = min(scored, key=lambda x: x[0])
    return fresh(task, c.optimizer, {**c.hparams, "lr": c.lr}, c.schedule_for(steps), steps,
                 device), c.name


def optuna_categorical(task, candidates, budget: int, steps: int, device: str
                       ) -> tuple[float, str]:
    names = list(dict.fromkeys(c.optimizer for c in candidates))
    trials = max(1, budget // (steps * task.grad_evals_per_step))
    result = metaopt.search(task, names, trials=trials, population=min(trials, 16),
                            steps=steps, seed=0, sampler="tpe", pruner="none",
                            study_name=f"bench-{task.name}", device=device, progress=False)
    best = result.best
    if best is None:
        return math.inf, "-"
    return fresh(task, best.optimizer, best.hparams, best.schedule, steps, device), \
        best.optimizer


def one_task(name: str, device: str) -> dict:
    task = tasks.get(name)
    steps = task.steps
    candidates = default_portfolio()
    started = time.perf_counter()
    records = store.load(exclude=(name,))
    choice = metaopt.select(task, store=records, progress=False, device=device)
    best = choice.best
    chosen = fresh(task, best.optimizer, best.hparams, best.schedule, steps, device) \
        if best else math.inf
    select_seconds = time.perf_counter() - started
    orc = oracle(task, candidates, steps, device)
    _, oc, olr = orc["best"]
    oracle_best = fresh(task, oc.optimizer, {**oc.hparams, "lr": olr}, oc.schedule_for(steps),
                        steps, device)
    default_value, default_name = defaults(task, candidates, steps, device)
    lr_free = {}
    for c in candidates:
        if c.name in LR_FREE:
            lr_free[c.name] = fresh(task, c.optimizer, {**c.hparams, "lr": c.lr},
                                    c.schedule_for(steps), steps, device)
    tpe_value, tpe_name = optuna_categorical(task, candidates, choice.evaluations, steps,
                                             device)
    spread = orc["median"] - oracle_best
    regret = (chosen - oracle_best) / spread if spread > 0 and math.isfinite(spread) else \
        (0.0 if chosen <= oracle_best else math.inf)
    return {"task": name, "chosen": chosen, "chosen_name": best.candidate if best else "-",
            "warm": ", ".join(t for t, _ in choice.warm_start) or "-",
            "oracle_best": oracle_best, "oracle_name": f"{oc.name} lr={olr:.3g}",
            "oracle_median": orc["median"], "regret": regret,
            "compute": choice.evaluations / orc["evaluations"],
            "defaults": default_value, "defaults_name": default_name, "lr_free": lr_free,
            "tpe": tpe_value, "tpe_name": tpe_name, "select_seconds": select_seconds}


def fmt(v: float) -> str:
    return "diverged" if not math.isfinite(v) else f"{v:.4g}"


def table(rows: list[dict]) -> str:
    lr_free = sorted({k for r in rows for k in r["lr_free"]})
    head = ["task", "chosen (warm start from)", "chosen val", "oracle best", "oracle median",
            "regret", "compute / oracle", "defaults", "Optuna TPE (cat.)",
            *[f"{n} alone" for n in lr_free]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["task"], f"{r['chosen_name']} ({r['warm']})", fmt(r["chosen"]),
                 f"{fmt(r['oracle_best'])} ({r['oracle_name']})", fmt(r["oracle_median"]),
                 f"{r['regret']:.3f}", f"{100 * r['compute']:.1f}%",
                 f"{fmt(r['defaults'])} ({r['defaults_name']})",
                 f"{fmt(r['tpe'])} ({r['tpe_name']})",
                 *[fmt(r["lr_free"].get(n, math.nan)) for n in lr_free]]
        lines.append("| " + " | ".join(cells) + " |")
    n = len(rows)

    def share(pred) -> str:
        k = sum(1 for r in rows if pred(r))
        return f"{k}/{n} ({100 * k / n:.0f}%)"

    lines += ["", f"- regret <= 0.10: {share(lambda r: r['regret'] <= 0.10)} of tasks "
              f"(goal >= 80%); compute <= 15% of the oracle's: "
              f"{share(lambda r: r['compute'] <= 0.15)}",
              f"- chosen better than defaults: {share(lambda r: r['chosen'] < r['defaults'])};"
              f" than Optuna TPE (categorical): {share(lambda r: r['chosen'] < r['tpe'])}"]
    for name in lr_free:
        lines.append(f"- chosen better than {name} alone: "
                     f"{share(lambda r, n=name: r['chosen'] < r['lr_free'].get(n, math.inf))}")
    lines.append("- (goal for each: >= 75% of tasks)")
    return "\n".join(lines)


def main() -> None:
    p = common.parser(__doc__.split("\n")[0])
    p.add_argument("--tasks", default=",".join(tasks.names()), help="comma-separated tasks")
    args = p.parse_args()
    device = common.setup(args)
    rows = []
    for name in args.tasks.split(","):
        row = one_task(name, str(device))
        print(f"{name}: chosen {row['chosen_name']} {fmt(row['chosen'])}, oracle "
              f"{fmt(row['oracle_best'])}, regret {row['regret']:.3f}, compute "
              f"{100 * row['compute']:.1f}%", flush=True)
        rows.append(row)
    text = (f"# metaopt select, leave-one-task-out ({device}, {args.threads} threads, "
            f"torch {torch.__version__})\n\nValidation loss, mean over fresh seeds "
            f"{', '.join(map(str, FRESH))}; lower is better.\n\n" + table(rows) + "\n")
    out = Path(args.out) if args.out else common.RESULTS / f"select_{device.type}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
