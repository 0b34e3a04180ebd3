"""``metaopt report RUN_DIR``: (re)render a run's figures and report.md."""

from __future__ import annotations

import argparse
from pathlib import Path

from metaopt.experiment import ExperimentError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a run directory holding summary.json")


def run(args: argparse.Namespace) -> int:
    from metaopt.report import render

    if not (Path(args.run_dir) / "summary.json").exists():
        raise ExperimentError(args.run_dir, "summary.json", "a run directory written by a "
                              "metaopt command")
    print(f"wrote {render(args.run_dir)}")
    return 0
