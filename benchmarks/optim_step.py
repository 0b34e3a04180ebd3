"""Optimizer step time of the path users get: every optimizer's default constructor (backend
``auto``), each explicit backend beside it, torch's fastest implementation of the same
algorithm and torch's fused AdamW, measured in one process.

The parameter set of ../shared/BENCHMARKS.md: 15.2 M parameters in 98 tensors
(8 × 1024², 8 × 1024, 2 × 4096×512, 40 × 256², 40 × 256), randn parameters with a fixed randn
gradient, lr 1e-3 where the optimizer takes one (defaults otherwise). Per contender: fresh
parameters, construct (timed), a first ("cold") step timed on its own, warm-up to 4 steps,
then 12 timed steps, the contenders of one optimizer interleaved round by round (so drift on a
shared machine hits them alike): median, min–max, and ratios per round. Peak temporary memory
is measured over one steady step (CPU: torch.profiler's allocation events, the running sum's
peak; CUDA: ``max_memory_allocated`` above the step's start). The compiled backend compiles
with a fresh (cold) inductor cache unless TORCHINDUCTOR_CACHE_DIR is set.

Also a population of P = 64 members with the same 15.2 M elements in all (every tensor 64×
smaller per member, per-member lr), default constructors.

    python benchmarks/optim_step.py                        # CPU, 2 threads, everything
    python benchmarks/optim_step.py --only sgd adam --backends default eager
    python benchmarks/optim_step.py --merge --readme      # add to the saved rows; README table
    python benchmarks/optim_step.py --device cuda

Rows are saved to results/optim_step_<device>.json (``--merge`` keeps rows not measured in
this run, so a long measurement can be split into several runs); the Markdown table is always
written from every saved row; ``--readme`` rewrites the README's optimizer-speed table from the
default-constructor rows.
"""

from __future__ import annotations

import os
import sys

# scripts here import metaopt before their own folder's helpers: search the folder last
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]

import json  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402,F401
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="optim_step_inductor_")

import torch  # noqa: E402

import metaopt  # noqa: E402
from metaopt.optim import backends  # noqa: E402

sys.path.insert(0, HERE)  # the shared helpers (common.py), after metaopt
from common import RESULTS, machine, parser, setup, sync, table, write  # noqa: E402

README = RESULTS.parent.parent / "README.md"
SIZES = [(1024, 1024)] * 8 + [(1024,)] * 8 + [(4096, 512)] * 2 + [(256, 256)] * 40 + [(256,)] * 40
# one member of a P = 64 population: every tensor 64x smaller, 15.2 M elements in all
MEMBER_SIZES = ([(128, 128)] * 8 + [(16,)] * 8 + [(512, 64)] * 2 + [(32, 32)] * 40
                + [(4,)] * 40)
P = 64
LR = 1e-3
WARMUP, TIMED = 4, 12
O = torch.optim

# Benchmark rows: label -> (registry name, constructor kwargs)
ROWS: dict[str, tuple[str, dict]] = {
    "sgd": ("sgd", {}),
    "sgd momentum": ("sgd", {"momentum": 0.9}),
    "sgd nesterov": ("sgd", {"momentum": 0.9, "nesterov": True}),
}


def _torch(cls: str, **kw) -> Callable:
    return lambda ps: getattr(O, cls)(ps, lr=LR, **kw)


# torch's implementations of the same algorithm, by row label (the fastest is the twin)
TORCH_SAME: dict[str, dict[str, Callable]] = {
    "sgd": {"fused": _torch("SGD", fused=True), "foreach": _torch("SGD", foreach=True)},
    "sgd momentum": {"fused": _torch("SGD", momentum=0.9, fused=True),
                     "foreach": _torch("SGD", momentum=0.9, foreach=True)},
    "sgd nesterov": {"fused": _torch("SGD", momentum=0.9, nesterov=True, fused=True),
                     "foreach": _torch("SGD", momentum=0.9, nesterov=True, foreach=True)},
    "adagrad": {"fused": _torch("Adagrad", fused=True), "foreach": _torch("Adagrad", foreach=True)},
    "adam": {"fused": _torch("Adam", fused=True), "foreach": _torch("Adam", foreach=True)},
    "adamw": {"fused": _torch("AdamW", fused=True), "foreach": _torch("AdamW", foreach=True)},
    "rmsprop": {"foreach": _torch("RMSprop", foreach=True)},
    "adamax": {"foreach": _torch("Adamax", foreach=True)},
    "nadam": {"foreach": _torch("NAdam", foreach=True)},
    "radam": {"foreach": _torch("RAdam", foreach=True)},
    "adadelta": {"foreach": _torch("Adadelta", foreach=True)},
    "adafactor": {"foreach": _torch("Adafactor", foreach=True)},
}
GOAL_VS_TWIN = {n: 1.2 for n in ("sgd", "sgd momentum", "sgd nesterov", "adagrad", "rmsprop",
                                 "adam", "adamw", "adamax", "nadam", "radam", "adadelta")}
