"""Population-based training (metaopt.pbt, metaopt pbt): the policy's moves and explore's bounds,
exploit's exact copy, the lineage, divergence, exact resumes (in process and after SIGKILL),
exploit switched off equals a plain population, the command's errors, best.yaml replayed."""

import json
import math
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from toy_tasks import regression

import metaopt
from metaopt import cli, runs, schedules
from metaopt.pbt import checkpoint, policy
from metaopt.pbt.lineage import discovered
from metaopt.pbt.local import PBT, run_pbt
from metaopt.population import Population
from metaopt.search.params import Categorical, Fixed, FloatParam, IntParam
from metaopt.tasks import Task


def _task(steps: int = 40) -> Task:
    return regression("pbt-toy", steps)


SGD = {"lr": {"low": 1e-3, "high": 0.3, "log": True}, "momentum": {"low": 0.5, "high": 0.95}}
ADAM = {"lr": {"low": 1e-3, "high": 3e-2, "log": True}, "beta1": {"low": 0.8, "high": 0.95}}


# -- the policy -------------------------------------------------------------------------------
SPACE = {"lr": FloatParam(1e-5, 1e-1, log=True), "beta": FloatParam(0.8, 0.99),
         "grid": FloatParam(0.0, 1.0, step=0.25), "k": IntParam(1, 10),
         "klog": IntParam(1, 1024, log=True), "choice": Categorical((0.9, 0.95, 0.99)),
         "fixed": Fixed(3)}


def _inside(values):
    for name, p in SPACE.items():
        v = values[name]
        if isinstance(p, Fixed):
            assert v == 3
        elif isinstance(p, Categorical):
            assert v in p.choices
        else:
            assert p.low <= v <= p.high, (name, v)
            if isinstance(p, IntParam):
                assert type(v) is int
            else:
                assert type(v) is float
    assert (values["grid"] / 0.25).is_integer()


def test_explore_stays_within_bounds_grids_and_log_scales():
    rng = random.Random(0)
    lows = 0
    for _ in range(3000):
        start = policy.sample(SPACE, rng)
        _inside(start)
        lows += start["lr"] < 1e-3  # the log-uniform midpoint of [1e-5, 1e-1]
        _inside(policy.explore(start, SPACE, rng, resample=0.3))
        moved = policy.explore(start, SPACE, rng, resample=0.0)
        _inside(moved)
        ratio = moved["lr"] / start["lr"]  # log scale: multiplied, unless clipped
        assert (ratio == pytest.approx(0.8) or ratio == pytest.approx(1.2)
                or moved["lr"] in (1e-5, 1e-1))
        shift = moved["beta"] - start["beta"]  # linear scale: +-20% of the range
        assert (abs(abs(shift) - 0.2 * 0.19) < 1e-12 or moved["beta"] in (0.8, 0.99))
        assert moved["k"] != start["k"] or start["k"] in (1, 10)  # at least one step
        assert abs(SPACE["choice"].choices.index(moved["choice"])
                   - SPACE["choice"].choices.index(start["choice"])) <= 1
    assert 0.45 < lows / 3000 < 0.55


def test_truncation_and_tournament_copy_better_members_worst_first():
    values = [0.5, math.nan, 0.1, 0.3, 0.2, 0.9, 0.4, 0.7]
    hparams = [{"lr": 1e-3 * (i + 1)} for i in range(8)]
    space = {"lr": FloatParam(1e-4, 1e-1, log=True)}
    moves = policy.choose(values, hparams, space, rng=random.Random(1), quantile=0.25)
    assert [m.dst for m in moves] == [1, 5]  # the bottom quarter, the diverged one first
    assert all(m.src in (2, 4) for m in moves)  # ... copy from the top quarter
    for seed in range(20):
        moves = policy.choose(values, hparams, space, rng=random.Random(seed),
                              exploit="tournament")
        assert 1 in [m.dst for m in moves]  # a diverged member is always replaced
        for m in moves:
            assert math.isfinite(values[m.src])
            assert not values[m.src] >= values[m.dst]
        dsts = [m.dst for m in moves]
        for k, m in enumerate(moves):  # a source is read before it is overwritten
            assert m.src not in dsts[:k]
    with pytest.raises(ValueError, match="quantile"):
        policy.choose(values, hparams, space, rng=random.Random(0), quantile=0.7)


