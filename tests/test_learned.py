"""The learned optimizer: meta-gradients, meta-training, the optimizer facade, the CLI."""

import copy
import io
import json
import math

import pytest
import torch

import learned
from learned import nets, problems
from learned.config import MetaTrainConfig
from learned.meta_train import STATE_FILE, meta_train
from learned.optimizer import LSTMOptimizer
from learned.per_tensor import coordinate_step
from learned.rollout import rollout
from learned.unroll import Pool, unroll
from metaopt import cli, optim

MODELS = [{"kind": "per_tensor"}, {"kind": "coordinatewise", "hidden": 4}]


def _net(config, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    net = nets.build(config).to(dtype)
    with torch.no_grad():  # away from the zero-initialised head: every weight matters
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return net


def _pool(name, net, count=2, horizon=50, dtype=torch.float64):
    seeds = torch.arange(count, dtype=torch.int64) + 7
    return Pool.start(problems.get(name), net, seeds, torch.full((count,), horizon)).to(dtype)


# -- meta-gradients ---------------------------------------------------------------------------
@pytest.mark.parametrize("config", MODELS, ids=lambda c: c["kind"])
@pytest.mark.parametrize("name", ["quadratic", "digits_mlp_sigmoid"])
def test_second_order_meta_gradient_matches_finite_differences(name, config):
    net = _net(config)
    start = _pool(name, net, horizon=8)  # steps 3-5 of 8: the (t/8)^2 weights matter
    unroll(net, start, 2, second_order=True)  # leave the all-zero initial state behind

    def meta_loss():
        pool = copy.deepcopy(start)
        return unroll(net, pool, 3, second_order=True, kind="log", power=2.0)

    loss, _ = meta_loss()
    params = list(net.parameters())
    grads = torch.autograd.grad(loss, params)
    gen = torch.Generator().manual_seed(1)
    direction = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
    analytic = sum((g * d).sum() for g, d in zip(grads, direction))
    eps = 1e-6
    with torch.no_grad():
        for p, d in zip(params, direction):
            p.add_(eps * d)
        plus = meta_loss()[1]
        for p, d in zip(params, direction):
            p.sub_(2 * eps * d)
        minus = meta_loss()[1]
    numeric = (plus - minus) / (2 * eps)
    assert abs(float(analytic)) > 1e-6
    assert float(analytic) == pytest.approx(numeric, rel=1e-4, abs=1e-9)


def test_first_order_surrogate_equals_detached_gradient_unroll():
    """The paper's approximation: the g·θ surrogate gives the meta-gradient of the true losses
    with the optimizee gradients treated as constants."""
    net = _net(MODELS[0])
    start = _pool("quadratic", net, count=3)
    loss, _ = unroll(net, copy.deepcopy(start), 4, second_order=False, kind="sum")
    fast = torch.autograd.grad(loss, list(net.parameters()))
    family, pool = start.family, copy.deepcopy(start)
    theta, state, total = pool.problems.params, pool.states, 0.0
    for t in range(1, 5):
        with torch.enable_grad():
            leaf = [p.detach().requires_grad_(True) for p in theta]
            f = family.loss(leaf, pool.problems.data, pool.problems.seeds, pool.t + t - 1)
            grads = torch.autograd.grad(f.sum(), leaf)
        steps = [net(g, s, torch.ones((), dtype=torch.float64)) for g, s in zip(grads, state)]
        theta = [p + d for p, (d, _) in zip(theta, steps)]
        state = [s for _, s in steps]
        total = total + family.loss(theta, pool.problems.data, pool.problems.seeds,
                                    pool.t + t).mean()
    slow = torch.autograd.grad(total, list(net.parameters()))
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b)


# -- meta-training ----------------------------------------------------------------------------
def _tiny(**overrides):
    base = dict(tasks=("quadratic",), batch=32, unroll=5, horizon=20, meta_steps=30,
                meta_lr=3e-2, eval_every=30, eval_seeds=1, checkpoint_every=5)
    return MetaTrainConfig(**{**base, **overrides})


def test_meta_training_lowers_the_meta_loss(tmp_path):
    result = meta_train(_tiny(), tmp_path, progress=False)
    before, after = result.val_curve[0][1], result.val_curve[-1][1]
    assert after < before - 0.1, result.val_curve
    first = sum(v for _, v in result.curve[:5]) / 5
    last = sum(v for _, v in result.curve[-5:]) / 5
    assert last < first
    payload = torch.load(result.checkpoint, weights_only=True)
    assert payload["meta"]["value"] == pytest.approx(result.value)


