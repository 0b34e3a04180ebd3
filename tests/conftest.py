import pytest
import torch
from postgres import find_bindir, running_postgres

torch.set_flush_denormal(True)
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def postgres_url():
    """SQLAlchemy URL of a private PostgreSQL server (database ``metaopt_test``), started
    on a free 127.0.0.1 port for the session and stopped by PID at its end. Skips only when
    the server binaries are absent; any other failure to start is an error."""
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL binaries not found")
    with running_postgres(bindir) as url:
        yield url
