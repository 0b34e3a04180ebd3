"""Hyperparameter search: metaopt (populations of Optuna trials) vs plain Optuna vs Ray Tune.

Same AdamW space (W1's), steps per trial, trial budget and seed for every contender, each in
memory and with SQLite storage: ``metaopt.search`` (population 16, TPE + hyperband, the default
path) and the ``metaopt tune`` command as a whole process; Optuna TPE + MedianPruner over a
plain torch.optim.AdamW loop; Ray Tune + OptunaSearch + ASHA (2 CPUs, reuse_actors=True).
Measures time to target (target: 1.01 x the best any contender reaches with 4x the trials),
the best value at equal trial count, and metaopt's overhead per trial over 1,000 trials.

    python benchmarks/search.py                  # full measurement (CPU, 2 threads)
    python benchmarks/search.py --quick          # smoke run
    python benchmarks/search.py --device cuda
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import optuna
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]  # see optim_step.py
import metaopt  # noqa: E402
from metaopt.population import Population  # noqa: E402

sys.path.append(HERE)
from common import RESULTS, machine, parser, setup, table, write  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TASKS = ("digits_mlp", "logistic_breast_cancer", "digits_cnn")
SPACE = {"lr": {"low": 1e-4, "high": 1e-1, "log": True},
         "beta1": {"low": 0.8, "high": 0.99},
         "beta2": {"low": 0.9, "high": 0.9999},
         "eps": {"low": 1e-10, "high": 1e-6, "log": True},
         "weight_decay": {"low": 1e-6, "high": 1e-1, "log": True}}
CONTENDERS = {  # key: (label, storage)
    "metaopt": ("metaopt.search", "memory"), "metaopt_db": ("metaopt.search", "SQLite"),
    "cli": ("`metaopt tune` whole command, start-up included", "SQLite"),
    "optuna": ("Optuna TPE + MedianPruner", "memory"),
    "optuna_db": ("Optuna TPE + MedianPruner", "SQLite"),
    "ray": ("Ray Tune + OptunaSearch + ASHA", "memory"),
    "ray_db": ("Ray Tune + OptunaSearch + ASHA", "SQLite (OptunaSearch storage)"),
}
LONG = ("metaopt", "optuna", "ray")  # the 4x-budget runs that set the target


# -- one configuration trained the way a user writes it (Optuna and Ray trials) ----------------
def train_plain(task, hp: dict, seed: int, steps: int, device: str, report) -> float:
    """torch.optim.AdamW on ``task``; ``report(step, val)`` every steps // 10 steps before the
    end may return True to stop. Returns the last validation loss."""
    torch.manual_seed(seed)
    model = task.model().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]),
                            eps=hp["eps"], weight_decay=hp["weight_decay"])
    batches = task.data(torch.Generator().manual_seed(seed))
    every, value = max(1, steps // 10), math.nan
    for step in range(1, steps + 1):
        batch = next(batches)
        batch = tuple(x.to(device) for x in batch) if isinstance(batch, tuple) else batch.to(device)
        opt.zero_grad()
        task.loss(model, batch).backward()
        opt.step()
        if step % every == 0 or step == steps:
            value = task.evaluate(model)
            if step < steps and report(step, value):
                break
    return value


def suggest(trial) -> dict:
    return {k: trial.suggest_float(k, v["low"], v["high"], log=v.get("log", False))
            for k, v in SPACE.items()}


def from_study(study, t0: float) -> list[tuple[float, float]]:
    """(seconds since t0, value) of the study's complete trials, in completion order."""
    done = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if t.value is not None and math.isfinite(t.value)]
    return sorted((t.datetime_complete.timestamp() - t0, t.value) for t in done)


# -- contenders: each returns {"points": [(s, value of a full-length trial)], "wall": s, ...} --
def run_metaopt(task, seed, trials, steps, device, storage):
    t0 = time.time()
    result = metaopt.search(task, "adamw", SPACE, trials=trials, population=16, steps=steps,
                            seed=seed, storage=storage, study_name=f"bench-{seed}",
                            device=device, progress=False)
    return {"points": from_study(result.study, t0), "wall": time.time() - t0,
            "evaluations": result.evaluations}


