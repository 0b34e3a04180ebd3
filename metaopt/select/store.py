"""The results store: what selection learnt on earlier tasks, to warm-start the next one.

One JSON record per task in ``experiments/results/<task>.json`` (appendable: a new task adds a
file, a rebuilt one replaces its own): the task's meta-features
(:mod:`metaopt.select.features`) and each candidate's outcome (its learning rate, validation
loss, the halving round it reached and its rank), plus the hash of the learned optimizer's
checkpoint the record was built with. A record built with another checkpoint is *stale*: its
``lstm`` outcome says nothing about today's network, so it is left out of warm starts until
``metaopt select --rebuild-store`` rebuilds it.

A warm start (:func:`warm_start`) finds the ``k`` records nearest in meta-features (Euclidean
over the features both have, each feature scaled by its spread over the store), orders the
candidates by their mean rank there and centres each one's learning-rate probes on the
geometric mean of the learning rates that worked there (both weighted by inverse distance).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metaopt import runs
from metaopt.select import features as meta

FOLDER = Path(__file__).resolve().parents[2] / "experiments" / "results"
NEAREST = 2


@dataclass
class Record:
    task: str
    features: dict[str, float]
    candidates: dict[str, dict[str, Any]]  # name -> {lr, value, rung, rank, status}
    learned_checkpoint: str | None = None
    stale: bool = False

    def as_json(self) -> dict[str, Any]:
        return {"task": self.task, "features": self.features, "candidates": self.candidates,
                "learned_checkpoint": self.learned_checkpoint}


@dataclass
class WarmStart:
    order: list[str]
    lrs: dict[str, float] = field(default_factory=dict)
    sources: list[tuple[str, float]] = field(default_factory=list)  # (task, distance)


def learned_hash() -> str | None:
    """The first 16 hex digits of the shipped learned-optimizer checkpoint's SHA-256."""
    try:
        from learned import nets
    except ImportError:
        return None
    path = Path(nets.DEFAULT_CHECKPOINT)
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.exists() else None


def load(folder: str | Path | None = None, exclude: tuple[str, ...] = ()) -> list[Record]:
    """Every record in ``folder`` (default: the shipped store) except the ``exclude``d tasks;
    stale records (another learned checkpoint) lose their ``lstm`` outcome."""
    folder = Path(folder) if folder is not None else FOLDER
    current = learned_hash()
    out = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        raw = json.loads(path.read_text())
        if raw.get("task") in exclude:
            continue
        record = Record(raw["task"], {k: _float(v) for k, v in raw["features"].items()},
                        dict(raw["candidates"]), raw.get("learned_checkpoint"))
        if record.learned_checkpoint != current:
            record.stale = True
            record.candidates.pop("lstm", None)
        out.append(record)
    return out


def stale(folder: str | Path | None = None) -> list[str]:
    """Tasks whose record was built with another learned checkpoint."""
    return [r.task for r in load(folder) if r.stale]


def write(record: Record, folder: str | Path | None = None) -> Path:
    folder = Path(folder) if folder is not None else FOLDER
    return runs.write_json(folder / f"{record.task}.json", record.as_json())


def record_of(task: str, features: dict[str, float], selection: Any) -> Record:
    """A store record from a finished selection's ranking."""
    outcomes = {}
    for rank, entry in enumerate(selection.ranking, start=1):
        outcomes[entry.candidate] = {"lr": entry.hparams.get("lr"), "value": entry.value,
                                     "rung": entry.rung, "rank": rank,
                                     "status": entry.status}
    return Record(task, dict(features), outcomes, learned_hash())


def _float(v: Any) -> float:
    return math.nan if v is None else float(v)


def distances(features: dict[str, float], records: list[Record]) -> list[tuple[Record, float]]:
    """Each record with its distance to ``features``, nearest first."""
    names = meta.NAMES
    spread = {}
    for n in names:
        values = [r.features.get(n, math.nan) for r in records] + [features.get(n, math.nan)]
        finite = [v for v in values if math.isfinite(v)]
        mean = sum(finite) / len(finite) if finite else 0.0
        var = sum((v - mean) ** 2 for v in finite) / len(finite) if finite else 0.0
        spread[n] = math.sqrt(var) or 1.0
    out = []
    for r in records:
        terms = [((features.get(n, math.nan) - r.features.get(n, math.nan)) / spread[n]) ** 2
                 for n in names]
        terms = [t for t in terms if math.isfinite(t)]
        out.append((r, math.sqrt(sum(terms) / len(terms)) if terms else math.inf))
    return sorted(out, key=lambda rd: rd[1])


def warm_start(features: dict[str, float], candidates: list[str], records: list[Record],
               k: int = NEAREST) -> WarmStart | None:
    """Candidate order and learning-rate centres from the ``k`` nearest records (None when
    the store has no record that ranks any of ``candidates``)."""
    near = [(r, d) for r, d in distances(features, records)
            if any(c in r.candidates for c in candidates)][:k]
    if not near:
        return None
    score, lrs = {}, {}
    for c in candidates:
        ranks = [(_rank(r, c), _weight(d)) for r, d in near if c in r.candidates]
        score[c] = _weighted(ranks) if ranks else math.inf
        found = [(math.log(r.candidates[c]["lr"]), _weight(d)) for r, d in near
                 if c in r.candidates and r.candidates[c].get("status") == "ok"
                 and r.candidates[c].get("lr")]
        if found:
            lrs[c] = math.exp(_weighted(found))
    order = sorted(candidates, key=lambda c: (score[c], candidates.index(c)))
    return WarmStart(order, lrs, [(r.task, d) for r, d in near])


def _weight(distance: float) -> float:
    """Nearer records count more: inverse distance (plus a floor, so equal is not infinite)."""
    return 1.0 / (distance + 0.1)


def _weighted(pairs: list[tuple[float, float]]) -> float:
    return sum(v * w for v, w in pairs) / sum(w for _, w in pairs)


def _rank(record: Record, candidate: str) -> float:
    """The candidate's rank in ``record`` as a fraction (0 best, 1 worst; diverged 1)."""
    entry = record.candidates[candidate]
    if entry.get("status") != "ok":
        return 1.0
    return (int(entry["rank"]) - 1) / max(1, len(record.candidates) - 1)
