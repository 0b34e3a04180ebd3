"""`metaopt tune`: bad input, resuming after SIGKILL, several workers on one study."""

import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

from metaopt import cli

TUNE = """\
name: tiny-tune
task: quadratic
steps: 20
seed: 0
search:
  optimizer: sgd
  space:
    lr: {low: 1.0e-3, high: 1.0e-1, log: true}
    momentum: {low: 0.5, high: 0.95}
  sampler: tpe
  pruner: median
  trials: 12
  population: 4
"""


def write(tmp_path, text, name="exp.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def tune(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "metaopt.cli", "tune", *map(str, args)],
                          capture_output=True, text=True, **kwargs)


def finished(study):
    return [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
            or t.state == TrialState.FAIL and t.user_attrs.get("reason") not in ("lost",
                                                                                 "surplus")]


@pytest.mark.parametrize("text,key", [
    ("search: [unclosed", "line"),
    (TUNE.replace("optimizer: sgd", "optimizer: sgdd"), "search.optimizer"),
    (TUNE.replace("task: quadratic", "task: nosuchtask"), "task"),
    (TUNE.replace("  trials: 12", "  trails: 12"), "search.trails"),
    (TUNE.replace("sampler: tpe", "sampler: bayes"), "search.sampler"),
    (TUNE.replace("low: 1.0e-3", "low: 0.0"), "search.space.lr"),
    (TUNE.replace("low: 0.5, high: 0.95", "low: 0.95, high: 0.5"), "search.space.momentum"),
    (TUNE.replace("    momentum: {low: 0.5, high: 0.95}", "    nesterov: {choices: []}"),
     "search.space.nesterov"),
    (TUNE.replace("""  space:
    lr: {low: 1.0e-3, high: 1.0e-1, log: true}
    momentum: {low: 0.5, high: 0.95}
""", "  space: no/such/space.yaml\n"), "search.space"),
])
def test_malformed_experiments_give_one_line_and_write_nothing(tmp_path, capsys, text, key):
    out = tmp_path / "run"
    code = cli.main(["tune", str(write(tmp_path, text)), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "exp.yaml" in err and key in err and "Traceback" not in err
    assert not out.exists()


def test_tune_writes_summary_best_yaml_and_report(tmp_path):
    exp = write(tmp_path, TUNE)
    run = tune(exp, "--out", tmp_path / "run")
    assert run.returncode == 0, run.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["command"] == "tune" and summary["best"]["optimizer"] == "sgd"
    assert set(summary["best"]["hparams"]) >= {"lr", "momentum"}
    assert summary["evaluations"] > 0 and summary["wall_seconds"] > 0
    assert (tmp_path / "run" / "study.db").exists() and (tmp_path / "run" / "report.md").exists()
    best = tmp_path / "run" / "best.yaml"
    again = subprocess.run([sys.executable, "-m", "metaopt.cli", "train", str(best), "--out",
                            str(tmp_path / "replay")], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    replay = json.loads((tmp_path / "replay" / "summary.json").read_text())
    assert replay["best"]["value"] == pytest.approx(summary["best"]["value"], rel=1e-5)
    # the same command again: a finished study is kept, nothing retrained
    rerun = tune(exp, "--out", tmp_path / "run")
    assert rerun.returncode == 0, rerun.stderr
    changed = write(tmp_path, TUNE.replace("high: 0.95", "high: 0.9"), "exp.yaml")
    refused = tune(changed, "--out", tmp_path / "run")
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and len(lines) == 1 and "search.space" in lines[0], lines


def test_a_killed_study_resumes_with_the_same_command(tmp_path):
    exp = write(tmp_path, TUNE.replace("trials: 12", "trials: 60").replace("steps: 20",
                                                                            "steps: 60"))
    out = tmp_path / "run"
    url = f"sqlite:///{out / 'study.db'}"
    proc = subprocess.Popen([sys.executable, "-m", "metaopt.cli", "tune", str(exp), "--out",
                             str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            time.sleep(0.3)
            try:
                study = optuna.load_study(study_name="tiny-tune", storage=url)
            except Exception:  # not created yet
                continue
            if len([t for t in study.trials if t.state == TrialState.COMPLETE]) >= 6:
                break
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    before = {t.number: t.value for t in optuna.load_study(
        study_name="tiny-tune", storage=url).trials if t.state == TrialState.COMPLETE}
    assert before and proc.returncode == -signal.SIGKILL
    run = tune(exp, "--out", out)
    assert run.returncode == 0, run.stderr
    study = optuna.load_study(study_name="tiny-tune", storage=url)
    assert len(finished(study)) == 60
    after = {t.number: t.value for t in study.trials}
    assert all(after[n] == v for n, v in before.items())  # no completed trial lost
    lost = [t.number for t in study.trials  # (one killed before sampling has nothing to redo)
            if t.user_attrs.get("reason") == "lost" and t.params]
    requeued = [t.user_attrs["requeued_from"] for t in study.trials
                if "requeued_from" in t.user_attrs]
    assert sorted(lost) == sorted(requeued)


@pytest.mark.parametrize("storage", ["sqlite", "journal"])
def test_two_workers_finish_one_study(tmp_path, storage):
    # enough work that the second worker (a new process: ~3 s of imports) joins before the
    # first has finished the study alone
    text = TUNE.replace("trials: 12", "trials: 48").replace("steps: 20\n", "steps: 200\n")
    if storage == "journal":
        text = text.replace("seed: 0\n", "seed: 0\nstorage: journal\n")
    run = tune(write(tmp_path, text), "--out", tmp_path / "run", "--workers", 2)
    assert run.returncode == 0, run.stderr
    assert "database is locked" not in run.stderr
    from metaopt.search.storage import load_study

    study = load_study(tmp_path / "run")
    assert len(finished(study)) == 48
    workers = {t.user_attrs["config"]["worker"].split(":")[1] for t in study.trials}
    assert len(workers) == 2


def test_two_workers_share_a_study_on_postgresql(tmp_path, postgres_url):
    text = TUNE.replace("trials: 12", "trials: 48").replace("steps: 20\n", "steps: 200\n").replace(
        "name: tiny-tune", "name: tiny-tune-pg").replace("seed: 0\n",
                                                         f"seed: 0\nstorage: {postgres_url}\n")
    run = tune(write(tmp_path, text), "--out", tmp_path / "run", "--workers", 2)
    assert run.returncode == 0, run.stderr
    study = optuna.load_study(study_name="tiny-tune-pg", storage=postgres_url)
    assert len(finished(study)) == 48  # (sized as in test_two_workers_finish_one_study)
    assert len({t.user_attrs["config"]["worker"].split(":")[1] for t in study.trials}) == 2
    optuna.delete_study(study_name="tiny-tune-pg", storage=postgres_url)
