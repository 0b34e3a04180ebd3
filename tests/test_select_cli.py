"""`metaopt select`: bad input, its outputs and report, resuming after SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from metaopt import cli

SELECT = """\
name: tiny-select
task: digits_mlp_sigmoid
steps: 45
seed: 0
select:
  candidates: [sgd_momentum, adam, rmsprop]
  budget: 1500
  warm_start: false
"""


def write(tmp_path, text, name="exp.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def select(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "metaopt.cli", "select", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **kwargs)


@pytest.mark.parametrize("text,key", [
    (SELECT.replace("[sgd_momentum, adam, rmsprop]", "[adam, adamm]"), "select.candidates"),
    (SELECT.replace("budget: 1500", "budget: 0"), "select.budget"),
    (SELECT.replace("budget: 1500", "budget: 20"), "select.budget"),
    (SELECT.replace("task: digits_mlp_sigmoid", "task: no.such.module:task"), "task"),
    (SELECT.replace("  warm_start: false", "  warmstart: false"), "select.warmstart"),
])
def test_malformed_experiments_give_one_line_and_write_nothing(tmp_path, capsys, text, key):
    out = tmp_path / "run"
    code = cli.main(["select", str(write(tmp_path, text)), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "exp.yaml" in err and key in err and "Traceback" not in err
    assert not out.exists()


def test_select_writes_summary_best_yaml_report_and_resumes_after_sigkill(tmp_path):
    exp = write(tmp_path, SELECT)
    whole = select(exp, "--out", tmp_path / "whole")
    out, err = whole.communicate(timeout=300)
    assert whole.returncode == 0, err
    summary = json.loads((tmp_path / "whole" / "summary.json").read_text())
    assert summary["command"] == "select" and summary["evaluations"] <= 1500
    assert summary["best"]["optimizer"] in ("sgd", "adam", "rmsprop")
    assert "rank" in out and "wrote" in out
    best = yaml.safe_load((tmp_path / "whole" / "best.yaml").read_text())
    assert best["train"]["optimizer"] == summary["best"]["optimizer"]
    report = (tmp_path / "whole" / "report.md").read_text()
    assert "## Ranking" in report and "no warm start" in report
    for figure in ("halving.png", "sensitivity.png"):
        assert (tmp_path / "whole" / figure).stat().st_size > 1000
    (tmp_path / "whole" / "report.md").unlink()  # `metaopt report` redraws it
    assert cli.main(["report", str(tmp_path / "whole")]) == 0
    assert "## Ranking" in (tmp_path / "whole" / "report.md").read_text()

    # killed once some probes are recorded, then the same command finishes the same way
    state = tmp_path / "killed" / "state.json"
    proc = select(exp, "--out", tmp_path / "killed")
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if state.exists() and sum(k.startswith("probe:") for k in
                                  json.loads(state.read_text())) >= 2:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed" / "summary.json").exists()
    again = select(exp, "--out", tmp_path / "killed")
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    resumed = json.loads((tmp_path / "killed" / "summary.json").read_text())
    assert resumed["best"] == summary["best"]
    assert resumed["ranking"] == summary["ranking"]


def test_resuming_with_another_budget_names_the_key(tmp_path, capsys):
    exp = write(tmp_path, SELECT)
    out = tmp_path / "run"
    out.mkdir()
    (out / "state.json").write_text(json.dumps({"fingerprint": {
        "task": "digits_mlp_sigmoid", "candidates": ["sgd_momentum", "adam", "rmsprop"],
        "budget": 999, "steps": 45, "seed": 0}}))
    assert cli.main(["select", str(exp), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "select.budget" in err and "999" in err


def test_rebuild_store_rebuilds_stale_records_only(tmp_path, capsys):
    from metaopt.select import store

    stale = store.Record("quadratic", {"log_params": 1.0}, {"lstm": {
        "lr": 1.0, "value": 0.5, "rung": 0, "rank": 1, "status": "ok"}}, "an-older-network")
    store.write(stale, tmp_path)
    assert store.stale(tmp_path) == ["quadratic"]
    args = ["select", "--rebuild-store", "--tasks", "quadratic", "--store", str(tmp_path),
            "--no-progress"]
    assert cli.main(args) == 0
    rebuilt = store.load(tmp_path)[0]
    assert not rebuilt.stale and rebuilt.learned_checkpoint == store.learned_hash()
    assert len(rebuilt.candidates) > 5 and "lstm" in rebuilt.candidates
    assert cli.main(args) == 0 and "quadratic: up to date" in capsys.readouterr().out


def test_select_on_a_users_own_task_by_module_attribute(tmp_path, capsys):
    text = SELECT.replace("task: digits_mlp_sigmoid", "task: toy_tasks:regression").replace(
        "steps: 45", "steps: 30").replace("budget: 1500", "budget: 500")
    out = tmp_path / "run"
    assert cli.main(["select", str(write(tmp_path, text)), "--out", str(out),
                     "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "toy_tasks:regression" and summary["best"]["value"] < 1.0
    assert summary["evaluations"] <= 500 and "rank" in capsys.readouterr().out