def test_piecewise_schedule():
    s = schedules.create({"name": "piecewise", "values": [1.0, 2.0, 3.0], "milestones": [2, 5]})
    assert [s(k) for k in (0, 1, 2, 4, 5, 100)] == [1.0, 1.0, 2.0, 2.0, 3.0, 3.0]
    assert s(torch.tensor([0, 3, 7])).tolist() == [1.0, 2.0, 3.0]
    assert schedules.create({"name": "piecewise", "values": [0.1], "milestones": []})(9) == 0.1
    for bad, match in (({"values": [1.0, 2.0], "milestones": []}, "1 entries"),
                       ({"values": [1.0, 2.0, 3.0], "milestones": [5, 2]}, "increasing"),
                       ({"values": [], "milestones": []}, "at least one"),
                       ({"values": 3, "milestones": []}, "list of numbers")):
        with pytest.raises(ValueError, match=match):
            schedules.create({"name": "piecewise", **bad})


# -- exploit, lineage, divergence ----------------------------------------------------------------
def test_exploit_copies_exactly_the_sources_weights_state_and_hparams():
    pbt = PBT(_task(), "adam", ADAM, population=4, interval=5, steps=20, seed=0)
    for _ in range(6):
        pbt.pop.step()
    engine = pbt.pop.engine
    before = {k: v.clone() for k, v in engine.params.items()}
    new = {**pbt.configs[2], "lr": 0.0123}
    pbt.apply(policy.Move(dst=0, src=2, hparams=new))
    for name, p in engine.params.items():
        assert torch.equal(p[0], before[name][2])
        assert torch.equal(p[1], before[name][1]) and torch.equal(p[3], before[name][3])
    states = [s for s in engine.optimizer.state.values() if s]
    assert states
    for state in states:
        for value in state.values():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                assert torch.equal(value[0], value[2])
    assert float(engine.read_hparam("lr")[0]) == pytest.approx(0.0123)
    assert float(engine.read_hparam("beta1")[0]) == float(engine.read_hparam("beta1")[2])
    assert pbt.configs[0] == new and pbt.pop.hparams[0]["lr"] == 0.0123
    assert pbt.pop.steps_done[0] == pbt.pop.steps_done[2] == 6


@pytest.mark.parametrize("exploit", ["truncation", "tournament"])
def test_the_lineage_is_consistent_and_the_schedule_follows_it(exploit):
    result = metaopt.pbt(_task(), "sgd", SGD, population=6, interval=5, steps=40, seed=2,
                         exploit=exploit, resample=0.3)
    lineage = result.lineage
    assert [iv.end for iv in lineage.intervals] == list(range(5, 45, 5))
    lineage.check()  # every parent existed, finished the interval before, and was better
    assert result.exploits == sum(p != i for iv in lineage.intervals[1:]
                                  for i, p in enumerate(iv.parents)) > 0
    best = result.best
    assert best.value == min(v for v in result.values if math.isfinite(v))
    hparams, schedule = discovered(lineage, best.member, result.space, 40)
    assert (hparams, schedule) == (best.hparams, best.schedule)
    ancestry = lineage.ancestry(best.member)
    drivers = schedules.drivers(schedule or {}, lambda key: hparams[key])
    for iv, slot in zip(lineage.intervals, ancestry):
        for k in (iv.start, iv.end - 1):
            for name in ("lr", "momentum"):
                want = iv.hparams[slot][name]
                got = drivers[name](k) if name in drivers else hparams[name]
                assert got == want