def test_paper_configuration_meta_trains(tmp_path):
    config = MetaTrainConfig.paper(tasks=("quadratic",), batch=16, unroll=5, horizon=10,
                                   meta_steps=3, eval_every=3, eval_seeds=1,
                                   model_args={"hidden": 4, "layers": 2})
    result = meta_train(config, tmp_path, progress=False)
    assert math.isfinite(result.value) and result.steps == 3
    net = nets.load(result.checkpoint)
    assert net.kind == "coordinatewise" and net.layers == 2


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    whole = meta_train(_tiny(meta_steps=10, eval_every=5), tmp_path / "a", progress=False)
    meta_train(_tiny(meta_steps=5, eval_every=5), tmp_path / "b", progress=False)
    resumed = meta_train(_tiny(meta_steps=10, eval_every=5), tmp_path / "b", progress=False)
    assert resumed.curve == whole.curve and resumed.val_curve == whole.val_curve
    a, b = nets.read(whole.checkpoint), nets.read(resumed.checkpoint)
    for key in a["weights"]:
        torch.testing.assert_close(a["weights"][key], b["weights"][key], rtol=0, atol=0)
    with pytest.raises(ValueError, match="different recipe"):
        meta_train(_tiny(meta_steps=10, unroll=4), tmp_path / "b", progress=False)


# -- the optimizer ----------------------------------------------------------------------------
def test_optimizer_follows_the_meta_trained_rule():
    """The optimizer class (population and single-model paths) applies exactly the update
    meta-training differentiates (float64)."""
    net = _net(MODELS[0])
    family = problems.get("digits_mlp_sigmoid")
    seeds = torch.arange(3) + 11
    run = rollout(family, seeds, lambda ps, n: LSTMOptimizer(ps, checkpoint=net, population=n,
                                                             backend="eager"),
                  6, dtype=torch.float64)
    pool = Pool.start(family, net, seeds, torch.full((3,), 6)).to(torch.float64)
    with torch.no_grad():
        unroll(net, pool, 6, second_order=False)
    final = family.final_loss(pool.problems.params, pool.problems.data)
    torch.testing.assert_close(run.final.double(), final, rtol=1e-5, atol=0)
    # one model (no population): a [1, ...] tensor's statistics are member 0's
    single = rollout(family, seeds[:1], lambda ps, n: LSTMOptimizer(ps, checkpoint=net), 6,
                     dtype=torch.float64)
    torch.testing.assert_close(single.final, run.final[:1])


def test_population_equals_separate_optimizers():
    net = _net(MODELS[0])
    torch.manual_seed(0)
    params = [torch.randn(3, 5, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)]
    stacked = [p.clone().requires_grad_(True) for p in params]
    members = [[p[i].clone().requires_grad_(True) for p in params] for i in range(3)]
    pop = LSTMOptimizer(stacked, checkpoint=net, population=3, lr=[1.0, 0.5, 2.0])
    singles = [LSTMOptimizer(m, checkpoint=net, lr=lr) for m, lr in zip(members, [1, 0.5, 2])]
    for _ in range(5):
        grads = [torch.randn_like(p) for p in params]
        for p, g in zip(stacked, grads):
            p.grad = g
        pop.step()
        for i, (opt, ms) in enumerate(zip(singles, members)):
            for p, g in zip(ms, grads):
                p.grad = g[i]
            opt.step()
    for i, ms in enumerate(members):
        for p, m in zip(stacked, ms):
            torch.testing.assert_close(p[i], m, rtol=1e-12, atol=1e-12)
    pop.reset_member(1)
    assert float(pop.state[stacked[0]]["step"][1]) == 0 and float(
        pop.state[stacked[0]]["step"][0]) == 5


@pytest.mark.parametrize("config", MODELS, ids=lambda c: c["kind"])
def test_state_dict_round_trips(config):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1))
    x, y = torch.randn(32, 6), torch.randn(32, 1)

    def step(opt, module):
        opt.zero_grad()
        torch.nn.functional.mse_loss(module(x), y).backward()
        opt.step()

    opt = LSTMOptimizer(model.parameters(), checkpoint=_net(config, torch.float32), lr=0.7)
    for _ in range(3):
        step(opt, model)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    twin = copy.deepcopy(model)
    other = LSTMOptimizer(twin.parameters(), checkpoint=_net(config, torch.float32, seed=5))
    other.load_state_dict(saved)
    assert float(other.param_groups[0]["lr"]) == pytest.approx(0.7)
    for _ in range(3):
        step(opt, model)
        step(other, twin)
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_unrolled_and_matmul_kernels_agree():
    net = _net(MODELS[0])
    grad = torch.randn(2, 50, dtype=torch.float64)
    state = net.init_state(grad)
    coef, _ = net.coefficients(state, torch.ones((), dtype=torch.float64),
                               (grad * grad).mean(1))
    moments = [state[f"m{i}"] for i in range(len(net.betas))]
    a = coordinate_step(grad, moments, state["v"], coef, net.w1, net.w2, unrolled=True)
    b = coordinate_step(grad, moments, state["v"], coef, net.w1, net.w2, unrolled=False)
    for x, y in zip(a[0:1] + a[2:], b[0:1] + b[2:]):
        torch.testing.assert_close(x, y)