def run_optuna(task, seed, trials, steps, device, storage):
    def objective(trial):
        def report(step, value):
            trial.report(value, step)
            if trial.should_prune():
                raise optuna.TrialPruned()
            return False
        return train_plain(task, suggest(trial), seed, steps, device, report)

    t0 = time.time()
    study = optuna.create_study(direction="minimize", storage=storage,
                                sampler=optuna.samplers.TPESampler(seed=seed),
                                pruner=optuna.pruners.MedianPruner(), study_name=f"bench-{seed}")
    study.optimize(objective, n_trials=trials)
    return {"points": from_study(study, t0), "wall": time.time() - t0}


def ray_trainable(config, task_name, seed, steps, device, threads):
    from ray import tune

    torch.set_flush_denormal(True)
    torch.set_num_threads(threads)
    task = metaopt.tasks.get(task_name)

    def report(step, value):
        tune.report({"val_loss": value, "step": step})
        return False
    value = train_plain(task, config, seed, steps, device, report)
    tune.report({"val_loss": value, "step": steps})


def run_ray(task, seed, trials, steps, device, storage):
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    class Finals(tune.Callback):
        def __init__(self):
            self.points = []

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if result.get("step") == steps and math.isfinite(result["val_loss"]):
                self.points.append((time.time() - t0, result["val_loss"]))

    space = {k: (tune.loguniform if v.get("log") else tune.uniform)(v["low"], v["high"])
             for k, v in SPACE.items()}
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # with verbose=0: no console tables
    work, finals = tempfile.mkdtemp(prefix="bench_ray_"), Finals()
    t0 = time.time()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    init = time.time() - t0
    try:
        searcher = OptunaSearch(sampler=optuna.samplers.TPESampler(seed=seed),
                                storage=optuna.storages.RDBStorage(storage) if storage else None,
                                study_name=f"bench-{seed}" if storage else None)
        every = max(1, steps // 10)
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(
                ray_trainable, task_name=task.name, seed=seed, steps=steps, device=device,
                threads=1), {"cpu": 1}),
            param_space=space,
            tune_config=tune.TuneConfig(
                metric="val_loss", mode="min", num_samples=trials, reuse_actors=True,
                search_alg=ConcurrencyLimiter(searcher, max_concurrent=2),
                scheduler=ASHAScheduler(time_attr="step", max_t=steps, grace_period=every,
                                        reduction_factor=3)),
            run_config=tune.RunConfig(storage_path=work, name=f"bench_{seed}", verbose=0,
                                      callbacks=[finals]))
        errors = len(tuner.fit().errors)
        wall = time.time() - t0
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    return {"points": sorted(finals.points), "wall": wall, "init": init, "errors": errors}


def run_cli(task, seed, trials, steps, device, work):
    """``metaopt tune`` in a subprocess; the clock starts before the process does."""
    exp = Path(work) / "bench.yaml"
    exp.write_text(json.dumps({  # JSON is YAML
        "name": f"bench-{seed}", "task": task.name, "steps": steps, "seed": seed,
        "device": device, "search": {"optimizer": "adamw", "space": SPACE, "trials": trials,
                                     "population": 16}}))
    out = Path(work) / "run"
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "metaopt.cli", "tune", str(exp), "--out",
                           str(out), "--no-progress"], capture_output=True, text=True, cwd=work)
    wall = time.time() - t0
    dbs = sorted(out.glob("*.db"))
    if proc.returncode != 0 or not dbs:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no study file"]
        return {"points": [], "wall": wall, "error": f"rc {proc.returncode}: {tail[0][:160]}"}
    study = optuna.load_study(study_name=f"bench-{seed}", storage=f"sqlite:///{dbs[0]}")
    return {"points": from_study(study, t0), "wall": wall}


