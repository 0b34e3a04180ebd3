"""The core's seams: one hyperparameter address, plugins by entry point, one divergence rule."""

import ast
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import metaopt
from metaopt import divergence
from metaopt.monitor import Monitor
from metaopt.optim import hyperparams, registry
from metaopt.population import Population
from metaopt.tasks import Task


def _task(model=None, losses=None) -> Task:
    """A tiny float64 regression (or, with ``losses``, a task whose training loss at step k is
    ``losses[k]`` whatever the weights)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 3, generator=g, dtype=torch.float64)
    y = x.sum(1, keepdim=True)

    def build():
        return nn.Linear(3, 2, bias=False).double() if model is None else model()

    def loss(module, batch):
        if losses is not None:
            return module.weight.sum() * 0 + batch
        xb, yb = batch
        return ((module(xb) - yb) ** 2).mean()

    def data(generator):
        if losses is not None:
            yield from (torch.tensor(v, dtype=torch.float64) for v in losses)
            while True:
                yield torch.tensor(0.0, dtype=torch.float64)
        while True:
            idx = torch.randint(0, 32, (8,), generator=generator)
            yield x[idx], y[idx]

    @torch.no_grad()
    def evaluate(module):
        return 0.0 if losses is not None else float(loss(module, (x, y)))

    return Task("seams", build, loss, data, evaluate, steps=3)


def _other_value(info: hyperparams.HyperInfo) -> float:
    """A valid value of ``info`` that differs from its default."""
    d = info.default
    if d is None:
        return 1e-30
    if d == 0:
        return 0.5 if info.high >= 1 else info.high / 2
    value = d * 2 if d > 0 and d * 2 < info.high else d * 0.9
    return float(round(value)) if info.name == "lookahead_k" else value


CASES = [(name, hp) for name in metaopt.optim.names()
         for hp in metaopt.optim.hyperparameters(name)]


def test_every_optimizer_lists_its_hyperparameters_with_its_own_defaults():
    assert metaopt.optim.hyperparameters("lion")["beta2"].default == 0.99
    assert metaopt.optim.hyperparameters("adam")["beta2"].default == 0.999
    assert metaopt.optim.hyperparameters("adafactor")["eps2"].default == 1e-3
    lr = metaopt.optim.hyperparameters("adamw")["lr"]
    assert lr.log and lr.low == 0 and not lr.contains(-1.0)
    assert {"lookahead_k", "lookahead_alpha", "beta1"} <= set(
        metaopt.optim.hyperparameters("lookahead"))
    assert set(metaopt.optim.hyperparameters("lookahead", base="sgd")) >= {"momentum"}
    assert len(CASES) > 60


@pytest.mark.parametrize("name", metaopt.optim.names())
def test_unset_hyperparameters_are_the_class_defaults(name):
    opt = metaopt.optim.create(name, [torch.zeros(2, 2, requires_grad=True)])
    for flat, info in metaopt.optim.hyperparameters(name).items():
        value = hyperparams.read(opt, flat)
        assert (value is None) if info.default is None else float(value) == info.default


def test_a_partial_tuple_keeps_the_class_own_default():
    lion = metaopt.optim.create("lion", [torch.zeros(2, requires_grad=True)], beta1=0.95)
    assert tuple(map(float, lion.param_groups[0]["betas"])) == (0.95, 0.99)
    ada = metaopt.optim.create("adafactor", [torch.zeros(2, 2, requires_grad=True)], eps2=0.01)
    assert ada.param_groups[0]["eps"][0] is None and float(ada.param_groups[0]["eps"][1]) == 0.01


@pytest.mark.parametrize("name,flat", CASES)
def test_a_value_set_by_flat_name_reads_back_everywhere(name, flat):
    info = metaopt.optim.hyperparameters(name)[flat]
    value = _other_value(info)
    # through create
    opt = metaopt.optim.create(name, [torch.zeros(2, 2, requires_grad=True)], **{flat: value})
    assert float(hyperparams.read(opt, flat)) == pytest.approx(value, rel=1e-12)
    assert hyperparams.values(opt)[flat] == pytest.approx(value, rel=1e-12)
    # through a schedule in metaopt.train (a step schedule that never decays)
    spec = {"name": "step", "step_size": 1000, "gamma": 0.5, "base_lr": value}
    result = metaopt.train(_task(), name, {}, schedule={flat: spec}, steps=1)
    assert result.final_hparams[flat] == pytest.approx(value, rel=1e-12)
    # through set_member_hparams on a population member
    pop = Population(_task(), name, [{}, {}], seeds=[0, 1])
    if info.default is None:
        if pop.engine.mode == "stacked":  # unset for all stacked members: one member alone
            # can't be set (a loop's members each have their own optimizer)
            with pytest.raises(ValueError, match="unset"):
                pop.set_hparams(1, {flat: value})
        pop = Population(_task(), name, [{flat: 2 * value}, {flat: 2 * value}], seeds=[0, 1])
    pop.set_hparams(1, {flat: value})
    members = pop.engine.read_hparam(flat)
    assert float(members[1]) == pytest.approx(value, rel=1e-6)
    others = 2 * value if info.default is None else info.default
    assert float(members[0]) == pytest.approx(others, rel=1e-6)


def test_composites_and_members_are_addressed_the_same_way():
    a, b = torch.zeros(2, 2, requires_grad=True), torch.zeros(3, requires_grad=True)
    opt = metaopt.optim.Composite([{"params": [a], "optimizer": "sgd", "lr": 0.1},
                                   {"params": [b], "optimizer": "adamw", "lr": 0.01}])
    hyperparams.write(opt, "lr", 0.2, group=1)
    assert hyperparams.values(opt)["lr"] == 0.1 and hyperparams.values(opt)["lr/1"] == 0.2
    with pytest.raises(KeyError, match="beta1"):
        hyperparams.write(opt, "beta1", 0.5)  # group 0 (SGD) has no beta1
    stacked = metaopt.optim.AdamW([torch.zeros(3, 2, requires_grad=True)], population=3)
    hyperparams.write(stacked, "beta2", 0.9, member=2)
    assert hyperparams.read(stacked, "beta2").tolist() == pytest.approx([0.999, 0.999, 0.9])
    with pytest.raises(ValueError, match="beta2"):
        hyperparams.write(stacked, "beta2", 1.5, member=0)
    assert float(hyperparams.read(stacked, "beta2", member=0)) == pytest.approx(0.999)
    plain = torch.optim.Adam([torch.zeros(2, requires_grad=True)], betas=(0.8, 0.9))
    hyperparams.write(plain, "beta2", 0.95)
    assert plain.param_groups[0]["betas"] == (0.8, 0.95)


def test_a_plugin_joins_through_the_entry_point(tmp_path, monkeypatch):
    (tmp_path / "dummy_metaopt_plugin.py").write_text(textwrap.dedent("""
        import metaopt.optim

        class DummySGD(metaopt.optim.SGD):
            pass
    """))
    info = tmp_path / "dummy_metaopt_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: dummy-metaopt-plugin\n"
                                   "Version: 0.1\n")
    (info / "entry_points.txt").write_text("[metaopt.optimizers]\n"
                                           "dummysgd = dummy_metaopt_plugin:DummySGD\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert "dummysgd" in metaopt.optim.names()
        opt = metaopt.optim.create("dummysgd", [torch.zeros(2, requires_grad=True)], lr=0.3)
        assert type(opt).__name__ == "DummySGD" and float(opt.param_groups[0]["lr"]) == 0.3
    finally:
        registry._REGISTRY.pop("dummysgd", None)


def test_the_core_imports_nothing_above_it():
    above = ("learned", "metaopt.population", "metaopt.population_engines", "metaopt.tasks",
             "metaopt.commands", "metaopt.train", "metaopt.search", "metaopt.experiment")
    core = Path(metaopt.optim.__file__).parent
    for file in core.glob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            bad = [n for n in names if n == "metaopt" or n.startswith(above)]
            assert not bad, f"{file.name} imports {bad}"


def test_lstm_comes_by_entry_point_without_importing_learned(tmp_path):
    code = textwrap.dedent("""
        import sys, torch
        import metaopt.optim
        assert "learned.optimizer" not in sys.modules  # it comes by entry point
        opt = metaopt.optim.create("lstm", [torch.zeros(3, requires_grad=True)])
        assert type(opt).__name__ == "LSTMOptimizer"
    """)
    subprocess.run([sys.executable, "-c", code], check=True)
    (tmp_path / "exp.yaml").write_text("name: lstm-yaml\ntask: quadratic\nsteps: 3\n"
                                       "train: {optimizer: lstm, landscape: false}\n")
    out = subprocess.run([sys.executable, "-m", "metaopt.cli", "train", str(tmp_path / "exp.yaml"),
                          "--out", str(tmp_path / "run")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "run" / "summary.json").exists()


SCRIPTS = {  # first loss positive, negative, zero: (losses, step at which it diverges)
    "positive": ([2.0, 1.9e6, 2.1e6, 1.0], 2),
    "negative": ([-2.0, 1.9e6, 2.1e6, 1.0], 2),
    "zero": ([0.0, 5e5, 1.1e6, 1.0], 2),
    "small": ([1e-3, 9e5, 0.5, 1.0], None),
    "nan": ([1.0, math.nan, 1.0, 1.0], 1),
}


@pytest.mark.parametrize("script", SCRIPTS)
def test_divergence_is_judged_alike_by_train_population_and_monitor(script):
    losses, expected = SCRIPTS[script]
    monitor = Monitor()
    at_monitor = next((k for k, v in enumerate(losses) if monitor.observe(k, v)), None)
    run = metaopt.train(_task(losses=losses), "sgd", {"lr": 0.0}, steps=len(losses))
    pop = Population(_task(losses=losses), "sgd", [{"lr": 0.0}] * 2, seeds=[0, 1])
    member = pop.run(len(losses)).members[0]
    assert at_monitor == run.diverged_at == member.diverged_at == expected
    assert (run.status, member.status) == (("ok", "ok") if expected is None
                                           else ("diverged", "diverged"))
    if expected is not None:
        assert run.reason == member.reason == divergence.check(
            losses[expected], losses[0], expected)
