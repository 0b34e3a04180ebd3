"""Optimizer step time: every metaopt optimizer vs torch's fastest same algorithm and fused AdamW.

The parameter set of ../shared/BENCHMARKS.md: 15.2 M parameters in 98 tensors
(8 × 1024², 8 × 1024, 2 × 4096×512, 40 × 256², 40 × 256), gradients fixed, a schedule writing
lr before every step. Also: a population of P = 64 members with the same 15.2 M elements in
total, and the first step's latency with a cold and a warm compiler cache (in subprocesses).

    python benchmarks/optim_step.py                 # CPU, 2 threads
    python benchmarks/optim_step.py --device cuda
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import RESULTS, interleaved, machine, parser, ratio, setup, table, write  # noqa: E402

import metaopt  # noqa: E402

SIZES = [(1024, 1024)] * 8 + [(1024,)] * 8 + [(4096, 512)] * 2 + [(256, 256)] * 40 + [(256,)] * 40
# one member of a P = 64 population: every tensor 64x smaller, 15.2 M elements in all
MEMBER_SIZES = ([(128, 128)] * 8 + [(16,)] * 8 + [(512, 64)] * 2 + [(32, 32)] * 40
                + [(4,)] * 40)
P = 64

# metaopt name -> (torch's same algorithm: a factory, which implementation) or None
TORCH_TWIN: dict[str, tuple[Callable, str] | None] = {
    "sgd": (lambda ps: torch.optim.SGD(ps, lr=1e-3, momentum=0.9, fused=True), "fused"),
    "adagrad": (lambda ps: torch.optim.Adagrad(ps, fused=True), "fused"),
    "adam": (lambda ps: torch.optim.Adam(ps, fused=True), "fused"),
    "adamw": (lambda ps: torch.optim.AdamW(ps, fused=True), "fused"),
    "rmsprop": (lambda ps: torch.optim.RMSprop(ps, foreach=True), "foreach"),
    "adamax": (lambda ps: torch.optim.Adamax(ps, foreach=True), "foreach"),
    "nadam": (lambda ps: torch.optim.NAdam(ps, foreach=True), "foreach"),
    "radam": (lambda ps: torch.optim.RAdam(ps, foreach=True), "foreach"),
    "adadelta": (lambda ps: torch.optim.Adadelta(ps, foreach=True), "foreach"),
    "adafactor": (lambda ps: torch.optim.Adafactor(ps, foreach=True), "foreach"),
}
METAOPT_KWARGS = {"sgd": {"lr": 1e-3, "momentum": 0.9}}  # the goal is SGD with momentum
GOAL_VS_TWIN = {"adamw": 1.2, "adam": 1.2, "sgd": 1.2, "adagrad": 1.2}
GOAL_VS_ADAMW = {n: 1.5 for n in ("rmsprop", "radam", "nadam", "adamax", "adadelta",
                                  "adabound", "lamb", "lion")}


def make_params(sizes, device, population: int | None = None) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    lead = (population,) if population else ()
    params = []
    for shape in sizes:
        p = torch.randn(*lead, *shape, generator=g).to(device).requires_grad_()
        p.grad = torch.randn(*lead, *shape, generator=g).to(device)
        params.append(p)
    return params


def build_metaopt(name: str, params, population: int | None = None):
    """Default hyperparameters; the compiled backend, which ``auto`` switches to once eager
    updates have cost as much as compiling (steady state of any long run)."""
    kwargs = dict(METAOPT_KWARGS.get(name, {}))
    if name != "muon":
        kwargs["backend"] = "compiled"
    if population:
        kwargs["population"] = population
    if name == "muon":
        groups = [{"params": [p for p in params if p.dim() == 2 + bool(population)],
                   "optimizer": "muon"},
                  {"params": [p for p in params if p.dim() != 2 + bool(population)],
                   "optimizer": "adamw"}]
        return metaopt.optim.Composite(groups, population=population)
    if name == "lookahead":
        return metaopt.optim.create("lookahead", params, **kwargs)
    return metaopt.optim.create(name, params, **kwargs)


def torch_muon(params):
    return _TorchPair(torch.optim.Muon([p for p in params if p.dim() == 2]),
                      torch.optim.AdamW([p for p in params if p.dim() != 2], fused=True))


class _TorchPair:
    def __init__(self, *opts):
        self.opts = opts
        self.param_groups = [g for o in opts for g in o.param_groups]

    def step(self):
        for o in self.opts:
            o.step()


def stepper(opt, lrs=(1e-3, 9e-4, 8e-4)) -> Callable[[], None]:
    """A step preceded by a schedule's write of lr (a float, as schedulers write it)."""
    k = [0]

    def step() -> None:
        lr = lrs[k[0] % len(lrs)]
        k[0] += 1
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()

    return step