GOAL_VS_ADAMW = {"adabound": 1.5, "lion": 1.5, "lamb": 1.7}


def make_params(sizes, device, population: int | None = None) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    lead = (population,) if population else ()
    params = []
    for shape in sizes:
        p = torch.randn(*lead, *shape, generator=g).to(device).requires_grad_()
        p.grad = torch.randn(*lead, *shape, generator=g).to(device)
        params.append(p)
    return params


def build_metaopt(name: str, params, backend: str | None, population: int | None = None,
                  **kwargs):
    """The default constructor (``backend=None``) or an explicit backend; lr 1e-3 (a [P] lr
    for a population); Muon on its 2-d parameters beside AdamW."""
    kwargs = dict(kwargs)
    if "lr" in metaopt.optim.hyperparameters(name if name != "lookahead" else "lookahead"):
        kwargs["lr"] = (torch.logspace(-4, -2, population).tolist() if population else LR)
    if backend is not None:
        kwargs["backend"] = backend
    if population:
        kwargs["population"] = population
    if name == "muon":
        two_d = 2 + bool(population)
        groups = [{"params": [p for p in params if p.dim() == two_d], "optimizer": "muon"},
                  {"params": [p for p in params if p.dim() != two_d], "optimizer": "adamw"}]
        return metaopt.optim.Composite(groups, population=population)
    opt = metaopt.optim.create(name, params, **kwargs)
    if hasattr(opt, "train") and metaopt.optim.registry.schedule_free(name):
        opt.train()
    return opt


