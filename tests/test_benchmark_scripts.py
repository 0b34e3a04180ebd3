"""Every benchmark is one command: each script starts (imports and parses its arguments) when
run as ``python benchmarks/<name>.py`` from the project root, as the README tells users to."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py") if p.name != "common.py")


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_script_starts(script):
    """A file here named like a module torch or metaopt imports (``select.py`` shadowed the
    standard library's select; ``learned.py`` the learned package) breaks every script."""
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), "--help"],
                          cwd=BENCHMARKS.parent, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--device" in done.stdout, "every benchmark accepts --device cuda"