def measure_steps(device, repeats: int, names: list[str]) -> list[dict]:
    rows = []
    for name in names:
        slow = name in ("muon", "adafactor")
        reps, calls = (2, 1) if slow else (repeats, 3)
        contenders = {}
        ours_params = make_params(SIZES, device)
        ours = build_metaopt(name, ours_params)
        contenders["metaopt"] = stepper(ours)
        twin = TORCH_TWIN.get(name)
        if name == "muon":
            twin = (torch_muon, "single-tensor + fused AdamW")
        if twin is not None:
            contenders["torch"] = stepper(twin[0](make_params(SIZES, device)))
        contenders["fused_adamw"] = stepper(torch.optim.AdamW(make_params(SIZES, device),
                                                              fused=True))
        start = time.perf_counter()
        for fn in contenders.values():  # warm-up (compiles metaopt's kernel on first use)
            fn()
            fn()
        warm = time.perf_counter() - start
        t = interleaved(contenders, reps, calls, device)
        row = {"name": name, "twin": twin[1] if twin else "—", "timings": t,
               "backend": _backend(ours), "warmup_s": warm}
        rows.append(row)
        msg = f"{name:<10} metaopt {t['metaopt'].ms()} ms"
        if "torch" in t:
            msg += f"  torch {twin[1]} {t['torch'].ms()}  ratio {ratio(t['metaopt'], t['torch'])}"
        msg += f"  vs fused AdamW {ratio(t['metaopt'], t['fused_adamw'])}"
        print(msg, flush=True)
        del contenders, ours, ours_params
    return rows


def _backend(opt) -> str:
    inner = getattr(opt, "optimizer", opt)
    runners = getattr(inner, "_runners", {})
    if isinstance(inner, metaopt.optim.Composite):
        return "mixed"
    return ",".join(sorted({r.mode for r in runners.values()})) or "reference"


def measure_population(device, repeats: int, name: str = "adamw") -> dict:
    single_params = make_params(SIZES, device)
    pop_params = make_params(MEMBER_SIZES, device, population=P)
    single = build_metaopt(name, single_params)
    pop = build_metaopt(name, pop_params, population=P)
    lrs = torch.logspace(-4, -2, P, dtype=torch.float64, device=device)
    schedule = metaopt.schedules.create({"name": "cosine", "T_max": 100, "base_lr": lrs})
    k = torch.zeros((), dtype=torch.float64)

    def pop_step() -> None:
        metaopt.schedules.apply(schedule, pop, k)
        k.add_(1)
        pop.step()

    contenders = {"single": stepper(single), "population": pop_step,
                  "fused_adamw": stepper(torch.optim.AdamW(make_params(SIZES, device),
                                                           fused=True))}
    for fn in contenders.values():
        fn()
        fn()
    t = interleaved(contenders, repeats, 3, device)
    print(f"population P={P} {t['population'].ms()} ms vs single {t['single'].ms()} ms: "
          f"{ratio(t['population'], t['single'])}", flush=True)
    return {"name": name, "timings": t}


FIRST_STEP = """
import sys, time, torch
torch.set_flush_denormal(True); torch.set_num_threads({threads})
import metaopt
sizes = {sizes!r}
g = torch.Generator().manual_seed(0)
params = [torch.randn(*s, generator=g).to("{device}").requires_grad_() for s in sizes]
for p in params:
    p.grad = torch.randn_like(p)
opt = metaopt.optim.create("{name}", params, backend="compiled")
start = time.perf_counter()
opt.step()
if "{device}" == "cuda":
    torch.cuda.synchronize()
print(time.perf_counter() - start)
"""