def peak_temporary_bytes(step: Callable[[], None], device: torch.device) -> tuple[int, int]:
    """(peak of memory allocated during ``step`` above its start, largest single allocation)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base, -1
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    current = peak = largest = 0
    for _, nbytes in events:
        current += nbytes
        peak, largest = max(peak, current), max(largest, nbytes)
    return peak, largest


class Contender:
    def __init__(self, label: str, make: Callable[[], Callable[[], None]],
                 device: torch.device) -> None:
        self.label, self.device = label, device
        sync(device)
        start = time.perf_counter()
        self.step = make()
        sync(device)
        self.construct_s = time.perf_counter() - start
        self.warmup: list[float] = []
        self.times: list[float] = []

    def timed(self) -> float:
        sync(self.device)
        start = time.perf_counter()
        self.step()
        sync(self.device)
        return time.perf_counter() - start


def measure(contenders: list[Contender]) -> None:
    """Cold step and warm-up of each in turn, then TIMED rounds alternating the contenders."""
    for c in contenders:
        c.warmup = [c.timed() for _ in range(WARMUP)]
    for _ in range(TIMED):
        for c in contenders:
            c.times.append(c.timed())
    for c in contenders:
        c.peak, c.largest = peak_temporary_bytes(c.step, c.device)


def summary(c: Contender) -> dict:
    return {"label": c.label, "construct_s": c.construct_s, "first_s": c.warmup[0],
            "warmup_s": c.warmup, "times_s": c.times, "median_s": statistics.median(c.times),
            "later_max_s": max(c.warmup[1:] + c.times), "peak_bytes": c.peak,
            "largest_alloc_bytes": c.largest}


def stepper(opt) -> Callable[[], None]:
    return opt.step


def run_row(label: str, name: str, kwargs: dict, device, backend_list: list[str],
            population: int | None) -> dict:
    sizes = MEMBER_SIZES if population else SIZES
    cls = metaopt.optim.lookup(name)
    flat = getattr(cls, "flat_ok", False)
    contenders = []
    for backend in backend_list:
        if backend != "default" and not flat:
            continue
        b = None if backend == "default" else backend
        contenders.append(Contender(
            f"metaopt {backend}",
            lambda b=b: stepper(build_metaopt(name, make_params(sizes, device, population), b,
                                              population, **kwargs)), device))
    if not contenders:
        return {}
    twins = TORCH_SAME.get(label, {}) if name != "muon" else {}
    for impl, make in twins.items():
        try:  # torch's fused Adagrad is CPU-only
            contenders.append(Contender(f"torch {impl}",
                                        lambda m=make: stepper(m(make_params(SIZES, device))),
                                        device))
        except (RuntimeError, ValueError) as err:
            print(f"{label}: torch {impl} unavailable here ({str(err).splitlines()[0]})")
    contenders.append(Contender("torch fused AdamW", lambda: stepper(
        O.AdamW(make_params(SIZES, device), lr=LR, fused=device.type in ("cpu", "cuda"))),
        device))
    measure(contenders)
    out = {"label": label, "name": name, "kwargs": kwargs, "population": population,
           "backends": [c.label.removeprefix("metaopt ") for c in contenders
                        if c.label.startswith("metaopt")],
           "numel": sum(torch.Size(s).numel() for s in sizes) * (population or 1),
           "contenders": [summary(c) for c in contenders]}
    print(f"{label}{' P=' + str(population) if population else ''}: " + "  ".join(
        f"{c.label} {statistics.median(c.times) * 1e3:.1f} ms (first {c.warmup[0] * 1e3:.0f})"
        for c in contenders), flush=True)
    del contenders
    return out


# -- report ------------------------------------------------------------------------------
def _ms(x: float) -> str:
    return f"{x * 1e3:.1f}"


def _range(c: dict) -> str:
    return f"{_ms(c['median_s'])} ({_ms(min(c['times_s']))}–{_ms(max(c['times_s']))})"


def _ratio(a: dict, b: dict) -> str:
    rounds = [x / y for x, y in zip(a["times_s"], b["times_s"])]
    return f"{a['median_s'] / b['median_s']:.2f}× ({min(rounds):.2f}–{max(rounds):.2f})"


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f}"


def fastest_twin(row: dict) -> dict | None:
    twins = [c for c in row["contenders"]
             if c["label"].startswith("torch ") and c["label"] != "torch fused AdamW"]
    return min(twins, key=lambda c: c["median_s"]) if twins else None


def by_label(row: dict, label: str) -> dict | None:
    return next((c for c in row["contenders"] if c["label"] == label), None)


SCALAR_SLACK = 64  # bytes: 0-d operands (``step.add_(1)`` wraps a scalar), not temporaries


def goals(row: dict, c: dict, twin: dict | None, adamw: dict) -> list[str]:
    """The issue's goals for the default path: steady ratio, first step, later steps, memory."""
    out = []
    label, bound = row["label"], backends.temporary_bound(row["numel"]) * 4  # float32 bytes
    if label in GOAL_VS_TWIN and twin is not None:
        r = c["median_s"] / twin["median_s"]
        out.append(f"≤{GOAL_VS_TWIN[label]}× torch: " + ("met" if r <= GOAL_VS_TWIN[label]
                                                       else "**missed**"))
    if label in GOAL_VS_ADAMW:
        r = c["median_s"] / adamw["median_s"]
        out.append(f"≤{GOAL_VS_ADAMW[label]}× AdamW: " + ("met" if r <= GOAL_VS_ADAMW[label]
                                                        else "**missed**"))
    peer = twin or adamw
    first_ok = c["first_s"] <= 3 * peer["first_s"]
    later_ok = c["later_max_s"] <= 3 * peer["median_s"]
    out.append("first ≤3×: " + ("met" if first_ok else "**missed**"))
    out.append("later ≤3×: " + ("met" if later_ok else "**missed**"))
    limit = (twin["peak_bytes"] if twin is not None else bound) + SCALAR_SLACK
    out.append("memory: " + ("met" if c["peak_bytes"] <= limit else "**missed**"))
    return out


