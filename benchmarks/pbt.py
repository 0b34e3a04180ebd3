"""Population-based training: local (one stacked population) vs Ray Tune PBT vs Optuna TPE.

At an equal budget of member-steps (16 members x 300 steps = 4,800; AdamW, W1's space of
../shared/anchors/w1.py: lr, beta1, beta2, eps, weight decay), on three built-in tasks, per
seed:

  local   `metaopt pbt` (backend: local) as a subprocess: interval 25, truncation 25%,
          perturb x0.8/x1.2, resample 0.25; the command's wall time from its start to
          summary.json, and "after imports" (summary.json's wall_seconds less the imports the
          command makes once running), the time spent writing checkpoints
  ray     the same experiment with backend: ray (Ray Tune's PopulationBasedTraining,
          synch, reuse_actors=True, a local Ray started with ray.init, 2 CPUs, one per trial),
          the same two times (ray.init counted as Ray's; `import ray` is an import)
  tpe     Optuna TPE, 16 full trials of 300 steps (metaopt.train), sequential, in process
  fixed   the same 16 members with exploit and explore off (their starting values kept): the
          best fixed-hyperparameter member
  replay  the best local member's discovered schedule (best.yaml) and the best fixed member's
          values, each trained by metaopt.train on one model with 5 fresh seeds

Final validation loss = the best member's (trial's) at step 300. Cells: median (min-max) over
seeds, one run each.

    python benchmarks/pbt.py                          # all tasks, 5 seeds
    python benchmarks/pbt.py --tasks digits_mlp       # some tasks, merged into the results
    python benchmarks/pbt.py --report-only            # the Markdown again from the JSON
    python benchmarks/pbt.py --device cuda
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))  # searched last (see optim_step.py)
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]
import datetime as dt  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import optuna  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

import metaopt  # noqa: E402

sys.path.append(HERE)
from common import RESULTS, table, write  # noqa: E402

TASKS = ("digits_mlp", "digits_cnn", "logistic_breast_cancer")
POPULATION, STEPS, INTERVAL, QUANTILE, RESAMPLE = 16, 300, 25, 0.25, 0.25
SPACE = {  # W1's (../shared/anchors/w1.py)
    "lr": {"low": 1e-4, "high": 1e-1, "log": True},
    "beta1": {"low": 0.8, "high": 0.99},
    "beta2": {"low": 0.9, "high": 0.9999},
    "eps": {"low": 1e-10, "high": 1e-6, "log": True},
    "weight_decay": {"low": 1e-6, "high": 1e-1, "log": True},
}
REPLAY_SEEDS = (100, 101, 102, 103, 104)
ROOT = Path(HERE).parent


def experiment(task: str, seed: int, backend: str, device: str) -> dict:
    spec = {"name": f"bench-{task}-{seed}-{backend}", "task": task, "steps": STEPS,
            "seed": seed, "pbt": {"optimizer": "adamw", "space": SPACE,
                                  "population": POPULATION, "interval": INTERVAL,
                                  "quantile": QUANTILE, "resample": RESAMPLE,
                                  "backend": backend}}
    if device != "cpu":
        spec["device"] = device
    return spec


def run_command(task: str, seed: int, backend: str, device: str, keep: Path | None) -> dict:
    """`metaopt pbt` as a subprocess: whole-command and after-imports wall times, the best
    value, the checkpoint time and (``keep``) the run directory copied there."""
    folder = Path(tempfile.mkdtemp(prefix="bench_pbt_"))
    try:
        exp = folder / "exp.yaml"
        exp.write_text(yaml.safe_dump(experiment(task, seed, backend, device)))
        out = folder / "run"
        env = {**os.environ, "OMP_NUM_THREADS": "2", "RAY_USAGE_STATS_ENABLED": "0"}
        started = time.time()
        done = subprocess.run([sys.executable, "-m", "metaopt.cli", "pbt", str(exp), "--out",
                               str(out), "--no-progress"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=900)
        ended = time.time()
        if done.returncode != 0:
            raise RuntimeError(f"metaopt pbt ({backend}) failed: {done.stderr[-3000:]}")
        summary = json.loads((out / "summary.json").read_text())
        whole = (out / "summary.json").stat().st_mtime - started
        timings = summary["timings"]
        after = summary["wall_seconds"] - timings["imports"]
        best_yaml = yaml.safe_load((out / "best.yaml").read_text())
        if keep is not None:
            shutil.rmtree(keep, ignore_errors=True)
            shutil.copytree(out, keep, ignore=shutil.ignore_patterns("*.pt"))
        record = {"whole": whole, "after_imports": after, "process": ended - started,
                  "best": summary["best"]["value"], "checkpoint": timings["checkpoint"],
                  "checkpoint_share": timings["checkpoint"] / after,
                  "exploits": summary["exploits"], "evaluations": summary["evaluations"],
                  "train": best_yaml["train"], "replay_seed": best_yaml["seed"]}
        if backend == "ray":
            record["ray_init"] = timings["ray_init"]
            record["fit"] = timings["fit"]
            record["trial_train_seconds"] = summary["ray"]["train_seconds"]
        return record
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def suggest(trial: optuna.Trial) -> dict:
    return {k: trial.suggest_float(k, p["low"], p["high"], log=p.get("log", False))
            for k, p in SPACE.items()}


def run_tpe(task: str, seed: int, device: str) -> dict:
    """Optuna TPE, 16 full trials of 300 steps, each metaopt.train with the run's seed."""
    started = time.perf_counter()
    study = optuna.create_study(direction="minimize",
                                sampler=optuna.samplers.TPESampler(seed=seed))

    def objective(trial: optuna.Trial) -> float:
        r = metaopt.train(task, "adamw", suggest(trial), steps=STEPS, seed=seed,
                          eval_every=STEPS, log_every=STEPS, progress=False, device=device)
        return r.value if r.ok else math.inf

    study.optimize(objective, n_trials=POPULATION)
    return {"wall": time.perf_counter() - started, "best": study.best_value,
            "best_params": study.best_params}


