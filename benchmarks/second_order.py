"""Second-order and curvature optimizers against tuned Adam and heavyball.

Two parts (run together or apart; each merges its results into the same JSON and rewrites
the Markdown):

``--part target``: steps, gradient evaluations and training wall time to a target validation
loss on ill_conditioned_regression, digits_mlp and digits_cnn. Every contender's lr is tuned
on seed 0 over a grid (fewest steps to the target; ties by final loss), then run on the other
seeds with that lr; the table shows medians over seeds. Validation is checked every
``--every`` steps (its time not counted). heavyball runs with its compiler off here
(``heavyball.utils.compile_mode = None``: on these small models a cold compile per optimizer
and shape costs more than the whole run); its wall times are eager ones.

``--part step``: per-step time and state memory on the 15.2 M-parameter set of
BENCHMARKS.md (8×1024², 8×1024, 2×4096×512, 40×256², 40×256; randn gradients held fixed) for
metaopt's Shampoo and SOAP beside heavyball's KLShampoo and SOAP (compiled, as it ships; its
first steps are reported apart), with the same preconditioner frequency and block size /
max preconditioned dimension, and fused AdamW as the unit. Step times are the mean over whole
frequency cycles (a cycle holds one preconditioner refresh) and their median step.

    python benchmarks/second_order.py                      # both parts, CPU, 2 threads
    python benchmarks/second_order.py --part step --frequency 10 --block 2048
    python benchmarks/second_order.py --device cuda
"""

from __future__ import annotations

import sys
from pathlib import Path

# benchmarks/ searched last (see optim_step.py)
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))

import json  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

import metaopt  # noqa: E402
from benchmarks.common import RESULTS, machine, parser, setup, sync, table, write  # noqa: E402
from metaopt.optim import state_bytes  # noqa: E402

TARGETS = {"ill_conditioned_regression": 0.02, "digits_mlp": 0.15, "digits_cnn": 0.18}
BUDGET = {"ill_conditioned_regression": 600, "digits_mlp": 600, "digits_cnn": 400}
LRS = [1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1]


def _hb():
    try:
        import heavyball
    except ImportError:
        return None
    return heavyball


# contenders run on some tasks only: a dense Fisher of the digits models (D = 4,810 and more)
# costs a D³ Cholesky factorisation per step
ONLY_TASKS = {"natural_gradient (dense, sampled Gaussian Fisher, sgd)":
              {"ill_conditioned_regression"},
              # a sampled Fisher's likelihood is the task's: Gaussian for squared error,
              # categorical for cross-entropy
              "kfac (sampled Gaussian Fisher, sgd, momentum 0.9)": {"ill_conditioned_regression"},
              "kfac (sampled categorical Fisher, sgd, momentum 0.9)": {"digits_mlp",
                                                                       "digits_cnn"}}