def report(device, threads: int, rows: list[dict]) -> str:
    out = [f"# Optimizer step time ({machine(device, threads)})", "",
           "15.2 M parameters in 98 tensors (a P = 64 population: the same 15.2 M elements in "
           "all), fixed gradients, lr 1e-3. Per contender: construct, first (cold) step, 3 more "
           "warm-up steps, then 12 steps interleaved with the other contenders of its row: "
           "median (min–max); ratios are of medians, (min–max) of per-round ratios. *Peak temp* "
           "is the peak of memory allocated during one steady step above its start (torch "
           "profiler's allocation events); *torch's fastest* is the faster of torch's fused and "
           "foreach implementations of the same algorithm. Goals (default path): steady "
           "≤ 1.2× torch's fastest (AdaBound, Lion ≤ 1.5×, LAMB ≤ 1.7× fused AdamW), first "
           "step ≤ 3× torch's first step, no later step > 3× torch's steady median, peak temp "
           "≤ torch's (optimizers torch lacks: ≤ max(2¹⁸, N/16) elements), up to "
           f"{SCALAR_SLACK} bytes of 0-d bookkeeping (a step counter's scalar operand).", ""]
    for population in (None, P):
        part = [r for r in rows if r["population"] == population]
        if not part:
            continue
        if population:
            out += ["", f"## Population: P = {population} members (per-member lr), "
                    "15.2 M elements in all; torch columns: the single 15.2 M model", ""]
        body = []
        shown = set()
        for r in part:
            twin, adamw = fastest_twin(r), by_label(r, "torch fused AdamW")
            for c in r["contenders"]:
                if not c["label"].startswith("metaopt"):
                    continue
                default = c["label"] == "metaopt default"
                body.append([
                    "" if r["label"] in shown else r["label"], c["label"].removeprefix("metaopt "),
                    f"{c['construct_s'] * 1e3:.0f}", f"{c['first_s'] * 1e3:.0f}",
                    _range(c), f"{_ms(c['later_max_s'])}",
                    f"{_ratio(c, twin)} {twin['label'].removeprefix('torch ')}" if twin else "—",
                    _ratio(c, adamw), _mb(c["peak_bytes"]),
                    _mb(twin["peak_bytes"]) if twin else "—",
                    "; ".join(goals(r, c, twin, adamw)) if default and not population else ""])
                shown.add(r["label"])
            if twin is not None:
                body.append(["", f"torch {twin['label'].removeprefix('torch ')}",
                             f"{twin['construct_s'] * 1e3:.0f}", f"{twin['first_s'] * 1e3:.0f}",
                             _range(twin), _ms(twin["later_max_s"]), "1.00×",
                             _ratio(twin, adamw), _mb(twin["peak_bytes"]), "", ""])
        out.append(table(["optimizer", "path", "construct ms", "first step ms",
                          "steady ms", "worst later step ms", "vs torch's fastest",
                          "vs torch fused AdamW", "peak temp MB", "torch's peak temp MB",
                          "goals"], body))
        adamws = [by_label(r, "torch fused AdamW") for r in part]
        med = statistics.median(a["median_s"] for a in adamws)
        out += ["", f"torch fused AdamW (single 15.2 M model), median over rows: {_ms(med)} ms."]
    return "\n".join(out) + "\n"


README_BEGIN, README_END = "<!-- optim_step table: begin -->", "<!-- optim_step table: end -->"


def readme_table(rows: list[dict]) -> str:
    """The README's table: the default constructor of every optimizer, single model and
    P = 64 population."""
    body = []
    for r in rows:
        c = by_label(r, "metaopt default")
        if c is None:
            continue
        twin, adamw = fastest_twin(r), by_label(r, "torch fused AdamW")
        name = r["label"] + (f" (P = {r['population']})" if r["population"] else "")
        body.append([name, _ms(c["median_s"]),
                     (f"{c['median_s'] / twin['median_s']:.2f}× "
                      f"{twin['label'].removeprefix('torch ')}") if twin else "—",
                     f"{c['median_s'] / adamw['median_s']:.2f}×",
                     f"{c['first_s'] * 1e3:.0f} / {twin['first_s'] * 1e3:.0f}" if twin
                     else f"{c['first_s'] * 1e3:.0f} / —",
                     f"{_mb(c['peak_bytes'])} / {_mb(twin['peak_bytes'])}" if twin
                     else f"{_mb(c['peak_bytes'])} / —",
                     "" if r["population"] else "; ".join(
                         g for g in goals(r, c, twin, adamw) if g.startswith("≤"))])
    return table(["optimizer (default constructor)", "steady ms", "vs torch's fastest",
                  "vs torch fused AdamW", "first step ms (ours / torch)",
                  "peak temp MB (ours / torch)", "goal"], body)