def test_a_diverging_member_is_replaced_and_the_run_goes_on():
    initial = [{"lr": 1e8}] + [{}] * 5  # member 0 blows up at once; the others are sampled
    result = run_pbt(_task(), "sgd", SGD, population=6, interval=5, steps=30, seed=1,
                     initial=initial)
    first, second = result.lineage.intervals[:2]
    assert math.isnan(first.values[0]) and second.parents[0] != 0
    assert result.steps == 30 and result.best is not None
    assert math.isfinite(result.values[0])  # it trained on from a better member's weights
    result.lineage.check()


def test_a_schedule_space_gives_each_member_its_own_schedule():
    space = {"lr": {"low": 1e-2, "high": 3e-2, "log": True}}
    result = run_pbt(_task(), "adam", space, population=4, interval=5, steps=20, seed=0,
                     schedule={"name": "cosine", "eta_min_rel": {"low": 0.0, "high": 0.5}})
    assert "schedule.eta_min_rel" in result.hparams[0]
    lr = result.best.schedule["lr"]
    assert lr["name"] == "piecewise" and len(lr["values"]) == 20  # a cosine, step by step
    replay = metaopt.train(_task(), "adam", result.best.hparams, schedule=result.best.schedule,
                           steps=20, seed=result.best.seed)
    assert replay.ok and math.isfinite(replay.value)


def test_pbt_without_exploit_equals_a_plain_population():
    task = _task(30)
    result = run_pbt(task, "adam", ADAM, population=4, interval=7, steps=30, seed=3,
                     exploit="none")
    hparams = [result.space.optimizer_hparams(h) for h in result.lineage.intervals[0].hparams]
    pop = Population(task, "adam", hparams, seed=3)
    plain = pop.run(30, progress=False)
    assert [m.value for m in plain.members] == result.values
    for name, p in pop.engine.params.items():
        assert torch.equal(p, result.population.engine.params[name])
    assert result.exploits == 0 and plain.evaluations == result.evaluations


def _final(result):
    return ([p.clone() for p in result.population.engine.params.values()], result.values,
            json.dumps(runs.plain(result.lineage.as_dict())))


def test_a_resumed_run_is_bit_identical_to_an_uninterrupted_one(tmp_path):
    settings = dict(population=5, interval=4, steps=24, seed=4, initial=[{"lr": 1e8}] + [{}] * 4)
    whole = run_pbt(_task(), "sgd", SGD, checkpoint=tmp_path / "whole.pt", **settings)
    part = PBT(_task(), "sgd", SGD, checkpoint=tmp_path / "part.pt", **settings)
    for _ in range(3):  # three intervals, then the process "dies"
        part._interval(None)
        part.save()
    del part
    resumed = PBT(_task(), "sgd", SGD, checkpoint=tmp_path / "part.pt", **settings)
    assert resumed.step == 12
    runners = [r for opt in checkpoint._optimizers(resumed.pop)
               for r in getattr(opt, "_runners", {}).values()]
    assert runners and not any(r.rent for r in runners), "a restored core runner would compile"
    again = resumed.run()
    a, b = _final(whole), _final(again)
    assert all(torch.equal(x, y) for x, y in zip(a[0], b[0])) and a[1:] == b[1:]
    assert again.evaluations == whole.evaluations
    with pytest.raises(metaopt.pbt.ResumeMismatch, match="interval"):
        PBT(_task(), "sgd", SGD, checkpoint=tmp_path / "part.pt", **{**settings, "interval": 3})


# -- the command ---------------------------------------------------------------------------------
PBT_YAML = """\
name: tiny-pbt
task: logistic_breast_cancer
steps: 900
seed: 0
pbt:
  optimizer: sgd
  space:
    lr: {low: 1.0e-3, high: 1.0, log: true}
    momentum: {low: 0.5, high: 0.95}
  population: 6
  interval: 15
  quantile: 0.25
  resample: 0.25
"""