def run_fixed(task: str, seed: int, device: str) -> dict:
    """The same members with exploit off: each keeps its starting values."""
    started = time.perf_counter()
    result = metaopt.pbt(task, "adamw", SPACE, population=POPULATION, interval=INTERVAL,
                         steps=STEPS, seed=seed, exploit="none", device=device,
                         progress=False)
    best = result.best
    return {"wall": time.perf_counter() - started, "best": best.value,
            "hparams": best.hparams, "member": best.member}


def replay(task: str, hparams: dict, schedule: dict | None, device: str) -> list[float]:
    out = []
    for s in REPLAY_SEEDS:
        r = metaopt.train(task, "adamw", hparams, schedule=schedule, steps=STEPS, seed=s,
                          eval_every=STEPS, log_every=STEPS, progress=False, device=device)
        out.append(r.value if r.ok else math.nan)
    return out


def measure(task: str, seed: int, device: str, figures: Path | None) -> dict:
    print(f"{task} seed {seed}: local", flush=True)
    local = run_command(task, seed, "local", device, figures)
    print(f"  local {local['whole']:.2f} s whole, {local['after_imports']:.2f} s after "
          f"imports, best {local['best']:.4f}; ray", flush=True)
    ray = run_command(task, seed, "ray", device, None)
    print(f"  ray {ray['whole']:.2f} s whole, {ray['after_imports']:.2f} s after imports, "
          f"best {ray['best']:.4f}; tpe", flush=True)
    tpe = run_tpe(task, seed, device)
    fixed = run_fixed(task, seed, device)
    train = local["train"]
    schedule_values = replay(task, train["hparams"], train.get("schedule"), device)
    fixed_values = replay(task, fixed["hparams"], None, device)
    print(f"  tpe {tpe['best']:.4f} ({tpe['wall']:.2f} s), fixed {fixed['best']:.4f}, replay "
          f"{statistics.median(schedule_values):.4f} vs fixed "
          f"{statistics.median(fixed_values):.4f}", flush=True)
    return {"seed": seed, "local": local, "ray": ray, "tpe": tpe, "fixed": fixed,
            "replay_schedule": schedule_values, "replay_fixed": fixed_values,
            "load": list(os.getloadavg())}


# -- the report ---------------------------------------------------------------------------------
def cell(xs: list[float], f: str = "{:.2f}") -> str:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    if not xs:
        return "n/a"
    return f"{f.format(statistics.median(xs))} ({f.format(min(xs))}–{f.format(max(xs))})"


def ratio_cell(a: list[float], b: list[float]) -> str:
    per = [x / y for x, y in zip(a, b)]
    return f"{statistics.median(per):.1f}× ({min(per):.1f}–{max(per):.1f})"


