"""Run directories and ``summary.json``: where every command leaves its results.

``runs/<name>/`` (or ``--out DIR``) holds the command's state, figures, ``report.md`` and
``summary.json`` with at least ``command``, ``task``, ``best`` (``optimizer``, ``hparams``,
``schedule``, ``value``), ``evaluations`` (gradient evaluations) and ``wall_seconds`` (from the
command's start to the summary being written). Files are written atomically (temp + rename).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SUMMARY = "summary.json"


def run_dir(name: str, out: str | Path | None = None) -> Path:
    """The run's directory (created): ``out`` if given, else ``runs/<name>``."""
    path = Path(out) if out is not None else Path("runs") / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_atomic(path: str | Path, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def plain(value: Any) -> Any:
    """JSON-ready: tensors and numpy scalars to numbers, tuples to lists, NaN to null."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: str | Path, data: Any) -> Path:
    return write_atomic(path, json.dumps(plain(data), indent=2) + "\n")


def write_summary(directory: str | Path, *, command: str, task: str, optimizer: str,
                  hparams: Mapping[str, Any], schedule: Any, value: float, evaluations: int,
                  started: float, **extra: Any) -> Path:
    """Write ``summary.json``; ``started`` is the command's ``time.time()`` at start."""
    summary = {
        "command": command,
        "task": task,
        "best": {"optimizer": optimizer, "hparams": dict(hparams), "schedule": schedule,
                 "value": value},
        "evaluations": int(evaluations),
        **extra,
        "wall_seconds": time.time() - started,
    }
    return write_json(Path(directory) / SUMMARY, summary)


def read_summary(directory: str | Path) -> dict[str, Any]:
    return json.loads((Path(directory) / SUMMARY).read_text())