def write(tmp_path, text, name="exp.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def pbt_command(*args):
    return [sys.executable, "-m", "metaopt.cli", "pbt", *map(str, args), "--no-progress"]


@pytest.mark.parametrize("old,new,key", [
    ("quantile: 0.25", "quantile: 0.7", "pbt.quantile"),
    ("interval: 15", "interval: 0", "pbt.interval"),
    ("    momentum: {low: 0.5, high: 0.95}", "    foo: {low: 0.1, high: 0.2}", "pbt.space.foo"),
    ("resample: 0.25", "resample: 0.25\n  backend: ray\n  ray_address: 127.0.0.1:1",
     "pbt.storage_path"),
    ("resample: 0.25", "resample: 0.25\n  backend: ray\n  exploit: tournament", "pbt.exploit"),
    ("resample: 0.25", "resample: 0.25\n  ray_address: 127.0.0.1:1", "pbt.ray_address"),
    ("optimizer: sgd", "optimizer: sgdd", "pbt.optimizer"),
])
def test_malformed_pbt_sections_give_one_line_and_write_nothing(tmp_path, capsys, old, new,
                                                                 key):
    out = tmp_path / "run"
    code = cli.main(["pbt", str(write(tmp_path, PBT_YAML.replace(old, new))), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "exp.yaml" in err and key in err and "Traceback" not in err
    assert not out.exists()


def test_a_killed_run_resumes_bit_identical_and_best_yaml_replays(tmp_path, capsys):
    exp = write(tmp_path, PBT_YAML)
    out = tmp_path / "killed"
    saved = out / "population.pt"
    proc = subprocess.Popen(pbt_command(exp, "--out", out), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 90
        while not saved.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # a few intervals more, still mid-run
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "summary.json").exists(), "the run ended before it was killed"
    at_kill = torch.load(saved, weights_only=True)["step"]
    assert 0 < at_kill < 900
    resumed = subprocess.run(pbt_command(exp, "--out", out), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    whole = subprocess.run(pbt_command(exp, "--out", tmp_path / "whole"), capture_output=True,
                           text=True)
    assert whole.returncode == 0, whole.stderr
    a = torch.load(saved, weights_only=True)
    b = torch.load(tmp_path / "whole" / "population.pt", weights_only=True)
    for name, value in b["population"]["params"].items():
        assert torch.equal(a["population"]["params"][name], value)
    assert a["configs"] == b["configs"] and a["exploits"] == b["exploits"] > 0
    assert json.dumps(runs.plain(a["lineage"])) == json.dumps(runs.plain(b["lineage"]))
    first, second = (runs.read_summary(d) for d in (out, tmp_path / "whole"))
    assert first["best"] == second["best"] and first["resumed_from"] == at_kill
    assert first["command"] == "pbt" and 0 < first["evaluations"] == second["evaluations"]
    assert (out / "best.yaml").read_text() == (tmp_path / "whole" / "best.yaml").read_text()
    for name in ("lineage.json", "lineage.png", "hparams.png", "report.md"):
        assert (out / name).exists(), name
    # the best member's discovered schedule, replayed on one model by metaopt train
    spec = yaml.safe_load((out / "best.yaml").read_text())
    assert spec["train"].get("schedule") == first["best"]["schedule"] is not None
    assert all(s["name"] == "piecewise" and all(m % 15 == 0 for m in s["milestones"])
               for s in spec["train"]["schedule"].values())
    assert cli.main(["train", str(out / "best.yaml"), "--out", str(tmp_path / "replay")]) == 0
    assert math.isfinite(runs.read_summary(tmp_path / "replay")["best"]["value"])
    # metaopt report draws the run's figures again from lineage.json and writes the same
    # report.md the command wrote (the outcome table and the best member's ancestry)
    written = (out / "report.md").read_text()
    (out / "lineage.png").unlink()
    assert cli.main(["report", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "![Lineage](lineage.png)" in report and "![Hyperparameters](hparams.png)" in report
    assert report == written and "## The best member's ancestry" in report
    assert (out / "lineage.png").exists()
    # the experiment changed since: one line naming the key, nothing written
    capsys.readouterr()
    before = (out / "summary.json").stat().st_mtime_ns
    changed = write(tmp_path, PBT_YAML.replace("interval: 15", "interval: 10"))
    assert cli.main(["pbt", str(changed), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pbt.interval" in err[0] and "exp.yaml" in err[0], err
    assert (out / "summary.json").stat().st_mtime_ns == before
