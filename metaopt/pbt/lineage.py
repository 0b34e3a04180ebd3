"""A PBT run's lineage: who copied whom at each interval, with what hyperparameters, and the
schedule it discovered (Jaderberg et al. 2017, section 4: the hyperparameter schedules and
the family trees PBT leaves behind).

The population has ``P`` slots. Interval ``j`` covers the steps ``[start, end)``; in it slot
``i`` trains with ``hparams[i]`` from the weights slot ``parents[i]`` had at the end of
interval ``j - 1`` (itself when not exploited; ``None`` in interval 0: its own
initialisation), and ends with validation loss ``values[i]`` (``nan``: diverged). Walking the
parents back from a final member gives its ancestry; the hyperparameters along it are the
member's discovered schedule, which :func:`discovered` writes as ``piecewise`` schedules
(:mod:`metaopt.schedules`) that ``metaopt train`` replays on one model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metaopt.pbt.space import MemberSpace
from metaopt.search.params import Categorical


@dataclass
class Interval:
    start: int
    end: int
    hparams: list[dict[str, Any]]
    parents: list[int | None]
    values: list[float] = field(default_factory=list)  # filled when the interval ends

    def as_dict(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "hparams": [dict(h) for h in self.hparams],
                "parents": list(self.parents), "values": list(self.values)}


@dataclass
class Lineage:
    """Every interval of a run, in order (see the module docstring)."""

    members: int
    intervals: list[Interval] = field(default_factory=list)

    def open(self, start: int, end: int, hparams: Sequence[Mapping[str, Any]],
             parents: Sequence[int | None]) -> None:
        """Begin an interval; ``parents[i]`` is whose weights slot ``i`` starts from."""
        if self.intervals and not self.intervals[-1].values:
            raise ValueError("the previous interval has not ended")
        if len(hparams) != self.members or len(parents) != self.members:
            raise ValueError(f"an interval needs one entry per member ({self.members})")
        self.intervals.append(Interval(start, end, [dict(h) for h in hparams], list(parents)))

    def close(self, values: Sequence[float]) -> None:
        """End the current interval with each member's validation loss."""
        self.intervals[-1].values = [float(v) for v in values]

    def ancestry(self, member: int) -> list[int]:
        """The slot ``member``'s weights were in during each interval, first to last."""
        path = [member]
        for interval in reversed(self.intervals[1:]):
            parent = interval.parents[path[-1]]
            path.append(path[-1] if parent is None else parent)
        return path[::-1]

    def check(self) -> None:
        """ValueError unless every parent was a member that finished the interval before
        with a finite loss no worse than the copier's (what exploit guarantees)."""
        for j, interval in enumerate(self.intervals):
            for i, parent in enumerate(interval.parents):
                if j == 0:
                    if parent is not None:
                        raise ValueError(f"interval 0: member {i} has parent {parent}")
                    continue
                before = self.intervals[j - 1]
                if parent is None or not 0 <= parent < self.members:
                    raise ValueError(f"interval {j}: member {i} has parent {parent!r}")
                if parent != i:
                    theirs, mine = before.values[parent], before.values[i]
                    if not math.isfinite(theirs) or (math.isfinite(mine) and theirs > mine):
                        raise ValueError(f"interval {j}: member {i} ({mine}) copied member "
                                         f"{parent} ({theirs})")

    def as_dict(self) -> dict[str, Any]:
        return {"members": self.members, "intervals": [iv.as_dict() for iv in self.intervals]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Lineage:
        out = cls(int(data["members"]))
        for iv in data["intervals"]:
            values = [math.nan if v is None else float(v) for v in iv["values"]]
            out.intervals.append(Interval(int(iv["start"]), int(iv["end"]),
                                          [dict(h) for h in iv["hparams"]],
                                          [None if p is None else int(p) for p in iv["parents"]],
                                          values))
        return out


# -- the discovered schedule --------------------------------------------------------------------
def piecewise(segments: Sequence[tuple[int, Any]]) -> dict[str, Any]:
    """``[(start step, value), ...]`` (in order, the first at 0) as a ``piecewise`` spec, equal
    consecutive values merged."""
    values, milestones = [segments[0][1]], []
    for start, value in segments[1:]:
        if value != values[-1]:
            values.append(value)
            milestones.append(int(start))
    return {"name": "piecewise", "values": values, "milestones": milestones}


def discovered(lineage: Lineage, member: int, space: MemberSpace, steps: int
               ) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Member ``member``'s hyperparameters and schedule along its ancestry, for
    ``metaopt.train``: ``(hparams, schedule)``, where ``hparams`` are the constructor keywords
    (options, fixed values, values that never changed, starting values) and ``schedule`` maps
    each value that changed (and lr, when a schedule drove it) to a ``piecewise`` spec, or is
    None when nothing changed."""
    path = lineage.ancestry(member)
    along = [(iv.start, iv.hparams[slot]) for iv, slot in zip(lineage.intervals, path)]
    hparams = space.optimizer_hparams(along[0][1])
    schedule: dict[str, Any] = {}
    for name in space.tensor_hparams(along[0][1]):
        spec = piecewise([(start, h[name]) for start, h in along])
        if len(spec["values"]) > 1:
            schedule[name] = spec
    if space.schedule is not None:  # lr is what the schedule made of each member's values
        schedule.pop("lr", None)
        realized = []
        for iv, slot in zip(lineage.intervals, path):
            s = space.schedule_of(iv.hparams[slot], steps)
            realized += [(k, float(s(k))) for k in range(iv.start, iv.end)]
        spec = piecewise(realized)
        if len(spec["values"]) > 1:
            schedule["lr"] = spec
        else:
            hparams["lr"] = spec["values"][0]
    return hparams, schedule or None


# -- figures --------------------------------------------------------------------------------------
def plot_lineage(lineage: Lineage, best: int | None, path: str | Path) -> Path:
    """The family tree: a dot per member and interval end (coloured by validation loss, a cross
    when diverged), a line from each parent; the best member's ancestry in red."""
    from matplotlib import cm, colors
    from matplotlib.collections import LineCollection

    from metaopt import plots

    fig = plots.new_figure(8, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    points = [(iv.end, i, v) for iv in lineage.intervals for i, v in enumerate(iv.values)]
    finite = [p for p in points if math.isfinite(p[2])]
    lo, hi = (min(p[2] for p in finite), max(p[2] for p in finite)) if finite else (0.0, 1.0)
    norm = colors.LogNorm(lo, hi) if lo > 0 and hi > 10 * lo else colors.Normalize(
        lo, hi if hi > lo else lo + 1.0)
    cmap = cm.viridis
    kept, copied = [], []
    for before, iv in zip(lineage.intervals, lineage.intervals[1:]):
        for i, parent in enumerate(iv.parents):
            if parent is not None:
                (kept if parent == i else copied).append([(before.end, parent), (iv.end, i)])
    ax.add_collection(LineCollection(kept, colors="0.6", linewidths=0.6, alpha=0.7, zorder=1))
    ax.add_collection(LineCollection(copied, colors="C0", linewidths=1.0, alpha=0.8, zorder=1))
    if finite:
        ax.scatter([p[0] for p in finite], [p[1] for p in finite], s=14, zorder=2, cmap=cmap,
                   c=[p[2] for p in finite], norm=norm)
    lost = [p for p in points if not math.isfinite(p[2])]
    if lost:
        ax.scatter([p[0] for p in lost], [p[1] for p in lost], marker="x", color="C3", s=18,
                   zorder=2, label="diverged")
    ax.autoscale_view()
    if best is not None and lineage.intervals:
        slots = lineage.ancestry(best)
        ax.plot([iv.end for iv in lineage.intervals], slots, color="C3", lw=2, zorder=3,
                label=f"ancestry of the best member ({best})")
        ax.legend(fontsize="small", loc="upper left")
    fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("member")
    ax.set_title("PBT lineage: exploit copies (blue), kept weights (grey)")
    return plots.save(fig, path)


def plot_trajectories(lineage: Lineage, best: int | None, space: MemberSpace,
                      path: str | Path, limit: int = 8) -> Path:
    """Each searched hyperparameter of every member over the run (thin lines, one per slot:
    jumps are exploits and explores), the best member's ancestry in black."""
    from metaopt import plots

    names = space.searched[:limit] or list(space.params)[:1]
    cols = min(2, max(1, len(names)))
    rows = max(1, -(-len(names) // cols))
    fig = plots.new_figure(5 * cols, 3 * rows)
    ancestry = lineage.ancestry(best) if best is not None and lineage.intervals else None
    for n, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, n + 1)
        p = space.params.get(name)
        code = _encoder(p)
        for i in range(lineage.members):
            xs, ys = _steps([(iv.start, iv.end, iv.hparams[i].get(name))
                             for iv in lineage.intervals], code)
            ax.plot(xs, ys, lw=0.7, alpha=0.5)
        if ancestry is not None:
            xs, ys = _steps([(iv.start, iv.end, iv.hparams[s].get(name))
                             for iv, s in zip(lineage.intervals, ancestry)], code)
            ax.plot(xs, ys, color="k", lw=2, label="best member's ancestry")
            if n == 0:
                ax.legend(fontsize="small")
        if getattr(p, "log", False):
            ax.set_yscale("log")
        if isinstance(p, Categorical):
            ax.set_yticks(range(len(p.choices)), [str(c) for c in p.choices])
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
    return plots.save(fig, path)


def _encoder(p: Any) -> Any:
    if isinstance(p, Categorical):
        return lambda v: p.choices.index(v) if v in p.choices else math.nan
    return lambda v: math.nan if v is None or isinstance(v, (bool, str)) else float(v)


def _steps(segments: Sequence[tuple[int, int, Any]], code: Any) -> tuple[list, list]:
    xs, ys = [], []
    for start, end, value in segments:
        xs += [start, end]
        ys += [code(value)] * 2
    return xs, ys