def first_step(name: str, sizes, device, threads: int, cache: str) -> float:
    code = FIRST_STEP.format(threads=threads, sizes=sizes, device=device.type, name=name)
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def measure_first_steps(device, threads: int, names: list[str]) -> list[dict]:
    """Cold (empty inductor cache) and warm (same cache, new process) first-step latency."""
    rows = []
    many = [(s[0] // 4, *s[1:]) if len(s) == 2 else (max(1, s[0] // 4),) for s in SIZES] * 4
    cases = [(n, "98 tensors", SIZES) for n in names]
    cases.append(("adamw", f"{len(many)} tensors", many))
    for name, label, sizes in cases:
        with tempfile.TemporaryDirectory() as cache:
            cold = first_step(name, sizes, device, threads, cache)
            warm = first_step(name, sizes, device, threads, cache)
        rows.append({"name": name, "tensors": label, "cold": cold, "warm": warm})
        print(f"first step {name} ({label}): cold {cold:.1f} s, warm {warm:.1f} s", flush=True)
    return rows


def report(device, threads, rows, population, first) -> str:
    out = [f"# Optimizer step time ({machine(device, threads)})", "",
           "15.2 M parameters in 98 tensors, lr written by a schedule before every step; "
           "medians over rounds that alternate the contenders, (min–max).", ""]
    body = []
    adamw = None
    for r in rows:
        t = r["timings"]
        vs_twin = ratio(t["metaopt"], t["torch"]) if "torch" in t else "—"
        goal = ""
        if r["name"] in GOAL_VS_TWIN:
            goal = f"≤ {GOAL_VS_TWIN[r['name']]}× torch fused: " + (
                "met" if t["metaopt"].median <= GOAL_VS_TWIN[r["name"]] * t["torch"].median
                else "missed")
        elif r["name"] in GOAL_VS_ADAMW:
            goal = "≤ 1.5× fused AdamW: " + (
                "met" if t["metaopt"].median <= 1.5 * t["fused_adamw"].median else "missed")
        body.append([r["name"], r["backend"], t["metaopt"].ms(),
                     f"{t['torch'].ms()} ({r['twin']})" if "torch" in t else "—", vs_twin,
                     ratio(t["metaopt"], t["fused_adamw"]), goal])
        if r["name"] == "adamw":
            adamw = t["fused_adamw"]
    out.append(table(["optimizer", "metaopt backend", "metaopt ms", "torch same algorithm ms",
                      "metaopt / torch", "metaopt / torch fused AdamW", "goal"], body))
    if adamw is not None:
        out += ["", f"torch fused AdamW: {adamw.ms()} ms."]
    if population:
        t = population["timings"]
        out += ["", f"## Population: P = {P} AdamW members, 15.2 M elements in all", "",
                table(["contender", "ms per step", "ratio to the single model"],
                      [["single model (98 tensors)", t["single"].ms(), "1.00×"],
                       [f"population P = {P} ([P] lr from a cosine schedule)",
                        t["population"].ms(), ratio(t["population"], t["single"])]]),
                "", "Goal: ≤ 1.2× the single model's step: " +
                ("met" if t["population"].median <= 1.2 * t["single"].median else "missed")]
    if first:
        out += ["", "## First step (compiled backend), fresh process", "",
                table(["optimizer", "tensors", "cold cache s", "warm cache s"],
                      [[r["name"], r["tensors"], f"{r['cold']:.1f}", f"{r['warm']:.1f}"]
                       for r in first]),
                "", "Goals: ≤ 20 s cold, ≤ 3 s warm."]
    return "\n".join(out) + "\n"


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--only", nargs="*", default=None, help="optimizer names to run")
    p.add_argument("--skip-first-step", action="store_true")
    p.add_argument("--skip-population", action="store_true")
    args = p.parse_args()
    device = setup(args)
    # Muon is matmul-bound and runs its Newton-Schulz iteration in bfloat16 (as torch does);
    # bfloat16 matmuls on a CPU without bf16 units are ~50x slower than float32 ones, so one
    # step on this set takes minutes: measure it with --only muon on a GPU.
    default = [n for n in metaopt.optim.names() if n not in ("lstm", "muon")]
    names = args.only or (default + ["muon"] if device.type == "cuda" else default)
    rows = measure_steps(device, args.repeats, names)
    population = None if args.skip_population else measure_population(device, args.repeats)
    elementwise = [n for n in names if getattr(metaopt.optim.lookup(n), "elementwise", False)]
    first = [] if args.skip_first_step else measure_first_steps(device, args.threads,
                                                                 elementwise)
    text = report(device, args.threads, rows, population, first)
    print(text)
    write(args.out or RESULTS / f"optim_step_{device.type}.md", text)
    json_rows = [{"name": r["name"], **{k: v.samples for k, v in r["timings"].items()}}
                 for r in rows]
    (RESULTS / f"optim_step_{device.type}.json").write_text(json.dumps(json_rows, indent=1))


if __name__ == "__main__":
    main()
