"""metaopt pbt with backend: ray on a real two-node Ray cluster started here (``ray start --head``
and a second ``ray start --address=...``, one CPU each, their own ports and temporary
folder, stopped by PID), and addresses that do not answer."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from metaopt import runs
from metaopt.pbt.lineage import Lineage

ray = pytest.importorskip("ray")  # the ray extra: pip install 'metaopt[ray]'

RAY = str(Path(sys.executable).with_name("ray"))
# `ray start` turns token authentication on, ray.init in a fresh driver does not: this private
# cluster runs without it (README: how to run against a cluster that uses tokens).
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
NODE = ["--num-cpus=1", "--object-store-memory=200000000", "--block", "--disable-usage-stats"]


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _node_ports():
    p = _free_ports(12)
    return [f"--node-manager-port={p[0]}", f"--object-manager-port={p[1]}",
            f"--dashboard-agent-listen-port={p[2]}", f"--dashboard-agent-grpc-port={p[3]}",
            f"--metrics-export-port={p[4]}", f"--runtime-env-agent-port={p[5]}",
            "--worker-port-list=" + ",".join(map(str, p[6:]))]


def _processes_under(folder):
    """PIDs of processes whose command line names ``folder`` (this cluster's only)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if folder in cmdline and int(entry) != os.getpid():
                out.append(int(entry))
    return out


def _stop(procs, folder):
    for proc in procs:  # `ray start --block` stops the processes it started on SIGTERM
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    deadline = time.time() + 10
    while (left := _processes_under(folder)) and time.time() < deadline:
        time.sleep(0.5)
    for pid in left:  # whatever outlived its node
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def cluster():
    """``(address, node ids)`` of a head and a worker node on this machine."""
    folder = tempfile.mkdtemp(prefix="mo_ray_", dir="/tmp")  # short: Ray's socket paths
    procs = []
    try:
        ip = ray.util.get_node_ip_address()
        gcs, client = _free_ports(2)
        address = f"{ip}:{gcs}"
        with open(os.path.join(folder, "head.log"), "w") as log:
            procs.append(subprocess.Popen(
                [RAY, "start", "--head", f"--port={gcs}", f"--ray-client-server-port={client}",
                 f"--temp-dir={folder}", "--include-dashboard=false", *_node_ports(), *NODE],
                stdout=log, stderr=subprocess.STDOUT, env=ENV))
        _wait_for_port(ip, gcs, procs[0], folder)
        with open(os.path.join(folder, "worker.log"), "w") as log:
            procs.append(subprocess.Popen(
                [RAY, "start", f"--address={address}", f"--temp-dir={folder}", *_node_ports(),
                 *NODE], stdout=log, stderr=subprocess.STDOUT, env=ENV))
        nodes = _wait_for_nodes(address, 2, procs, folder)
        yield address, nodes
    finally:
        _stop(procs, folder)
        shutil.rmtree(folder, ignore_errors=True)


def _logs(folder):
    return "\n".join(Path(folder, f).read_text()[-2000:] for f in ("head.log", "worker.log")
                     if Path(folder, f).exists())


def _wait_for_port(ip, port, proc, folder, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"ray start --head exited with {proc.returncode}:\n{_logs(folder)}")
        try:
            socket.create_connection((ip, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"the head node did not listen on {port} in {timeout} s:\n{_logs(folder)}")


WAIT_NODES = """
import sys, time, ray
ray.init(address=sys.argv[1], log_to_driver=False, logging_level="ERROR")
deadline = time.time() + 60
while time.time() < deadline:
    alive = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    if len(alive) >= int(sys.argv[2]):
        break
    time.sleep(0.2)
print(" ".join(alive))
"""


def _wait_for_nodes(address, n, procs, folder):
    out = subprocess.run([sys.executable, "-c", WAIT_NODES, address, str(n)], env=ENV,
                         capture_output=True, text=True, timeout=120)
    nodes = out.stdout.split()
    if len(nodes) < n or any(p.poll() is not None for p in procs):
        pytest.fail(f"{len(nodes)} of {n} nodes came up ({out.stderr[-2000:]}):\n"
                    f"{_logs(folder)}")
    return nodes


USER_TASK = '''\
"""A task the cluster's workers do not have: shipped to them in the job's runtime_env."""
import torch
from torch import nn

from metaopt.tasks import Task


def task():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(96, 4, generator=g)
    y = torch.sin(x @ torch.randn(4, 1, generator=g))

    def loss(module, batch):
        xb, yb = batch
        return ((module(xb) - yb) ** 2).mean()

    def data(generator):
        while True:
            idx = torch.randint(0, 96, (16,), generator=generator)
            yield x[idx], y[idx]

    @torch.no_grad()
    def evaluate(module):
        return float(loss(module, (x, y)))

    return Task("ray-toy", lambda: nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)),
                loss, data, evaluate, steps=40)
'''


def _experiment(tmp_path, address, storage):
    text = f"""\
        name: ray-pbt
        task: pbt_user_task:task
        steps: 40
        seed: 0
        pbt:
          optimizer: sgd
          space:
            lr: {{low: 1.0e-3, high: 0.3, log: true}}
            momentum: {{low: 0.5, high: 0.95}}
          population: 4
          interval: 10
          backend: ray
          ray_address: "{address}"
          storage_path: "{storage}"
        """
    path = tmp_path / "exp.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def _pbt(tmp_path, exp, out, timeout):
    """``metaopt pbt`` in a driver that imports the user's task from a folder on its own
    PYTHONPATH only: not its working directory, which Ray adds to every worker's path (a
    worker on another machine has neither), so the workers import it only if it is shipped."""
    code = tmp_path / "usercode"
    code.mkdir(exist_ok=True)
    (code / "pbt_user_task.py").write_text(USER_TASK)
    env = {**ENV, "PYTHONPATH": str(code)}
    return subprocess.run([sys.executable, "-m", "metaopt.cli", "pbt", str(exp), "--out",
                           str(out), "--no-progress"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_pbt_on_a_two_node_cluster_places_members_on_both(cluster, tmp_path):
    address, nodes = cluster
    out = tmp_path / "run"
    done = _pbt(tmp_path, _experiment(tmp_path, address, tmp_path / "storage"), out, 240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = runs.read_summary(out)
    assert summary["command"] == "pbt" and summary["backend"] == "ray"
    assert summary["population"] == 4 and summary["steps"] == 40
    assert summary["evaluations"] == 4 * 40  # synchronous PBT: no step trained twice
    placed = summary["ray"]["placements"]
    assert sorted(placed) == ["0", "1", "2", "3"] and all(placed.values())
    used = {p["node_id"] for where in placed.values() for p in where}
    assert used == set(nodes), (used, nodes)  # members ran on both nodes
    assert len({(p["node_id"], p["pid"]) for w in placed.values() for p in w}) >= 2
    assert summary["ray"]["address"] == address and summary["ray"]["nodes"] == sorted(nodes)
    lineage = json.loads((out / "lineage.json").read_text())
    rebuilt = Lineage.from_dict(lineage)
    assert [iv.end for iv in rebuilt.intervals] == [10, 20, 30, 40]
    rebuilt.check()  # every parent existed and was better at the interval before
    assert summary["exploits"] >= 1 and summary["exploits"] == sum(
        p != i for iv in rebuilt.intervals[1:] for i, p in enumerate(iv.parents))
    assert summary["best"]["value"] == min(rebuilt.intervals[-1].values)
    for name in ("best.yaml", "lineage.png", "hparams.png", "report.md"):
        assert (out / name).exists(), name
    assert any((tmp_path / "storage").iterdir())  # Ray's trials went to the storage path


@pytest.mark.parametrize("listener", ["nobody", "silent"])
def test_an_address_that_does_not_answer_fails_fast_naming_it(tmp_path, listener):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    port = server.getsockname()[1]
    if listener == "silent":  # accepts connections, never speaks gRPC
        server.listen(8)
    else:
        server.close()
    address = f"127.0.0.1:{port}"
    out, storage = tmp_path / "run", tmp_path / "storage"
    started = time.time()
    try:
        done = _pbt(tmp_path, _experiment(tmp_path, address, storage), out, 60)
    finally:
        server.close()
    elapsed = time.time() - started
    err = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(err) == 1 and address in err[0] and "pbt.ray_address" in err[0], err
    assert "exp.yaml" in err[0] and "Traceback" not in done.stderr
    assert elapsed < 15, elapsed
    assert not out.exists() and not storage.exists()
