"""A tune run's report and dashboard on a real (small) Optuna study: figures, report.md,
``metaopt report`` re-rendering it, SQLite and journal storages, and ``metaopt dashboard``
serving the study over HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from metaopt import cli, runs
from metaopt.search.report import write_report
from metaopt.search.storage import load_study, open_storage, run_storage, storage_url

PNG = b"\x89PNG\r\n\x1a\n"
FIGURES = ("history", "learning_curves", "parallel_coordinate", "slice", "contour",
           "importances")


def make_run(run_dir: Path, spec: str | None = None, *, multi: bool = False,
             trials: int = 12) -> optuna.Study:
    """A toy tune run: lr (log) and beta1 (or, with ``multi``, a choice of adam or sgd and
    their conditional ``adam.lr``... parameters), learning curves reported every 10 steps,
    a median pruner, trial 5 failed (diverged), and summary.json as ``metaopt tune`` writes."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name="toy", storage=open_storage(spec, run_dir), direction="minimize",
        sampler=optuna.samplers.RandomSampler(seed=0),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1))
    for i in range(trials):
        trial = study.ask()
        opt = trial.suggest_categorical("optimizer", ["adam", "sgd"]) if multi else "adam"
        prefix = f"{opt}." if multi else ""
        hparams = {"lr": trial.suggest_float(prefix + "lr", 1e-4, 1e-1, log=True)}
        second = "beta1" if opt == "adam" else "momentum"
        hparams[second] = trial.suggest_float(prefix + second, 0.0 if multi else 0.8, 0.99)
        trial.set_user_attr("config", {"optimizer": opt, "hparams": hparams,
                                       "schedule": {"name": "cosine"} if i % 2 else None})
        if i == 5:
            trial.report(1.0, 10)
            trial.set_user_attr("reason", "diverged: loss is nan at step 12")
            study.tell(trial, state=TrialState.FAIL)
            continue
        target = (math.log10(hparams["lr"]) + 2.5) ** 2 + (hparams[second] - 0.9) ** 2 + 0.1
        state = TrialState.COMPLETE
        for step in range(10, 60, 10):
            value = target + 20.0 / step
            trial.report(value, step)
            if trial.should_prune():
                state = TrialState.PRUNED
                break
        study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
    best = study.best_trial
    config = best.user_attrs["config"]
    runs.write_summary(run_dir, command="tune", task="toy", optimizer=config["optimizer"],
                       hparams=config["hparams"], schedule=config["schedule"],
                       value=best.value, evaluations=1234, started=time.time(),
                       storage=storage_url(spec, run_dir), study="toy")
    return study


def check_figures(run_dir: Path, names: tuple[str, ...] = FIGURES) -> None:
    for name in names:
        data = (run_dir / "figures" / f"{name}.png").read_bytes()
        assert data.startswith(PNG) and len(data) > 1000, name


def test_report_of_a_sqlite_study(tmp_path):
    study = make_run(tmp_path)
    states = {s: len(study.get_trials(states=(s,))) for s in TrialState}
    assert states[TrialState.COMPLETE] >= 2 and states[TrialState.PRUNED] >= 1
    assert json.loads((tmp_path / "summary.json").read_text())["storage"] == \
        f"sqlite:///{(tmp_path / 'study.db').absolute()}"

    path = write_report(tmp_path, study)
    assert path == tmp_path / "report.md"
    text = path.read_text()
    check_figures(tmp_path)
    for name in FIGURES:
        assert f"](figures/{name}.png)" in text
    assert "# tune: toy" in text
    assert (f"{states[TrialState.COMPLETE]} complete, {states[TrialState.PRUNED]} pruned, "
            "1 failed") in text
    assert "1 × diverged: loss is nan at step 12" in text
    best = study.best_trial
    assert f"| trial | {best.number} |" in text and f"{best.value:.4g}" in text
    assert "| lr | " in text and "| beta1 | " in text  # the importances table
    assert "Skipped" not in text
    top = [line for line in text.splitlines() if line.startswith("| 1 | ")]
    assert top and f"| {best.number} |" in top[0]


def test_metaopt_report_rerenders_a_tune_run(tmp_path, capsys):
    make_run(tmp_path)
    (tmp_path / "figures").mkdir()
    assert cli.main(["report", str(tmp_path)]) == 0
    assert "report.md" in capsys.readouterr().out
    check_figures(tmp_path)
    assert "## Top " in (tmp_path / "report.md").read_text()


def test_journal_study_with_a_choice_of_optimizers(tmp_path):
    make_run(tmp_path, "journal", multi=True, trials=16)
    assert (tmp_path / "study.journal").exists() and not (tmp_path / "study.db").exists()
    summary = runs.read_summary(tmp_path)
    assert summary["storage"] == f"journal:{(tmp_path / 'study.journal').absolute()}"
    study = load_study(tmp_path)  # found through summary.json
    assert study.study_name == "toy" and len(study.trials) == 16
    text = write_report(tmp_path).read_text()  # the study loaded by write_report itself
    assert "| optimizers | adam, sgd |" in text
    assert any(f"{o}.lr" in text for o in ("adam", "sgd"))
    check_figures(tmp_path, ("history", "learning_curves", "slice"))
    figures = text.split("## Figures", 1)[1]  # each one drawn, or skipped with a line
    assert figures.count("### ") == len(FIGURES)
    assert figures.count("](figures/") + figures.count("Skipped: ") == len(FIGURES)


def test_storage_lookup(tmp_path):
    make_run(tmp_path, trials=3)
    summary = runs.read_summary(tmp_path)
    (tmp_path / "summary.json").unlink()  # a run still going: no summary yet
    storage, name = run_storage(tmp_path)
    assert name == "toy" and len(storage.get_all_studies()) == 1
    moved = tmp_path.parent / (tmp_path.name + "-moved")
    tmp_path.rename(moved)  # a run directory moved after the summary was written
    runs.write_json(moved / "summary.json", summary)
    assert load_study(moved).study_name == "toy"
    assert storage_url("journal:/x/y.journal", tmp_path) == "journal:/x/y.journal"
    assert storage_url("postgresql+psycopg2://u@h/db", tmp_path) == "postgresql+psycopg2://u@h/db"
    with pytest.raises(ValueError, match="SQLAlchemy URL"):
        storage_url("study.db", tmp_path)


def test_missing_run_dir_is_a_one_line_error(tmp_path, capsys):
    assert cli.main(["dashboard", str(tmp_path / "nothing")]) == 2
    assert cli.main(["dashboard", str(tmp_path)]) == 2  # no summary, no study file
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("metaopt dashboard: error: ") for line in err)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def test_dashboard_serves_the_study(tmp_path):
    study = make_run(tmp_path)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "metaopt.cli", "dashboard", str(tmp_path),
                               "--port", str(port)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        deadline, studies = time.monotonic() + 20, None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                studies = get_json(f"{base}/api/studies")
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.2)
        assert studies is not None, f"no answer from the dashboard (exit {server.poll()})"
        [summary] = studies["study_summaries"]
        assert summary["study_name"] == "toy"
        detail = get_json(f"{base}/api/studies/{summary['study_id']}")
        assert detail["name"] == "toy"
        assert [t["number"] for t in detail["trials"]] == [t.number for t in study.trials]
        assert {t["state"] for t in detail["trials"]} >= {"Complete", "Pruned", "Fail"}
    finally:
        server.terminate()
        try:
            out, _ = server.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            out, _ = server.communicate()
    assert f"{base}/dashboard/studies/{summary['study_id']}" in out