def run(key: str, task, seed: int, trials: int, steps: int, device: str) -> dict:
    work = tempfile.mkdtemp(prefix="bench_search_")
    db = f"sqlite:///{work}/study.db" if key.endswith("_db") else None
    fn = {"metaopt": run_metaopt, "optuna": run_optuna, "ray": run_ray}.get(key.split("_")[0])
    try:
        r = run_cli(task, seed, trials, steps, device, work) if key == "cli" else \
            fn(task, seed, trials, steps, device, db)
    except Exception as err:  # a contender that fails is reported, not fatal
        r = {"points": [], "wall": math.nan, "error": f"{type(err).__name__}: {err}"[:200]}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    r["best"] = min((v for _, v in r["points"]), default=math.nan)
    print(f"  {key:10s} seed {seed} trials {trials}: wall {r['wall']:.2f} s, best "
          f"{r['best']:.4f}, {len(r['points'])} full-length trials"
          + (f"  ERROR {r['error']}" if "error" in r else ""), flush=True)
    return r


def time_to(points, target: float, shift: float = 0.0) -> float:
    return next((s - shift for s, v in points if v <= target), math.inf)


# -- time to target on one task ------------------------------------------------------------------
def measure_task(name: str, args, device: str) -> dict:
    task = metaopt.tasks.get(name)
    out = {"runs": defaultdict(list), "long": defaultdict(list), "targets": []}
    keys = list(CONTENDERS)
    for key in ("metaopt", "optuna"):  # untimed: lazy imports, the dataset, first-call costs
        run(key, task, 0, 2, 10, device)
    for i, seed in enumerate(args.seeds):
        print(f"{name} seed {seed}", flush=True)
        for key in keys[i % len(keys):] + keys[:i % len(keys)]:  # rotate: drift hits all alike
            out["runs"][key].append(run(key, task, seed, args.trials, args.steps, device))
        for key in LONG:
            out["long"][key].append(run(key, task, seed, 4 * args.trials, args.steps, device))
        bests = [out["long"][k][-1]["best"] for k in LONG]
        best = min((b for b in bests if b == b), default=math.nan)
        out["targets"].append(1.01 * best)
        print(f"  target {1.01 * best:.4f}", flush=True)
    for runs in out["runs"].values():
        for r, target in zip(runs, out["targets"]):
            r["ttt"] = time_to(r["points"], target)
            if "init" in r:
                r["ttt_fit"] = time_to(r["points"], target, r["init"])
    return out


def cell(xs, f="{:.2f}") -> str:
    xs = [x for x in xs if not math.isnan(x)]
    if not xs:
        return "n/a"
    g = lambda x: "∞" if math.isinf(x) else f.format(x)  # noqa: E731
    return f"{g(statistics.median(xs))} ({g(min(xs))}–{g(max(xs))})"


def ratio(mine, theirs) -> str:
    """median(mine) / median(theirs), and the range of per-seed ratios."""
    def r(a, b):
        if math.isinf(a) and math.isinf(b) or math.isnan(a) or math.isnan(b):
            return math.nan
        return math.inf if math.isinf(a) else 0.0 if math.isinf(b) else a / b
    per = [x for x in map(r, mine, theirs) if not math.isnan(x)]
    med = r(statistics.median(mine), statistics.median(theirs))
    if math.isnan(med) or not per:
        return "n/a (neither reached)"
    g = lambda x: "∞" if math.isinf(x) else f"{x:.2f}×"  # noqa: E731
    return f"{g(med)} ({g(min(per))}–{g(max(per))})"