def contenders(frequency: int) -> dict[str, tuple[callable, list[float], bool]]:
    """name -> (factory(params, lr, module), lr grid, needs a closure)."""
    M = metaopt.optim
    out = {
        "adam (metaopt = torch)": (lambda ps, lr, *_: M.Adam(ps, lr=lr), LRS, False),
        "shampoo": (lambda ps, lr, *_: M.Shampoo(ps, lr=lr, precondition_frequency=frequency),
                    LRS, False),
        "soap": (lambda ps, lr, *_: M.SOAP(ps, lr=lr, betas=(0.9, 0.95),  # heavyball's betas
                                       precondition_frequency=frequency), LRS, False),
        "lbfgs (strong Wolfe, 1 iter)": (
            lambda ps, lr, *_: M.LBFGS(ps, lr=lr, max_iter=1, history_size=10,
                                   line_search_fn="strong_wolfe"), [0.1, 0.3, 1.0], True),
    }
    if hasattr(M, "KFAC"):
        out["kfac (sgd, momentum 0.9)"] = (
            lambda ps, lr, *_: M.KFAC(ps, lr=lr, momentum=0.9, update_freq=frequency), LRS, True)
        for label, likelihood in (("Gaussian", "gaussian"), ("categorical", "categorical")):
            out[f"kfac (sampled {label} Fisher, sgd, momentum 0.9)"] = (
                lambda ps, lr, module, li=likelihood: M.KFAC(
                    ps, lr=lr, momentum=0.9, update_freq=frequency, fisher="sampled",
                    likelihood=li, model=module), LRS, True)
    if hasattr(M, "NaturalGradient"):
        out["natural_gradient (diagonal, sgd, momentum 0.9)"] = (
            lambda ps, lr, *_: M.NaturalGradient(ps, lr=lr, momentum=0.9), LRS, True)
        out["natural_gradient (dense, sampled Gaussian Fisher, sgd)"] = (
            lambda ps, lr, module: M.NaturalGradient(
                ps, lr=lr, structure="dense", fisher="sampled", likelihood="gaussian",
                model=module, fisher_decay=0.9), LRS, True)
    hb = _hb()
    if hb is not None:
        kw = dict(precondition_frequency=frequency, use_precond_schedule=False)
        out["hb.SOAP"] = (lambda ps, lr, *_: hb.SOAP(ps, lr=lr, **kw), LRS, False)
        out["hb.KLShampoo"] = (lambda ps, lr, *_: hb.KLShampoo(ps, lr=lr, **kw), LRS, False)
        out["hb.PSGDKron"] = (lambda ps, lr, *_: hb.PSGDKron(ps, lr=lr), LRS, False)
    return out


def to_target(task, make, lr, closure_needed, seed, every, device):
    """(steps to the target or None, gradient evaluations, training seconds, final loss)."""
    torch.manual_seed(seed)
    module = task.model().to(device)
    opt = make(list(module.parameters()), lr, module)
    data = task.data(torch.Generator().manual_seed(seed))
    target, budget = TARGETS[task.name], BUDGET[task.name]
    evals, seconds, value = 0, 0.0, math.inf
    for step in range(1, budget + 1):
        batch = next(data)
        batch = tuple(b.to(device) for b in batch)
        sync(device)
        start = time.perf_counter()
        calls = [0]

        def closure(batch=batch, calls=calls):
            calls[0] += 1
            opt.zero_grad()
            loss = task.loss(module, batch)
            loss.backward()
            return loss

        if closure_needed:
            opt.step(closure)
        else:
            closure()
            opt.step()
        sync(device)
        seconds += time.perf_counter() - start
        evals += calls[0]
        if step % every == 0 or step == budget:
            value = task.evaluate(module)
            if not math.isfinite(value):
                return None, evals, seconds, value
            if value <= target:
                return step, evals, seconds, value
    return None, evals, seconds, value


def part_target(args, device) -> dict:
    hb = _hb()
    if hb is not None:
        hb.utils.compile_mode = None
    out = {}
    for task_name in args.tasks.split(","):
        task = metaopt.tasks.get(task_name)
        rows = {}
        for name, (make, grid, closure) in contenders(args.frequency).items():
            if args.only and name.split(" ")[0] not in args.only.split(","):
                continue
            if task_name not in ONLY_TASKS.get(name, {task_name}):
                continue
            tried = []
            for lr in grid:
                try:
                    tried.append((lr, to_target(task, make, lr, closure, 0, args.every, device)))
                except Exception as err:  # a contender that cannot run here: say so
                    print(f"{task_name} {name} lr={lr}: {type(err).__name__}: {err}")
            if not tried:
                continue

            def rank(item):
                steps, _, _, value = item[1]
                return (steps if steps is not None else math.inf,
                        value if math.isfinite(value) else math.inf)

            lr, first = min(tried, key=rank)
            runs = [first] + [to_target(task, make, lr, closure, s, args.every, device)
                              for s in range(1, args.seeds)]
            reached = [r for r in runs if r[0] is not None]
            rows[name] = {"lr": lr, "runs": runs, "reached": len(reached)}
            med = (statistics.median(r[0] for r in reached) if len(reached) == len(runs)
                   else None)
            print(f"{task_name:28s} {name:30s} lr={lr:g} steps={med} "
                  f"reached {len(reached)}/{len(runs)}", flush=True)
        out[task_name] = rows
    return out


