"""Screenshot of ``metaopt dashboard`` for the README.

    python docs/screenshot_dashboard.py RUN_DIR docs/figures/dashboard.png

Starts ``metaopt dashboard RUN_DIR`` on a free 127.0.0.1 port, waits until its API answers,
opens the study's page in headless Chromium (``apt-get install chromium``; ``--chromium`` or
``$CHROMIUM`` names another binary) with time for the page's JavaScript to render, writes the
PNG and stops the server.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def wait_for_studies(base: str, server: subprocess.Popen, timeout: float) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the dashboard exited with status {server.returncode}")
        try:
            return get_json(f"{base}/api/studies")["study_summaries"]
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.25)
    raise SystemExit(f"the dashboard did not answer within {timeout:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a run directory written by metaopt tune")
    parser.add_argument("out", help="the PNG to write")
    parser.add_argument("--chromium", default=os.environ.get("CHROMIUM", "chromium"))
    parser.add_argument("--size", default="1400,900", help="window size (default 1400,900)")
    parser.add_argument("--wait-ms", type=int, default=8000,
                        help="virtual time the page gets to render (default 8000)")
    args = parser.parse_args(argv)

    chromium = shutil.which(args.chromium)
    if chromium is None:
        raise SystemExit(f"{args.chromium} not found (apt-get install chromium)")
    try:
        wanted = json.loads((Path(args.run_dir) / "summary.json").read_text()).get("study")
    except (OSError, ValueError):
        wanted = None
    out = Path(args.out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    server = subprocess.Popen([sys.executable, "-m", "metaopt.cli", "dashboard", args.run_dir,
                               "--host", "127.0.0.1", "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        studies = wait_for_studies(base, server, timeout=30)
        study = next((s for s in studies if s["study_name"] == wanted), studies[0])
        url = f"{base}/dashboard/studies/{study['study_id']}"
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                        "--hide-scrollbars", f"--screenshot={out}",
                        f"--window-size={args.size}",
                        f"--virtual-time-budget={args.wait_ms}", url],
                       check=True, timeout=120, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    if not out.exists() or out.stat().st_size == 0:
        raise SystemExit(f"chromium wrote no screenshot to {out}")
    print(f"wrote {out} ({study['study_name']}: {url})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