def test_update_is_odd_in_the_gradient():
    """Flipping every gradient flips every update (no drift the problem does not have)."""
    net = _net(MODELS[0])
    g = torch.randn(1, 40, dtype=torch.float64)
    d1, _ = net(g, net.init_state(g), torch.ones((), dtype=torch.float64))
    d2, _ = net(-g, net.init_state(g), torch.ones((), dtype=torch.float64))
    torch.testing.assert_close(d1, -d2)


@pytest.mark.slow
def test_compiled_kernel_matches_eager():
    torch.manual_seed(0)
    params = [torch.randn(64, 33), torch.randn(33)]
    grads = [[torch.randn_like(p) for p in params] for _ in range(3)]
    ends = []
    for backend in ("eager", "compiled"):
        ps = [p.clone().requires_grad_(True) for p in params]
        opt = LSTMOptimizer(ps, backend=backend)
        for gs in grads:
            for p, g in zip(ps, gs):
                p.grad = g
            opt.step()
        ends.append(ps)
    for a, b in zip(*ends):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# -- the shipped checkpoint and the registry --------------------------------------------------
def test_shipped_checkpoint_loads_with_weights_only_and_trains():
    payload = torch.load(nets.DEFAULT_CHECKPOINT, weights_only=True)
    assert payload["format"] == nets.FORMAT
    assert nets.DEFAULT_CHECKPOINT.stat().st_size < 200_000
    assert "lstm" in optim.names() and optim.lookup("lstm") is learned.LSTMOptimizer
    family, seeds = problems.get("quadratic"), torch.arange(128) + 900_000
    run = rollout(family, seeds, lambda ps, n: optim.create("lstm", ps, population=n), 100)
    start = family.sample(seeds)
    assert float(run.final.mean()) < 0.1 * float(family.final_loss(start.params,
                                                                   start.data).mean())


def test_metaopt_train_uses_the_learned_optimizer():
    from metaopt.train import train

    result = train("digits_mlp_sigmoid", "lstm", steps=60, progress=False)
    assert result.ok and result.value < 1.0


def test_hashed_minibatches_do_not_depend_on_the_other_problems():
    seeds, step = torch.tensor([3, 9, 27]), torch.tensor([5, 5, 5])
    rows = problems.hashed_rows(seeds, step, 16, 1000)
    alone = problems.hashed_rows(seeds[1:2], step[1:2], 16, 1000)
    assert torch.equal(rows[1:2], alone)
    assert not torch.equal(rows[0], rows[1]) and int(rows.min()) >= 0 and int(rows.max()) < 1000


# -- the command ------------------------------------------------------------------------------
YAML = """\
name: tiny-meta
task: quadratic
steps: 30
meta_train:
  tasks: [quadratic]
  batch: {quadratic: 16}
  unroll: 5
  horizon: 10
  meta_steps: 4
  eval_every: 2
  eval_seeds: 1
"""


def test_cli_meta_train_writes_summary(tmp_path, capsys):
    path = tmp_path / "exp.yaml"
    path.write_text(YAML)
    out = tmp_path / "run"
    assert cli.main(["meta-train", str(path), "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["command"] == "meta-train" and summary["best"]["optimizer"] == "lstm"
    checkpoint = summary["best"]["hparams"]["checkpoint"]
    assert torch.load(checkpoint, weights_only=True)["format"] == nets.FORMAT
    assert math.isfinite(summary["best"]["value"]) and summary["evaluations"] > 0
    assert summary["task_check"]["status"] == "ok"
    assert (out / "meta_loss.png").exists() and (out / STATE_FILE).exists()
    assert "meta_loss.png" in (out / "report.md").read_text()


@pytest.mark.parametrize("edit,key", [
    (("tasks: [quadratic]", "tasks: [nosuch]"), "meta_train.tasks"),
    (("unroll: 5", "unroll: -5"), "meta_train.unroll"),
    (("meta_steps: 4", "meta_stepz: 4"), "meta_train.meta_stepz"),
    (("batch: {quadratic: 16}", "batch: {other: 16}"), "meta_train.batch"),
])
def test_cli_meta_train_bad_input(tmp_path, capsys, edit, key):
    path = tmp_path / "exp.yaml"
    path.write_text(YAML.replace(*edit))
    out = tmp_path / "run"
    assert cli.main(["meta-train", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and key in err, err
    assert not out.exists()
