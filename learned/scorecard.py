"""Summaries of held-out comparisons (:mod:`learned.compare`): table rows and loss curves.

The input is what ``benchmarks/learned_optimizer.py`` records per ``"problem@horizon"``: for every
optimizer the per-seed scores (log10 final loss) and the median loss curve, and for every
baseline the tuned learning rate with its validation scores. The best baseline is chosen by
*validation* score, never by the test seeds it is compared on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

BASELINES = ("sgd", "momentum", "rmsprop", "adam")


def best_baseline(entry: dict[str, Any]) -> str:
    """The baseline with the lowest validation score at its tuned learning rate."""
    def val(name: str) -> float:
        tuned = entry["tuned"][name]
        return tuned["val"][str(tuned["lr"])] if str(tuned["lr"]) in tuned["val"] \
            else tuned["val"][tuned["lr"]]
    return min(BASELINES, key=val)


def ratio(entry: dict[str, Any], other: str) -> float:
    """Median over seeds of the learned optimizer's final loss over ``other``'s."""
    a, b = (torch.tensor(entry["scores"][k], dtype=torch.float64) for k in ("lstm", other))
    return float(torch.pow(10.0, a - b).nanmedian())


def win_rate(entry: dict[str, Any], other: str) -> float:
    a, b = (torch.tensor(entry["scores"][k], dtype=torch.float64) for k in ("lstm", other))
    return float(((a < b) | (b.isnan() & ~a.isnan())).double().mean())


def median(entry: dict[str, Any], name: str) -> float:
    return float(torch.tensor(entry["scores"][name], dtype=torch.float64).nanmedian())


def diverged(entry: dict[str, Any], name: str = "lstm") -> int:
    return int(sum(entry.get("diverged", {}).get(name, [])))


def rows(data: dict[str, Any]) -> list[list[str]]:
    """One table row per problem and horizon."""
    out = []
    for key, entry in data.items():
        name, horizon = key.rsplit("@", 1)
        best = best_baseline(entry)
        cells = [name, horizon, f"**{median(entry, 'lstm'):.2f}**"]
        for base in BASELINES:
            cell = f"{median(entry, base):.2f} ({entry['tuned'][base]['lr']:.0e})"
            cells.append(f"*{cell}*" if base == best else cell)
        cells += [f"{ratio(entry, 'adam'):.2f}", f"{ratio(entry, best):.2f}",
                  f"{win_rate(entry, best):.0%}", str(diverged(entry))]
        out.append(cells)
    return out


def figure(data: dict[str, Any], horizon: int, path: Path) -> Path:
    """Median loss curves of every optimizer, one panel per problem (the paper's figures)."""
    from metaopt.plots import new_figure, save

    keys = [k for k in data if k.endswith(f"@{horizon}")]
    cols = min(4, len(keys))
    rows_n = -(-len(keys) // cols)
    fig = new_figure(3.6 * cols, 2.9 * rows_n)
    styles = {"lstm": ("black", "-", 2.0), "sgd": ("tab:gray", "--", 1.0),
              "momentum": ("tab:green", "--", 1.0), "rmsprop": ("tab:orange", "--", 1.0),
              "adam": ("tab:blue", "--", 1.2)}
    for i, key in enumerate(keys):
        ax = fig.add_subplot(rows_n, cols, i + 1)
        entry = data[key]
        for name, curve in entry["curves"].items():
            color, style, width = styles[name]
            label = "learned" if name == "lstm" else \
                f"{name} {entry['tuned'][name]['lr']:.0e}"
            ax.plot(range(len(curve)), curve, style, color=color, lw=width, label=label)
        ax.set_yscale("log")
        ax.set_xscale("log" if horizon > 100 else "linear")
        ax.set_title(key.rsplit("@", 1)[0], fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    fig.suptitle(f"Training loss, median over test seeds, T = {horizon} (tuned lr in legend)",
                 fontsize=10)
    return save(fig, path)
