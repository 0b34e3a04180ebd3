"""``metaopt dashboard RUN_DIR``: serve a tune run's study in optuna-dashboard.

Opens the storage ``summary.json`` names (SQLite, journal file or an SQLAlchemy URL; see
:mod:`metaopt.search.storage`), prints the study's address and serves until interrupted. The
dashboard reads the storage live, so it can watch a study that ``metaopt tune`` is still
running. It listens on 127.0.0.1 unless ``--host`` says otherwise.
"""

from __future__ import annotations

import argparse
import errno
from pathlib import Path

from metaopt.experiment import ExperimentError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a run directory written by metaopt tune")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080)")


def run(args: argparse.Namespace) -> int:
    from metaopt.search.storage import run_storage

    if not 0 < args.port < 65536:
        raise ExperimentError("--port", "port", "a port number in 1..65535", args.port)
    storage, name = run_storage(Path(args.run_dir))
    study_id = storage.get_study_id_from_name(name)

    import optuna_dashboard

    print(f"metaopt dashboard: study {name!r} of {args.run_dir} at "
          f"http://{args.host}:{args.port}/dashboard/studies/{study_id} (Ctrl-C stops)",
          flush=True)
    try:
        optuna_dashboard.run_server(storage, host=args.host, port=args.port)
    except OSError as err:
        if err.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES):
            raise ExperimentError(f"{args.host}:{args.port}", "--host/--port", "an address "
                                  f"this machine can listen on ({err.strerror})") from None
        raise
    return 0