# -- per-step time on the 15.2 M set --------------------------------------------------------
SIZES = ([(1024, 1024)] * 8 + [(1024,)] * 8 + [(4096, 512)] * 2 + [(256, 256)] * 40
         + [(256,)] * 40)


def fresh(device):
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=g).to(device).requires_grad_(True) for s in SIZES]
    grads = [torch.randn(s, generator=g).to(device) for s in SIZES]
    return params, grads


def time_steps(make, device, frequency, cycles, warmup):
    params, grads = fresh(device)
    opt = make(params)

    def step():
        for p, g in zip(params, grads):
            p.grad = g.clone()  # heavyball clears .grad; every contender pays the copy
        sync(device)
        start = time.perf_counter()
        opt.step()
        sync(device)
        return time.perf_counter() - start

    first = [step() for _ in range(warmup)]
    times = [step() for _ in range(cycles * frequency)]
    return {"first_s": first, "mean_ms": statistics.fmean(times) * 1e3,
            "median_ms": statistics.median(times) * 1e3, "min_ms": min(times) * 1e3,
            "max_ms": max(times) * 1e3, "state_bytes": state_bytes(opt)}


def part_step(args, device) -> dict:
    M = metaopt.optim
    f, b = args.frequency, args.block
    makers = {
        "torch AdamW fused": lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True),
        "metaopt Shampoo": lambda ps: M.Shampoo(ps, lr=1e-3, precondition_frequency=f,
                                                start_preconditioning_step=1, block_size=b),
        "metaopt SOAP": lambda ps: M.SOAP(ps, lr=1e-3, precondition_frequency=f,
                                          max_precond_dim=b),
    }
    hb = _hb()
    if hb is not None:
        kw = dict(lr=1e-3, precondition_frequency=f, max_precond_dim=b,
                  use_precond_schedule=False)
        makers["heavyball KLShampoo"] = lambda ps: hb.KLShampoo(ps, **kw)
        makers["heavyball SOAP"] = lambda ps: hb.SOAP(ps, **kw)
    out = {}
    for name, make in makers.items():
        if args.only and name not in args.only.split(","):
            continue
        warmup = 1 if name.startswith("torch") or name.startswith("metaopt") else args.hb_warmup
        out[name] = time_steps(make, device, f, args.cycles, warmup)
        r = out[name]
        print(f"{name:22s} mean {r['mean_ms']:.0f} ms, median {r['median_ms']:.0f} ms, "
              f"first {[round(x, 1) for x in r['first_s']]} s, "
              f"state {r['state_bytes'] / 2**20:.0f} MiB", flush=True)
    out["config"] = {"frequency": f, "block": b, "cycles": args.cycles}
    return out


