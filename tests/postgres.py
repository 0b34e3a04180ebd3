"""A throwaway PostgreSQL server for tests.

``running_postgres()`` initdb's a cluster in a temporary folder, starts it on a free
127.0.0.1 port (Unix socket in that folder too, never the system one), creates the
database ``metaopt_test`` and yields its SQLAlchemy URL. The server is always stopped
(``pg_ctl stop -m fast``, else the postmaster is killed by the PID in postmaster.pid)
and the folder removed. Nothing depends on a system cluster or service.

initdb, pg_ctl and postgres refuse to run as root: as root they run as the ``postgres``
system user (created if missing) through ``runuser``, and the folder is chowned to it.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DBNAME = "metaopt_test"
SUPERUSER = "postgres"
_RUN_AS = "postgres"  # system user for the server when we are root
_TOOLS = ("initdb", "pg_ctl", "postgres")


def _complete(d: Path) -> bool:
    return all(os.access(d / t, os.X_OK) for t in _TOOLS)


def find_bindir() -> Path | None:
    """The folder with initdb, pg_ctl and postgres: PATH first, then the newest
    /usr/lib/postgresql/<version>/bin. None if there is none."""
    initdb = shutil.which("initdb")
    if initdb:
        # /usr/local/bin/initdb may be a link into the versioned folder; pg_ctl
        # needs postgres of the same version, so prefer the link's target folder.
        for d in (Path(initdb).resolve().parent, Path(initdb).parent):
            if _complete(d):
                return d
    versions = []
    for d in Path("/usr/lib/postgresql").glob("*/bin"):
        nums = [int(n) for n in re.findall(r"\d+", d.parent.name)]
        if nums and _complete(d):
            versions.append((nums, d))
    return max(versions)[1] if versions else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _ensure_user() -> None:
    try:
        import pwd

        pwd.getpwnam(_RUN_AS)
    except KeyError:
        subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", _RUN_AS],
                       check=True, capture_output=True, text=True)


def _run(cmd: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    if _as_root():
        cmd = ["runuser", "-u", _RUN_AS, "--", *cmd]
    proc = subprocess.run(cmd, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=timeout)
    return proc


def _check(proc: subprocess.CompletedProcess, what: str, log: Path | None = None) -> None:
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
        raise RuntimeError(f"{what} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
                           f"\n--- server log ---\n{tail}")


def _postmaster_pid(data: Path) -> int | None:
    try:
        return int((data / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop(bindir: Path, data: Path, root: Path) -> None:
    pid = _postmaster_pid(data)
    try:
        proc = _run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "30",
                     "stop"], cwd=root, timeout=45)
        ok = proc.returncode == 0
    except subprocess.TimeoutExpired:
        ok = False
    if ok or pid is None:
        return
    # pg_ctl could not stop it: kill the postmaster (SIGQUIT = immediate shutdown).
    for sig, wait in ((signal.SIGQUIT, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.1)


def _create_db(port: int) -> None:
    import psycopg2

    conn = psycopg2.connect(host="127.0.0.1", port=port, user=SUPERUSER, dbname="postgres",
                            connect_timeout=10)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE {DBNAME}")
    finally:
        conn.close()


def _make_root() -> Path:
    """A fresh folder the server's user can write, short enough for the socket path
    (sock/.s.PGSQL.PORT must fit in ~107 bytes): $TMPDIR, else /tmp."""
    for base in dict.fromkeys([tempfile.gettempdir(), "/tmp"]):
        if len(base) > 60:
            continue
        root = Path(tempfile.mkdtemp(prefix="metaopt-pg-", dir=base))
        (root / "sock").mkdir()
        if not _as_root():
            return root
        shutil.chown(root, user=_RUN_AS)
        shutil.chown(root / "sock", user=_RUN_AS)
        # every folder above root must be searchable by that user too
        if _run(["test", "-w", str(root / "sock")], cwd=Path("/")).returncode == 0:
            return root
        shutil.rmtree(root, ignore_errors=True)
    raise RuntimeError(f"no temporary folder usable by user {_RUN_AS!r} (tried $TMPDIR, /tmp)")


@contextmanager
def running_postgres(bindir: Path | None = None, attempts: int = 3) -> Iterator[str]:
    """Start a private server; yield ``postgresql+psycopg2://postgres@127.0.0.1:PORT/metaopt_test``."""
    bindir = bindir or find_bindir()
    if bindir is None:
        raise FileNotFoundError("PostgreSQL server binaries (initdb, pg_ctl) not found")
    if _as_root():
        _ensure_user()
    root = _make_root()
    data, sock, log = root / "data", root / "sock", root / "server.log"
    started = False
    try:
        _check(_run([str(bindir / "initdb"), "-D", str(data), "-U", SUPERUSER, "-A", "trust",
                     "-E", "UTF8", "--locale=C", "--no-sync"], cwd=root), "initdb")
        for attempt in range(attempts):
            port = free_port()
            opts = (f"-p {port} -k {shlex.quote(str(sock))} -c listen_addresses=127.0.0.1 "
                    "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
            proc = _run([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", opts,
                         "-w", "-t", "60", "start"], cwd=root, timeout=90)
            if proc.returncode == 0:
                started = True
                break
            _stop(bindir, data, root)  # half-started? make sure nothing is left running
            if attempt == attempts - 1:  # the port may have been taken meanwhile: retry
                _check(proc, "pg_ctl start", log)
        _create_db(port)
        yield f"postgresql+psycopg2://{SUPERUSER}@127.0.0.1:{port}/{DBNAME}"
    finally:
        if started or _postmaster_pid(data) is not None:
            _stop(bindir, data, root)
        shutil.rmtree(root, ignore_errors=True)
