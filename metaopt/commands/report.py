"""``metaopt report RUN_DIR``: (re)render a run's figures and report.md.

A tune run (``summary.json`` with ``command: tune``) is rendered from its Optuna study by
:func:`metaopt.search.report.write_report`, a select run from its ``selection.json`` by
:func:`metaopt.select.report.write_report`, a PBT run from its ``lineage.json`` by
:func:`metaopt.pbt.report.rewrite_report`; every other run by :func:`metaopt.report.render`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from metaopt.experiment import ExperimentError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a run directory holding summary.json")


def run(args: argparse.Namespace) -> int:
    from metaopt import runs
    from metaopt.report import render

    if not (Path(args.run_dir) / "summary.json").exists():
        raise ExperimentError(args.run_dir, "summary.json", "a run directory written by a "
                              "metaopt command")
    command = runs.read_summary(args.run_dir).get("command")
    if command == "pbt":
        from metaopt.pbt.report import rewrite_report

        print(f"wrote {rewrite_report(Path(args.run_dir))}")
        return 0
    if command in ("tune", "select"):
        from metaopt.search.report import write_report as tune_report
        from metaopt.select.report import write_report as select_report

        write_report = tune_report if command == "tune" else select_report
        print(f"wrote {write_report(Path(args.run_dir))}")
        return 0
    print(f"wrote {render(args.run_dir)}")
    return 0