def update_readme(rows: list[dict]) -> None:
    text = README.read_text()
    pattern = re.compile(re.escape(README_BEGIN) + ".*?" + re.escape(README_END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"README.md has no {README_BEGIN} ... {README_END} markers")
    text = pattern.sub(lambda _: f"{README_BEGIN}\n{readme_table(rows)}\n{README_END}", text)
    README.write_text(text)
    print(f"updated {README}")


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--only", nargs="*", default=None, help="row labels or registry names")
    p.add_argument("--backends", nargs="*", default=["default", "reference", "eager",
                                                     "compiled"])
    p.add_argument("--population", choices=["both", "no", "only"], default="both")
    p.add_argument("--merge", action="store_true", help="keep saved rows not measured now")
    p.add_argument("--readme", action="store_true", help="rewrite the README table")
    p.add_argument("--report-only", action="store_true",
                   help="measure nothing: the table (and --readme) from the saved rows")
    args = p.parse_args()
    device = setup(args)
    path = RESULTS / f"optim_step_{device.type}.json"
    if args.report_only:
        rows = json.loads(path.read_text())
        write(args.out or RESULTS / f"optim_step_{device.type}.md",
              report(device, args.threads, rows))
        if args.readme:
            update_readme([r for r in rows if by_label(r, "metaopt default")])
        return
    torch.manual_seed(0)
    # Muon is matmul-bound and runs Newton-Schulz in bfloat16 (as torch does): minutes per
    # step on a CPU without bf16 units, so only on a GPU. The learned optimizer: benchmarks/
    # learned_optimizer.py.
    names = [n for n in metaopt.optim.names() if n not in ("lstm", "sgd")
             and (n != "muon" or device.type == "cuda")]
    labels = {**ROWS, **{n: (n, {}) for n in names}}
    if args.only:
        labels = {k: v for k, v in labels.items() if k in args.only or v[0] in args.only}
    populations = {"both": [None, P], "no": [None], "only": [P]}[args.population]
    rows = []
    for population in populations:
        for label, (name, kwargs) in labels.items():
            if population and not getattr(metaopt.optim.lookup(name), "flat_ok", False):
                continue
            cls = metaopt.optim.lookup(name)
            if getattr(cls, "needs_closure", False) or getattr(cls, "needs_model", False):
                continue  # second-order rules: not a fixed-gradient step
            backend_list = args.backends if not population else ["default"]
            try:
                row = run_row(label, name, kwargs, device, backend_list, population)
            except Exception as err:  # noqa: BLE001 -- one line, then the next optimizer
                print(f"{label}: {type(err).__name__}: {str(err).splitlines()[0][:200]}")
                continue
            if row:
                rows.append(row)
    if args.merge and path.exists():
        rows = _merge(json.loads(path.read_text()), rows)
    path.write_text(json.dumps(rows, indent=1))
    text = report(device, args.threads, rows)
    print(text)
    write(args.out or RESULTS / f"optim_step_{device.type}.md", text)
    if args.readme:
        update_readme([r for r in rows if by_label(r, "metaopt default")])


def _key(row: dict) -> tuple:
    return row["label"], row["population"], tuple(row["backends"])


def _merge(saved: list[dict], new: list[dict]) -> list[dict]:
    """Saved runs not measured again, and the new ones, in the order rows are defined (single
    model first; within a row, the run with the default constructor first). Each run keeps
    its own torch contenders: ratios are always within one run."""
    measured = {_key(r) for r in new}
    rows = [r for r in saved if isinstance(r, dict) and "contenders" in r
            and _key(r) not in measured] + new
    order = list(ROWS) + sorted(metaopt.optim.names())
    return sorted(rows, key=lambda r: (r["population"] is not None,
                                       order.index(r["label"]) if r["label"] in order else 99,
                                       "default" not in r["backends"]))


if __name__ == "__main__":
    main()