def task_table(name: str, out: dict, trials: int) -> str:
    runs, rows = out["runs"], []
    for key, (label, storage) in CONTENDERS.items():
        rs = runs[key]
        tt = [r["ttt"] for r in rs]
        mine = [r["ttt"] for r in runs["metaopt_db" if storage.startswith("SQLite") else "metaopt"]]
        vs = "—" if key.startswith("metaopt") or key == "cli" else ratio(mine, tt)
        errors = sorted({r["error"] for r in rs if "error" in r})
        rows.append([label, storage, cell(tt), f"{sum(math.isfinite(x) for x in tt)}/{len(tt)}",
                     vs, cell([r["best"] for r in rs], "{:.4f}"),
                     cell([r["wall"] for r in rs]) + (f" — failed: {errors[0]}" if errors else "")])
        if key.startswith("ray"):
            tf = [r.get("ttt_fit", math.inf) for r in rs]
            rows.append([label + ", clock from tuner.fit (ray.init excluded)", storage, cell(tf),
                         f"{sum(math.isfinite(x) for x in tf)}/{len(tf)}", ratio(mine, tf), "",
                         "ray.init " + cell([r.get("init", math.nan) for r in rs])])
    targets = ", ".join(f"{t:.4f}" for t in out["targets"])
    longs = "; ".join(f"{k} {cell([r['best'] for r in out['long'][k]], '{:.4f}')}" for k in LONG)
    return "\n".join([
        f"## {name}", "", f"Targets per seed (1.01 × best of the {4 * trials}-trial runs): "
        f"{targets}. Best of the {4 * trials}-trial runs (median, min–max): {longs}.", "",
        table(["contender", "storage", "time to target s", "reached", "metaopt ÷ this",
               f"best val @ {trials} trials", f"wall for {trials} trials s"], rows), ""])


# -- metaopt's own overhead per trial --------------------------------------------------------
class Timers:
    """Monkeypatched methods, timed into buckets; nested timed calls count once (outermost)."""

    def __init__(self):
        self.seconds, self.depth, self.saved = defaultdict(float), 0, []

    def wrap(self, owner, name: str, bucket: str) -> None:
        orig = getattr(owner, name)
        self.saved.append((owner, name, orig))

        @functools.wraps(orig)
        def timed(*a, **k):
            if self.depth:
                return orig(*a, **k)
            self.depth += 1
            start = time.perf_counter()
            try:
                return orig(*a, **k)
            finally:
                self.seconds[bucket] += time.perf_counter() - start
                self.depth -= 1
        setattr(owner, name, timed)

    def restore(self) -> None:
        for owner, name, orig in reversed(self.saved):
            setattr(owner, name, orig)


OPTUNA_BUCKETS = ("ask/tell", "sampling in suggest_*", "pruner (report, should_prune)")
OWN_BUCKETS = ("user attributes metaopt sets", "rest (metaopt's loop)")


def overhead(trials: int, device: str) -> dict:
    task = metaopt.tasks.get("quadratic")
    timers = Timers()
    for owner, names, bucket in (
            (Population, ("step", "evaluate"), "training"),
            (optuna.Study, ("ask", "tell"), OPTUNA_BUCKETS[0]),
            (optuna.trial.Trial, ("suggest_float", "suggest_int", "suggest_categorical"),
             OPTUNA_BUCKETS[1]),
            (optuna.trial.Trial, ("report", "should_prune"), OPTUNA_BUCKETS[2]),
            (optuna.trial.Trial, ("set_user_attr",), OWN_BUCKETS[0]),
            (optuna.Study, ("set_user_attr",), OWN_BUCKETS[0])):
        for n in names:
            timers.wrap(owner, n, bucket)
    try:
        start = time.perf_counter()
        result = metaopt.search(task, "adamw", SPACE, trials=trials, population=16, steps=10,
                                device=device, progress=False)
        wall = time.perf_counter() - start
    finally:
        timers.restore()
    sec = dict(timers.seconds)
    sec[OWN_BUCKETS[1]] = wall - sum(sec.values())
    n = len(result.study.trials)
    print(f"overhead: {n} trials in {wall:.2f} s: "
          + ", ".join(f"{k} {v:.2f} s" for k, v in sec.items()), flush=True)
    return {"trials": n, "wall": wall, "seconds": sec}


