"""Shared benchmark helpers: timing with medians and ranges, Markdown tables, devices."""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--repeats", type=int, default=7, help="timed repeats (median, min-max)")
    p.add_argument("--out", default=None, help="Markdown file to write")
    return p


def setup(args: argparse.Namespace) -> torch.device:
    torch.set_flush_denormal(True)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    return device


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Timing:
    """Seconds per call: the median and range over repeats."""

    def __init__(self, samples: Sequence[float]) -> None:
        self.samples = list(samples)
        self.median = statistics.median(self.samples)
        self.min, self.max = min(self.samples), max(self.samples)

    def ms(self) -> str:
        return f"{self.median * 1e3:.1f} ({self.min * 1e3:.1f}–{self.max * 1e3:.1f})"

    def s(self) -> str:
        return f"{self.median:.2f} ({self.min:.2f}–{self.max:.2f})"


def interleaved(contenders: dict[str, Callable[[], None]], repeats: int, calls: int,
                device: torch.device) -> dict[str, Timing]:
    """Time each contender ``repeats`` times, ``calls`` calls per sample, alternating between
    contenders in every round so drift on a shared machine hits them alike."""
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            sync(device)
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            sync(device)
            samples[name].append((time.perf_counter() - start) / calls)
    return {name: Timing(s) for name, s in samples.items()}


def ratio(a: Timing, b: Timing) -> str:
    """a / b by medians, with the range of per-round ratios."""
    per_round = [x / y for x, y in zip(a.samples, b.samples)]
    return (f"{a.median / b.median:.2f}× ({min(per_round):.2f}–{max(per_round):.2f})")


def machine(device: torch.device, threads: int) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return (f"CPU ({platform.machine()}, {threads} threads), torch {torch.__version__}, "
            f"flush_denormal on")


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines)


def write(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f"wrote {path}")