def report(data: dict) -> str:
    meta, results = data["meta"], data["results"]
    tasks = [t for t in TASKS if t in results] + [t for t in results if t not in TASKS]
    rows, ratios, goals = [], [], []
    wins = pairs = 0
    replay_ok = []
    for task in tasks:
        rs = results[task]
        L, R = [r["local"] for r in rs], [r["ray"] for r in rs]
        rows.append([f"{task}: local PBT (`metaopt pbt`)", cell([x["whole"] for x in L]),
                     cell([x["after_imports"] for x in L]), cell([x["best"] for x in L],
                                                                  "{:.4f}"),
                     cell([100 * x["checkpoint_share"] for x in L], "{:.1f}") + " %"])
        rows.append([f"{task}: Ray Tune PBT (backend: ray)", cell([x["whole"] for x in R]),
                     cell([x["after_imports"] for x in R]) + f" (ray.init "
                     f"{statistics.median(x['ray_init'] for x in R):.1f})",
                     cell([x["best"] for x in R], "{:.4f}"), "—"])
        rows.append([f"{task}: Optuna TPE, 16 × 300", "—",
                     cell([r["tpe"]["wall"] for r in rs]),
                     cell([r["tpe"]["best"] for r in rs], "{:.4f}"), "—"])
        rows.append([f"{task}: fixed members (exploit off)", "—",
                     cell([r["fixed"]["wall"] for r in rs]),
                     cell([r["fixed"]["best"] for r in rs], "{:.4f}"), "—"])
        sched = [statistics.median(r["replay_schedule"]) for r in rs]
        fixed = [statistics.median(r["replay_fixed"]) for r in rs]
        rows.append([f"{task}: replayed schedule / best fixed member, 5 seeds", "—", "—",
                     cell(sched, "{:.4f}") + " / " + cell(fixed, "{:.4f}"), "—"])
        after = ratio_cell([x["after_imports"] for x in R], [x["after_imports"] for x in L])
        whole = ratio_cell([x["whole"] for x in R], [x["whole"] for x in L])
        w = sum(r["local"]["best"] < r["tpe"]["best"] for r in rs)
        wins, pairs = wins + w, pairs + len(rs)
        local_med = statistics.median(x["best"] for x in L)
        ray_med = statistics.median(x["best"] for x in R)
        replay_ok += [s <= f for s, f in zip(sched, fixed)]
        ratios.append([task, after, whole, f"{local_med:.4f} vs {ray_med:.4f}",
                       f"{w}/{len(rs)}", f"{sum(s <= f for s, f in zip(sched, fixed))}/"
                       f"{len(rs)}"])
    all_l = [r["local"] for t in tasks for r in results[t]]
    all_r = [r["ray"] for t in tasks for r in results[t]]
    after_ratio = statistics.median(r["after_imports"] / x["after_imports"]
                                    for x, r in zip(all_l, all_r))
    whole_ratio = statistics.median(r["whole"] / x["whole"] for x, r in zip(all_l, all_r))
    share = max(x["checkpoint_share"] for x in all_l)
    quality = all(statistics.median(r["local"]["best"] for r in results[t])
                  <= statistics.median(r["ray"]["best"] for r in results[t]) for t in tasks)
    replay_med = {t: (statistics.median(statistics.median(r["replay_schedule"])
                                        for r in results[t]),
                      statistics.median(statistics.median(r["replay_fixed"])
                                        for r in results[t])) for t in tasks}

    def held(ok: bool) -> str:
        return "**met**" if ok else "**missed**"

    goals = [
        f"local ≥ 20× faster than Ray after imports: {after_ratio:.1f}× (median over "
        f"(task, seed)) — {held(after_ratio >= 20)}",
        f"local ≥ 3× faster for the whole command: {whole_ratio:.1f}× — "
        f"{held(whole_ratio >= 3)}",
        "final val loss no worse than the median over seeds of Ray's best, per task: "
        + "; ".join(f"{t} {statistics.median(r['local']['best'] for r in results[t]):.4f} vs "
                    f"{statistics.median(r['ray']['best'] for r in results[t]):.4f}"
                    for t in tasks) + f" — {held(quality)}",
        f"better than Optuna TPE on ≥ 70% of (task, seed) pairs: {wins}/{pairs} = "
        f"{100 * wins / pairs:.0f}% — {held(wins >= 0.7 * pairs)}",
        f"checkpointing ≤ 5% of wall time (after imports): at most {100 * share:.1f}% — "
        f"{held(share <= 0.05)}",
        "replayed schedule's median over 5 seeds no worse than the best fixed member's: "
        f"holds on {sum(replay_ok)}/{len(replay_ok)} (task, seed) pairs; per task (median "
        "over seeds of the 5-seed medians) "
        + "; ".join(f"{t} {replay_med[t][0]:.4f} vs {replay_med[t][1]:.4f}" for t in tasks)
        + f" — {held(all(a <= b for a, b in replay_med.values()))}",
    ]
    lines = [
        "# PBT: local (one stacked population) vs Ray Tune PBT vs Optuna TPE",
        "",
        f"`python benchmarks/pbt.py` ({meta['date']}): {meta['machine']}. "
        f"{POPULATION} members × {STEPS} steps (4,800 member-steps), interval {INTERVAL}, "
        f"truncation {QUANTILE:g}, resample {RESAMPLE:g}, AdamW over W1's space; seeds "
        f"{meta['seeds']}, one run each. Cells: median (min–max) over seeds.",
        "",
        table(["method", "whole command s", "after imports s", "final val loss (best)",
               "checkpoint writes / wall"], rows),
        "",
        "Ratios (Ray / local, per seed), quality against Ray and TPE, replay against the "
        "best fixed member (pairs where the schedule's 5-seed median ≤ the fixed member's):",
        "",
        table(["task", "after imports", "whole command", "local vs Ray best (medians)",
               "local beats TPE", "replay ≤ fixed"], ratios),
        "",
        "## Goals",
        "",
        *[f"- {g}" for g in goals],
        "",
        "## Notes",
        "",
        "- Whole command: from starting the `metaopt pbt` process to its summary.json "
        "(Python, `import torch`, metaopt, for Ray `import ray` and `ray.init`, included). "
        "After imports: summary.json's `wall_seconds` (from the command's start, its module "
        "imports done) less the time the run spends in import statements (the command's "
        "import clock: the task's dataset library, matplotlib, Ray and Ray Tune); `ray.init` "
        "counts as Ray's. Both include writing the outputs before summary.json (best.yaml, "
        "lineage.json, the two figures). Ray's shutdown comes after summary.json and is not "
        "counted; the per-seed lines give each process's exit time too.",
        "- The two backends run the same PBT from the same 16 starting values (the seed's), "
        "with their own draws of whom a bottom member clones (Ray's seeded `random`) and of "
        "explore; Ray's members step one model at a time instead of stacked. Their best "
        "final losses are close on most seeds (see the per-seed lines), so 'no worse than "
        "Ray's' often compares near-equal numbers.",
        "- Fixed members' time is `metaopt.pbt` in process with exploit off (training and "
        "the 12 evaluations, no outputs): the local command's time after imports less this "
        "is its policy, checkpoints, outputs and figures.",
        "- Both backends run the same experiment file but `backend:`; the local one with 2 "
        "torch threads (OMP_NUM_THREADS=2), Ray with 2 CPUs, one trial (and thread) each. "
        "Ray's PBT is synchronous (every member reaches the interval's end before the "
        "bottom quarter clones the top quarter), so both train exactly 4,800 member-steps; "
        "the anchor (../shared/anchors/pbt_anchor.md: 17.9 s, best 0.084 on digits, 3 "
        "seeds) used Ray's asynchronous default with a torch.optim trainable and retrained "
        "some steps (5,050–5,275).",
        "- Checkpoint writes: the local run writes the whole population atomically after "
        "every interval (12 writes); the share is those writes' time over the run's time "
        "after imports.",
        "- TPE: Optuna's TPESampler(seed), 16 trials × 300 steps, each `metaopt.train` from "
        "the run's seed (shared initial weights and batch order), in the benchmark process "
        f"(torch threads {meta['threads']}). PBT members are built and fed from seed + i.",
        "- Fixed members: `metaopt.pbt(..., exploit='none')` with the same seed, so the "
        "same 16 starting values as the PBT run; its best member's values are the best "
        "fixed hyperparameters. Replays: `metaopt.train` on one model with seeds "
        f"{list(REPLAY_SEEDS)} (fresh weights and batch order), the best local member's "
        "best.yaml (starting values + piecewise schedules) against the best fixed member's "
        "values.",
        f"- Load average at the start of each task's runs: {meta.get('loads', {})}.",
        "",
        "## Per seed",
        "",
    ]
    for task in tasks:
        for r in results[task]:
            lo, ra = r["local"], r["ray"]
            lines.append(
                f"- {task} seed {r['seed']}: local {lo['whole']:.2f}/{lo['after_imports']:.2f} s "
                f"(process exit {lo['process']:.2f} s) "
                f"best {lo['best']:.4f} ({lo['exploits']} exploits, checkpoint "
                f"{lo['checkpoint']:.3f} s); ray {ra['whole']:.2f}/{ra['after_imports']:.2f} s "
                f"(init {ra['ray_init']:.2f}, fit {ra['fit']:.2f}, trials' own training "
                f"{ra['trial_train_seconds']:.2f}, process exit {ra['process']:.2f}) best "
                f"{ra['best']:.4f}; tpe "
                f"{r['tpe']['best']:.4f} ({r['tpe']['wall']:.2f} s); fixed "
                f"{r['fixed']['best']:.4f}; replay schedule "
                f"{[round(v, 4) for v in r['replay_schedule']]} vs fixed "
                f"{[round(v, 4) for v in r['replay_fixed']]}")
    return "\n".join(lines) + "\n"


