"""Where a ``metaopt tune`` study lives: its Optuna storage, named by one string.

The experiment's ``storage:`` (``spec``) is one of

- ``None`` (the default): SQLite, ``<run_dir>/study.db``, with a 60 s busy timeout so several
  worker processes writing at once wait for the lock instead of failing with "database is
  locked";
- ``"journal"``: Optuna's journal file, ``<run_dir>/study.journal`` (append-only, safe for
  several processes on one machine or a shared file system);
- ``"journal:<path>"``: a journal file elsewhere;
- any other string: an SQLAlchemy URL (``postgresql+psycopg2://user:pw@host/db``,
  ``sqlite:///path.db``).

:func:`storage_url` is the string ``summary.json`` records (``journal:<path>`` or the URL, file
paths made absolute); :func:`open_storage` of that string opens the same storage again, which
is what :func:`run_storage` and :func:`load_study` do for a finished run directory.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from metaopt.experiment import ExperimentError

SQLITE_FILE = "study.db"
JOURNAL_FILE = "study.journal"
JOURNAL = "journal"
BUSY_TIMEOUT = 60  # seconds an SQLite writer waits for another's lock


def _journal_path(spec: str, run_dir: Path) -> Path:
    """The journal file of ``"journal"`` or ``"journal:<path>"``, absolute."""
    rest = spec[len(JOURNAL) + 1:] if spec.startswith(JOURNAL + ":") else ""
    return (Path(rest) if rest else Path(run_dir) / JOURNAL_FILE).absolute()


def _is_journal(spec: str) -> bool:
    return spec == JOURNAL or spec.startswith(JOURNAL + ":")


def storage_url(spec: str | None, run_dir: Path) -> str:
    """The storage's name for ``summary.json``: ``sqlite:///<abs run_dir>/study.db``,
    ``journal:<abs path>`` or the SQLAlchemy URL as given."""
    if spec is None:
        return f"sqlite:///{(Path(run_dir) / SQLITE_FILE).absolute()}"
    if _is_journal(spec):
        return f"{JOURNAL}:{_journal_path(spec, run_dir)}"
    if "://" not in spec:
        raise ValueError(f"storage must be 'journal', 'journal:<path>' or an SQLAlchemy URL "
                         f"(sqlite:///file.db, postgresql+psycopg2://...), got {spec!r}")
    return spec


def open_storage(spec: str | None, run_dir: Path) -> BaseStorage:
    """The Optuna storage ``spec`` names (see the module docstring); creates the SQLite or
    journal file (and ``run_dir``) when absent. SQLite gets a 60 s busy timeout; no storage
    gets Optuna's heartbeat (metaopt's workers keep their own)."""
    url = storage_url(spec, run_dir)
    if _is_journal(url):
        path = _journal_path(url, run_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:"):
        if spec is None:
            Path(run_dir).mkdir(parents=True, exist_ok=True)
        return RDBStorage(url, engine_kwargs={"connect_args": {"timeout": BUSY_TIMEOUT}})
    return RDBStorage(url)


def _local_file(url: str) -> Path | None:
    """The file behind an SQLite or journal URL (None for a server URL)."""
    if _is_journal(url):
        return Path(url[len(JOURNAL) + 1:])
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///"):])
    return None


def _summary(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        raise ExperimentError(run_dir / "summary.json", "summary.json", "a readable JSON "
                              "summary written by metaopt tune", str(err)) from None


def run_storage(run_dir: str | Path) -> tuple[BaseStorage, str]:
    """The storage and study name of a tune run directory.

    ``summary.json``'s ``storage`` and ``study`` when present; a file storage that has moved
    with its run directory (the recorded path is gone, ``run_dir`` has a file of that name) is
    found there. Without a summary: ``study.db`` or ``study.journal`` in ``run_dir`` and the
    single study it holds. Anything missing is an :class:`ExperimentError` (one line, exit 2).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ExperimentError(run_dir, "run directory", "a run directory written by "
                              "metaopt tune (it does not exist)")
    summary = _summary(run_dir)
    url, name = summary.get("storage"), summary.get("study")
    if url is not None:
        file = _local_file(url)
        if file is not None and not file.exists():
            moved = run_dir / file.name
            if not moved.exists():
                raise ExperimentError(run_dir / "summary.json", "storage", "an existing "
                                      "study file", str(file))
            url = f"{JOURNAL}:{moved.absolute()}" if _is_journal(url) else \
                f"sqlite:///{moved.absolute()}"
    else:
        for file_name, spec in ((SQLITE_FILE, None), (JOURNAL_FILE, JOURNAL)):
            if (run_dir / file_name).exists():
                url = storage_url(spec, run_dir)
                break
        else:
            raise ExperimentError(run_dir, "summary.json", f"a tune run directory (summary.json "
                                  f"with 'storage', or {SQLITE_FILE} / {JOURNAL_FILE})")
    try:
        storage = open_storage(url, run_dir)
        names = [s.study_name for s in storage.get_all_studies()]
    except Exception as err:  # a bad URL, an unreachable server, a corrupt file
        raise ExperimentError(run_dir / "summary.json", "storage", "a storage Optuna can "
                              f"open ({type(err).__name__}: {err})", url) from None
    if name is None:
        if len(names) != 1:
            raise ExperimentError(run_dir, "study", "one study in the storage (summary.json "
                                  "has no 'study')", names)
        name = names[0]
    elif name not in names:
        raise ExperimentError(run_dir / "summary.json", "study", "a study in the storage "
                              f"({', '.join(names) or 'none there'})", name)
    return storage, name


def load_study(run_dir: str | Path) -> optuna.Study:
    """The study of a tune run directory (see :func:`run_storage`)."""
    storage, name = run_storage(run_dir)
    return optuna.load_study(study_name=name, storage=storage)


def count_trials(storage: BaseStorage, study_id: int) -> dict[TrialState, int]:
    """The study's number of trials by state: one ``GROUP BY`` query on an RDB storage
    (Optuna's own ``get_n_trials`` reads every trial with its attributes there, milliseconds
    per trial); ``get_all_trials`` elsewhere (in memory, journal) or if Optuna's tables ever
    change."""
    if isinstance(storage, RDBStorage):
        try:
            from optuna.storages._rdb import models
            from optuna.storages._rdb.storage import _create_scoped_session
            from sqlalchemy import func

            state = models.TrialModel.state
            with _create_scoped_session(storage.scoped_session) as session:
                rows = session.query(state, func.count(models.TrialModel.trial_id)).filter(
                    models.TrialModel.study_id == study_id).group_by(state).all()
            return {TrialState(s) if not isinstance(s, TrialState) else s: int(n)
                    for s, n in rows}
        except (ImportError, AttributeError):
            pass
    return dict(Counter(t.state for t in storage.get_all_trials(study_id, deepcopy=False)))