def overhead_table(o: dict) -> str:
    wall, n, sec = o["wall"], o["trials"], o["seconds"]
    line = lambda k, v: [k, f"{v:.3f}", f"{v / n * 1e3:.2f}", f"{100 * v / wall:.1f}%"]  # noqa
    rows = [line(k, sec.get(k, 0.0)) for k in ("training",) + OPTUNA_BUCKETS + OWN_BUCKETS]
    own = sum(sec.get(k, 0.0) for k in OWN_BUCKETS)
    rows.append([f"**{x}**" for x in line("metaopt's overhead (the last two rows)", own)])
    lit = wall - sec.get("training", 0.0) - sec.get(OPTUNA_BUCKETS[0], 0.0)
    rows.append(line("all but training and ask/tell (suggest_* and pruner counted in)", lit))
    return "\n".join([
        f"## metaopt overhead per trial ({n} trials, 10-step quadratic, population 16, TPE + "
        "hyperband, in memory)", "",
        f"Wall {wall:.2f} s (goal: metaopt's overhead ≤ 5% of it). Timers wrap "
        "Population.step/evaluate (training), Study.ask/tell, Trial.suggest_* (Optuna's "
        "sampler, when a parameter is sampled independently), Trial.report/should_prune "
        "(Optuna's pruner and storage) and the set_user_attr calls metaopt makes; the rest is "
        "metaopt's loop (slots, budget counting, population build and reinit).", "",
        table(["bucket", "s", "ms per trial", "% of wall"], rows), ""])


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--trials", type=int, default=64, help="trial budget (the target uses 4x)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--overhead-trials", type=int, default=1000)
    p.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 1 task, 8 trials")
    args = p.parse_args()
    if args.quick:
        args.seeds, args.tasks, args.trials, args.steps = 1, "digits_mlp", 8, 60
        args.overhead_trials = 100
    device = setup(args)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    args.seeds = list(range(args.seeds))
    started, load = time.time(), os.getloadavg()
    run("ray", metaopt.tasks.get("logistic_breast_cancer"), 0, 2, 10, args.device)  # warm-up
    results = {name: measure_task(name, args, args.device) for name in args.tasks.split(",")}
    over = overhead(args.overhead_trials, args.device)
    import ray
    head = [
        f"# Hyperparameter search: metaopt vs Optuna vs Ray Tune ({machine(device, args.threads)})",
        "", f"`python benchmarks/search.py --seeds {len(args.seeds)} --tasks {args.tasks} "
        f"--trials {args.trials} --steps {args.steps} --threads {args.threads}"
        f"{' --quick' if args.quick else ''}` — {dt.date.today()}, optuna {optuna.__version__}, "
        f"ray {ray.__version__}; load average {load[0]:.2f} at start, "
        f"{os.getloadavg()[0]:.2f} at end; {time.time() - started:.0f} s in all.", "",
        f"AdamW in W1's space (lr log[1e-4, 1e-1], beta1 [0.8, 0.99], beta2 [0.9, 0.9999], "
        f"eps log[1e-10, 1e-6], weight_decay log[1e-6, 1e-1]), {args.steps} steps per trial, "
        f"{args.trials} trials, seeds {args.seeds}: within a seed every trial has the same init "
        "and batches. Time to target: from just before the contender's first call "
        "(metaopt.search, create_study, ray.init; the whole command: before its process "
        "starts) until a full-length trial's validation loss is ≤ the target (∞: never). Each "
        "in-process contender first runs once untimed per task (lazy imports, data). Cells: "
        "median (min–max) over seeds; ratios of medians (per-seed range), against "
        "metaopt.search with the same storage.", "",
        f"metaopt and Optuna: this process, {args.threads} torch threads, flush-denormal on. "
        "Ray: 2 concurrent trials in workers of 1 thread, ray.init(num_cpus=2), "
        "reuse_actors=True (as the W1 anchor), Tune's default loggers to a temporary "
        "storage_path. Pruning: metaopt hyperband (min resource steps//10, reduction 3); "
        "Optuna MedianPruner() defaults (as the anchor); Ray ASHA (time_attr step, grace "
        "steps//10, reduction 3). SQLite: an Optuna RDB file in a temporary directory (Ray: "
        "OptunaSearch's own storage; Tune's experiment state is files either way); the whole "
        "command uses its default SQLite study and writes its report after the search.", ""]
    text = "\n".join(head + [task_table(n, r, args.trials) for n, r in results.items()]
                     + [overhead_table(over)])
    print(text)
    path = Path(args.out) if args.out else RESULTS / f"search_{device.type}.md"
    write(path, text)
    blob = {"args": vars(args), "tasks": results, "overhead": over}
    write(path.with_suffix(".json"), json.dumps(blob, indent=1, default=str))


if __name__ == "__main__":
    main()