def plot(data: dict, path: Path) -> Path:
    """Per task: after-imports wall time (log) and final validation loss, each seed a dot,
    the median a bar, for local PBT, Ray Tune PBT and Optuna TPE."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = data["results"]
    tasks = [t for t in TASKS if t in results]
    methods = [("local PBT", lambda r: r["local"]["after_imports"], lambda r: r["local"]["best"]),
               ("Ray Tune PBT", lambda r: r["ray"]["after_imports"], lambda r: r["ray"]["best"]),
               ("Optuna TPE", lambda r: r["tpe"]["wall"], lambda r: r["tpe"]["best"])]
    fig, axes = plt.subplots(2, len(tasks), figsize=(4 * len(tasks), 6), squeeze=False)
    for j, task in enumerate(tasks):
        for row, pick in ((0, 1), (1, 2)):
            ax = axes[row][j]
            for k, method in enumerate(methods):
                ys = [method[pick](r) for r in results[task]]
                ax.bar(k, statistics.median(ys), color=f"C{k}", alpha=0.5)
                ax.scatter([k] * len(ys), ys, color=f"C{k}", s=12, zorder=3)
            ax.set_xticks(range(len(methods)), [m[0] for m in methods], fontsize="small")
            if row == 0:
                ax.set_yscale("log")
                ax.set_title(task)
                ax.set_ylabel("wall s after imports" if j == 0 else "")
            else:
                ax.set_ylabel("final val loss (best)" if j == 0 else "")
                lo = min(m[2](r) for m in methods for r in results[task])
                hi = max(m[2](r) for m in methods for r in results[task])
                ax.set_ylim(lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo))
            ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle("16 members x 300 steps (dots: seeds, bars: medians)", fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")
    return path


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of TPE and replays")
    ap.add_argument("--out", default=None, help="Markdown (default results/pbt_<device>.md)")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    kind = "cuda" if args.device.startswith("cuda") else "cpu"
    out = Path(args.out) if args.out else RESULTS / f"pbt_{kind}.md"
    store = out.with_suffix(".json")
    data = json.loads(store.read_text()) if store.exists() else {"meta": {}, "results": {}}
    if not args.report_only:
        torch.set_flush_denormal(True)
        torch.set_num_threads(args.threads)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        if kind == "cuda" and not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device here")
        seeds = list(range(args.seeds))
        import ray

        data["meta"].update(
            date=dt.date.today().isoformat(), seeds=seeds, threads=args.threads,
            machine=(f"{os.cpu_count()} CPUs ({platform.machine()}), torch {torch.__version__}, "
                     f"optuna {optuna.__version__}, ray {ray.__version__}, flush_denormal on"
                     + (f", {torch.cuda.get_device_name()}" if kind == "cuda" else "")))
        figures = RESULTS / "pbt_run"
        for task in args.tasks.split(","):
            data["meta"].setdefault("loads", {})[task] = [round(x, 2) for x in os.getloadavg()]
            data["results"][task] = [
                measure(task, s, args.device, figures if task == "digits_mlp" and s == 0
                        else None) for s in seeds]
            store.write_text(json.dumps(data, indent=1, default=str))
    write(out, report(data))
    if data["results"]:
        plot(data, out.with_suffix(".png"))


if __name__ == "__main__":
    main()
