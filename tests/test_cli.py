"""The command layer: experiment files, one-line errors with exit status 2, run directories."""

import json
import subprocess
import sys

import pytest

from metaopt import cli
from metaopt.experiment import ExperimentError, load

GOOD = """\
name: tiny
task: quadratic
steps: 20
seed: 1
train:
  optimizer: adam
  hparams: {lr: 1e-1, betas: [0.9, 0.99]}
  schedule: {name: cosine, T_max: 20}
"""


def write(tmp_path, text, name="exp.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_numbers_written_like_1e_minus_5_are_numbers(tmp_path):
    exp = load(write(tmp_path, GOOD))
    assert exp.section("train")["hparams"]["lr"] == 0.1
    assert exp.steps == 20 and exp.seed == 1


@pytest.mark.parametrize("text,key", [
    (GOOD.replace("seed: 1", "sede: 1"), "sede"),
    (GOOD.replace("steps: 20", "steps: many"), "steps"),
    (GOOD.replace("  optimizer: adam\n", ""), "train.optimizer"),
    (GOOD + "  lrr: 3\n", "train.lrr"),
    (GOOD.replace("optimizer: adam", "optimizer: adamm"), "train.optimizer"),
    (GOOD.replace("lr: 1e-1", "lr: -1e-1"), "train.optimizer"),
    (GOOD.replace("T_max: 20", "Tmax: 20"), "train.schedule"),
    (GOOD.replace("task: quadratic", "task: nosuchtask"), "task"),
    ("name: [unclosed\n", "line"),
    ("just a string\n", "(top level)"),
])
def test_malformed_files_give_one_line_and_exit_2(tmp_path, capsys, text, key):
    path = write(tmp_path, text)
    out = tmp_path / "run"
    code = cli.main(["train", str(path), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert str(path) in err and key in err, err
    assert not out.exists()


def test_missing_file_and_missing_section(tmp_path, capsys):
    assert cli.main(["train", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err
    path = write(tmp_path, "name: x\ntask: quadratic\n")
    with pytest.raises(ExperimentError, match="train"):
        load(path).section("train")


def test_no_traceback_and_existing_results_kept(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "summary.json").write_text('{"kept": true}')
    path = write(tmp_path, GOOD.replace("optimizer: adam", "optimizer: 7"))
    proc = subprocess.run([sys.executable, "-m", "metaopt.cli", "train", str(path), "--out",
                           str(out)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "train.optimizer" in proc.stderr
    assert json.loads((out / "summary.json").read_text()) == {"kept": True}


def test_train_writes_summary_report_and_figures(tmp_path, capsys):
    path = write(tmp_path, GOOD)
    out = tmp_path / "run"
    assert cli.main(["train", str(path), "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["command"] == "train" and summary["task"] == "quadratic"
    assert set(summary["best"]) == {"optimizer", "hparams", "schedule", "value"}
    assert summary["best"]["optimizer"] == "adam" and summary["evaluations"] == 20
    assert summary["wall_seconds"] > 0
    for name in ("report.md", "loss.png", "train.csv", "result.json"):
        assert (out / name).stat().st_size > 0, name
    (out / "report.md").unlink()
    assert cli.main(["report", str(out)]) == 0
    assert "![Loss](loss.png)" in (out / "report.md").read_text()


def test_demo_selects_then_tunes_the_winner(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--out", str(out), "--steps", "30", "--budget", "2500",
                     "--trials", "4", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "rank" in printed and "selected" in printed and "report.md" in printed
    chosen = json.loads((out / "select" / "summary.json").read_text())["best"]
    tuned = json.loads((out / "tune" / "summary.json").read_text())
    assert tuned["best"]["optimizer"] == chosen["optimizer"]
    assert (out / "tune" / "study.db").exists() and (out / "select" / "halving.png").exists()
    assert load(out / "select.yaml").sections["select"]["budget"] == 2500  # what it ran,
    assert load(out / "tune.yaml").sections["search"]["trials"] == 4  # as experiment files