# -- report ---------------------------------------------------------------------------------
def report(results: dict, device, threads) -> str:
    lines = [f"# Second-order optimizers ({machine(device, threads)})", ""]
    target = results.get("target")
    if target:
        lines += ["## Steps to a target validation loss (lr tuned on seed 0; medians over "
                  f"{target['seeds']} seeds)", "",
                  f"Preconditioner / inverse frequency {target['frequency']} for every "
                  "contender; heavyball eager (compiler off). `steps` and `evals` (gradient "
                  "evaluations: L-BFGS's line search and K-FAC pay more) are medians over "
                  "seeds that reached the target (`—` when one did not); `vs Adam` compares "
                  "steps with tuned Adam's.", ""]
        for task_name, rows in target["tasks"].items():
            lines += [f"### {task_name} (target {TARGETS[task_name]}, at most "
                      f"{BUDGET[task_name]} steps)", ""]
            adam = rows.get("adam (metaopt = torch)")
            adam_steps = _median_steps(adam) if adam else None
            body = []
            for name, r in rows.items():
                steps = _median_steps(r)
                ok = [x for x in r["runs"] if x[0] is not None]
                evals = statistics.median(x[1] for x in ok) if steps is not None else None
                wall = statistics.median(x[2] for x in ok) if steps is not None else None
                per_step = statistics.median(x[2] / max(x[0], 1) * 1e3 for x in ok) if ok \
                    else None
                vs = (f"{steps / adam_steps:.2f}×" if steps is not None and adam_steps
                      else "—")
                body.append([name, f"{r['lr']:g}", f"{r['reached']}/{len(r['runs'])}",
                             "—" if steps is None else f"{steps:g}", vs,
                             "—" if evals is None else f"{evals:g}",
                             "—" if wall is None else f"{wall:.2f}",
                             "—" if per_step is None else f"{per_step:.2f}",
                             f"{statistics.median(x[3] for x in r['runs']):.4f}"])
            lines += [table(["contender", "lr", "reached", "steps", "vs Adam", "evals",
                             "train s", "ms/step", "val loss at stop"], body), ""]
    step = results.get("step")
    if step:
        cfg = step["config"]
        lines += ["## Per-step time and state memory, 15.2 M parameters in 98 tensors", "",
                  f"Preconditioner frequency {cfg['frequency']}, block size / max "
                  f"preconditioned dimension {cfg['block']} for both libraries; "
                  f"{cfg['cycles']} whole frequency cycles timed after the first step(s).",
                  ""]
        unit = step.get("torch AdamW fused")
        body = []
        for name, r in step.items():
            if name == "config":
                continue
            body.append([name, f"{r['mean_ms']:.0f}", f"{r['median_ms']:.0f}",
                         f"{r['min_ms']:.0f}–{r['max_ms']:.0f}",
                         f"{r['mean_ms'] / unit['mean_ms']:.0f}×" if unit else "—",
                         ", ".join(f"{x:.1f}" for x in r["first_s"]),
                         f"{r['state_bytes'] / 2**20:.0f}",
                         f"{r['state_bytes'] / (15.2e6 * 4):.1f}×"])
        lines += [table(["optimizer", "mean ms/step", "median ms", "min–max ms",
                         "vs fused AdamW", "first step(s) s", "state MiB",
                         "state / param bytes"], body), ""]
        for ours, theirs in (("metaopt Shampoo", "heavyball KLShampoo"),
                             ("metaopt SOAP", "heavyball SOAP")):
            if ours in step and theirs in step:
                lines.append(f"- {ours} / {theirs}: mean step "
                             f"{step[ours]['mean_ms'] / step[theirs]['mean_ms']:.2f}×, "
                             f"state {step[ours]['state_bytes'] / step[theirs]['state_bytes']:.2f}"
                             "×")
        lines.append("")
    return "\n".join(lines)


def _median_steps(r):
    if r is None or r["reached"] < len(r["runs"]):
        return None
    return statistics.median(x[0] for x in r["runs"])


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--part", default="all", choices=["all", "target", "step"])
    p.add_argument("--tasks", default=",".join(TARGETS))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--every", type=int, default=10)
    p.add_argument("--frequency", type=int, default=10)
    p.add_argument("--block", type=int, default=2048)
    p.add_argument("--cycles", type=int, default=1)
    p.add_argument("--hb-warmup", type=int, default=12,
                   help="heavyball steps before timing (its compiles, including the first "
                        "preconditioner update's)")
    p.add_argument("--only", default="", help="comma-separated contenders")
    args = p.parse_args()
    device = setup(args)
    path = RESULTS / f"second_order_{device.type}.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    if args.part in ("all", "target"):
        tasks = part_target(args, device)
        if args.only:  # --only merges its contenders into the saved rows
            saved = results.get("target", {}).get("tasks", {})
            tasks = {t: {**saved.get(t, {}), **rows} for t, rows in tasks.items()}
        results["target"] = {"seeds": args.seeds, "frequency": args.frequency, "tasks": tasks}
    if args.part in ("all", "step"):
        results["step"] = {**results.get("step", {}), **part_step(args, device)}  # --only merges
    path.write_text(json.dumps(results, indent=1))
    write(args.out or RESULTS / f"second_order_{device.type}.md",
          report(results, device, args.threads))


if __name__ == "__main__":
    main()
