"""Learning-rate-free optimizers against the authors' packages, and the train / eval switch.

Prodigy (``prodigyopt``), D-Adapt Adam / SGD (``dadaptation``) and Schedule-Free AdamW / SGD
(``schedulefree``) follow the packages' trajectories in float64; their shared invariants
(state dicts, dtypes, populations, a quadratic's optimum) run through ``LR_FREE_CASES`` in
optim_cases.py. The trainers (``metaopt.train``, the population engines) evaluate
Schedule-Free at its averaged weights and step at the gradient point.
"""

import copy

import pytest
import torch
from optim_cases import problem, run
from toy_tasks import regression

import metaopt
from metaopt.optim import (
    AdamWScheduleFree,
    DAdaptAdam,
    DAdaptSGD,
    Prodigy,
    SGDScheduleFree,
    create,
)
from metaopt.population import Population

dadaptation = pytest.importorskip("dadaptation")
prodigyopt = pytest.importorskip("prodigyopt")
schedulefree = pytest.importorskip("schedulefree")

STEPS = 20
TOL = dict(rtol=1e-10, atol=1e-12)


def assert_params_close(ours, theirs, tol=TOL):
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.detach(), b.detach(), **tol)


def train_steps(opt, ps, loss, steps):
    for _ in range(steps):
        opt.zero_grad()
        loss(ps).backward()
        opt.step()


def package_run(cls, params, loss, steps, groups=None, **kwargs):
    """The authors' optimizer (in train mode where it has one) over copies of ``params``."""
    ps = [p.detach().clone().requires_grad_(True) for p in params]
    opt = cls(groups(ps) if groups else ps, **kwargs)
    if hasattr(opt, "train"):
        opt.train()
    train_steps(opt, ps, loss, steps)
    return ps, opt


PARITY = [
    (Prodigy, prodigyopt.Prodigy,
     [{}, {"weight_decay": 0.1}, {"decouple": False, "weight_decay": 0.1,
                                  "use_bias_correction": True},
      {"betas": (0.0, 0.99), "safeguard_warmup": True, "d_coef": 0.5, "growth_rate": 1.05},
      {"beta3": 0.9, "lr": 0.5, "d0": 1e-4}]),
    (DAdaptAdam, dadaptation.DAdaptAdam,
     [{}, {"weight_decay": 0.1}, {"weight_decay": 0.1, "decouple": True,
                                  "use_bias_correction": True},
      {"betas": (0.5, 0.9), "growth_rate": 1.05, "d0": 1e-3, "lr": 0.5, "eps": 1e-4}]),
    (DAdaptSGD, dadaptation.DAdaptSGD,
     [{}, {"momentum": 0.9}, {"momentum": 0.5, "weight_decay": 0.1, "growth_rate": 1.1},
      {"lr": 0.5, "d0": 1e-3}]),
    (AdamWScheduleFree, schedulefree.AdamWScheduleFree,
     [{}, {"weight_decay": 0.1, "lr": 0.01},
      {"warmup_steps": 5, "r": 0.5, "weight_lr_power": 1.0, "betas": (0.5, 0.99)},
      {"foreach": False, "eps": 1e-4, "lr": 0.02}]),
    (SGDScheduleFree, schedulefree.SGDScheduleFree,
     [{"lr": 0.1}, {"momentum": 0.5, "weight_decay": 0.1, "lr": 0.05},
      {"warmup_steps": 4, "r": 1.0, "lr": 0.2}]),
]
CASES = [(ours, theirs, kw) for ours, theirs, kws in PARITY for kw in kws]


@pytest.mark.parametrize("ours,theirs,kwargs", CASES,
                         ids=[f"{o.__name__}-{kw}" for o, _, kw in CASES])
@pytest.mark.parametrize("backend", ["reference", "eager"])
def test_trajectory_matches_the_authors_package(ours, theirs, kwargs, backend):
    params, loss = problem()
    mine, opt = run(lambda ps: ours(ps, backend=backend, **kwargs), params, loss, STEPS)
    package, ref = package_run(theirs, params, loss, STEPS, **kwargs)
    assert_params_close(mine, package)
    if hasattr(ref, "eval"):  # and at the averaged weights
        opt.eval()
        ref.eval()
        assert_params_close(mine, package)
    else:  # the estimate itself
        assert float(opt.global_scalars()["d"]) == pytest.approx(ref.param_groups[0]["d"],
                                                                  rel=1e-10)


def two_groups(decays):
    """Weights and biases as two groups with their own weight decay (nanoGPT's split)."""
    def groups(ps):
        return [{"params": ps[0::2], "weight_decay": decays[0]},
                {"params": ps[1::2], "weight_decay": decays[1]}]
    return groups


@pytest.mark.parametrize("ours,theirs,kwargs", [
    (Prodigy, prodigyopt.Prodigy, {}),
    (Prodigy, prodigyopt.Prodigy, {"decouple": False}),
    (DAdaptAdam, dadaptation.DAdaptAdam, {"decouple": True}),
    (DAdaptSGD, dadaptation.DAdaptSGD, {"momentum": 0.9}),
], ids=["prodigy", "prodigy-l2", "dadapt_adam", "dadapt_sgd"])
@pytest.mark.parametrize("backend", ["reference", "eager"])
def test_one_step_size_for_every_group(ours, theirs, kwargs, backend):
    """The sums run over all groups, as in the packages (D-Adapt SGD applies the first
    group's decay to every group there, so its groups share one value here)."""
    decays = (0.1, 0.1) if ours is DAdaptSGD else (0.1, 0.0)
    params, loss = problem()
    groups = two_groups(decays)
    mine, opt = run(lambda ps: ours(groups(ps), backend=backend, **kwargs), params, loss,
                    STEPS)
    package, ref = package_run(theirs, params, loss, STEPS, groups=groups, **kwargs)
    assert_params_close(mine, package)
    assert float(opt.global_scalars()["d"]) == pytest.approx(ref.param_groups[0]["d"],
                                                              rel=1e-10)
    assert float(opt.global_scalars()["d"]) > 10 * float(opt.hparams[0]["d0"])  # it adapted


@pytest.mark.parametrize("cls", [Prodigy, DAdaptAdam, DAdaptSGD])
def test_a_member_without_gradient_signal_skips_its_step(cls):
    """Zero gradients (||s|| = 0): the member keeps its weights, D and step count, while the
    other member steps exactly as a separate run."""
    members = [problem(seed=i) for i in range(2)]
    stacked = [torch.stack(ps).requires_grad_(True) for ps in zip(*(m[0] for m in members))]
    opt = cls(stacked, population=2, backend="eager")
    before = [p.detach().clone() for p in stacked]
    for _ in range(5):
        opt.zero_grad()
        members[0][1]([p[0] for p in stacked]).backward()  # member 1 gets zero gradients
        opt.step()
    single, ref = run(lambda ps: cls(ps), members[0][0], members[0][1], 5)
    for s, p, b in zip(stacked, single, before):
        torch.testing.assert_close(s[0].detach(), p.detach(), rtol=1e-12, atol=1e-12)
        assert torch.equal(s[1].detach(), b[1])
    scalars = opt.global_scalars()
    assert scalars["k"].tolist() == [5.0, 0.0]
    assert float(scalars["d"][1]) == float(opt.hparams[0]["d0"][1])
    assert float(scalars["d"][0]) == pytest.approx(float(ref.global_scalars()["d"]), rel=1e-12)


def test_schedule_free_members_switch_with_their_own_beta1():
    P = 3
    betas = ([0.9, 0.5, 0.95], [0.999, 0.9, 0.99])
    members = [problem(seed=i) for i in range(P)]
    stacked = [torch.stack(ps) for ps in zip(*(m[0] for m in members))]

    def total(ps):
        return sum(m[1]([p[i] for p in ps]) for i, m in enumerate(members))

    pop, opt = run(lambda ps: AdamWScheduleFree(ps, lr=0.02, betas=betas, population=P),
                   stacked, total, 8)
    opt.eval()
    assert not opt.training
    for i, (params, loss) in enumerate(members):
        single, single_opt = package_run(schedulefree.AdamWScheduleFree, params, loss, 8,
                                         lr=0.02, betas=(betas[0][i], betas[1][i]))
        single_opt.eval()
        for s, p in zip(pop, single):
            torch.testing.assert_close(s[i].detach(), p.detach(), **TOL)


def test_schedule_free_mode_rules_and_flag():
    x = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = create("schedulefree_sgd", [x], lr=0.1)
    assert opt.training  # a drop-in: no train() needed before the first step
    x.grad = torch.ones(3, dtype=torch.float64)
    opt.step()
    opt.eval()
    opt.eval()  # idempotent, as the package's
    with pytest.raises(RuntimeError, match=r"eval mode.*train\(\)"):
        opt.step()
    sd = copy.deepcopy(opt.state_dict())
    assert sd["param_groups"][0]["train_mode"] is False
    opt.train()
    twin = create("schedulefree_sgd", [x.detach().clone().requires_grad_(True)], lr=0.1)
    twin.load_state_dict(sd)
    assert not twin.training
    assert metaopt.optim.schedule_free("schedulefree_adamw")
    assert metaopt.optim.schedule_free(SGDScheduleFree)
    for name in ("prodigy", "dadapt_adam", "dadapt_sgd", "adamw"):
        assert not metaopt.optim.schedule_free(name)


def test_lr_free_defaults_are_the_packages():
    x = [torch.zeros(3, requires_grad=True)]
    for name, ref in [("prodigy", prodigyopt.Prodigy), ("dadapt_adam", dadaptation.DAdaptAdam),
                      ("dadapt_sgd", dadaptation.DAdaptSGD),
                      ("schedulefree_adamw", schedulefree.AdamWScheduleFree),
                      ("schedulefree_sgd", schedulefree.SGDScheduleFree)]:
        ours = metaopt.optim.hyperparameters(name)
        theirs = ref([torch.zeros(3, requires_grad=True)]).param_groups[0]
        theirs = {**theirs, "beta1": theirs.get("betas", (None,))[0],
                  "beta2": theirs.get("betas", (None, None))[1], "d0": theirs.get("d")}
        for key, info in ours.items():
            assert info.default == theirs[key], (name, key)
        create(name, x)


# -- the trainers' train / eval switch -------------------------------------------------------
def manual_schedule_free(task, steps, seed=0, **kwargs):
    """What a careful user writes with the authors' package: train() to step, eval() to
    evaluate (after ``steps`` steps)."""
    torch.manual_seed(seed)
    module = task.model()
    opt = schedulefree.AdamWScheduleFree(module.parameters(), **kwargs)
    batches = task.data(torch.Generator().manual_seed(seed))
    opt.train()
    train_at_y = None
    for _ in range(steps):
        batch = next(batches)
        opt.zero_grad()
        task.loss(module, batch).backward()
        opt.step()
    train_at_y = task.evaluate(module)
    opt.eval()
    return task.evaluate(module), train_at_y


def test_metaopt_train_evaluates_schedule_free_at_the_averaged_weights():
    task = regression(steps=30)
    hp = {"lr": 0.05, "weight_decay": 0.01}
    at_x, at_y = manual_schedule_free(task, 30, **hp)
    assert abs(at_x - at_y) > 1e-6 * abs(at_x)  # the two weights differ: the check can fail
    # evaluations every 3 steps switch to x and back: the trajectory is unchanged
    for eval_every in (3, 30):
        result = metaopt.train(task, "schedulefree_adamw", hp, eval_every=eval_every)
        assert result.ok
        assert result.value == pytest.approx(at_x, rel=1e-10)
        assert float(task.evaluate(result.module)) == pytest.approx(at_x, rel=1e-10)
    # the authors' class as a factory: metaopt.train switches it to train mode first
    theirs = metaopt.train(task, schedulefree.AdamWScheduleFree, hp, eval_every=3)
    assert theirs.value == pytest.approx(at_x, rel=1e-10)
    mid = metaopt.train(task, "schedulefree_adamw", hp, steps=15, eval_every=5)
    assert mid.val_curve[-1][1] == pytest.approx(manual_schedule_free(task, 15, **hp)[0],
                                                 rel=1e-10)


def test_metaopt_train_resumes_schedule_free_exactly(tmp_path):
    task = regression(steps=24)
    hp = {"lr": 0.05}
    whole = metaopt.train(task, "schedulefree_sgd", hp, eval_every=6)
    path = tmp_path / "run.pt"
    metaopt.train(task, "schedulefree_sgd", hp, steps=12, eval_every=6, checkpoint=path)
    resumed = metaopt.train(task, "schedulefree_sgd", hp, eval_every=6, checkpoint=path,
                            resume=True)
    assert resumed.value == whole.value
    assert resumed.val_curve == whole.val_curve


@pytest.mark.parametrize("engine", ["stacked", "loop"])
@pytest.mark.parametrize("name", ["schedulefree_adamw", "prodigy", "dadapt_sgd"])
def test_population_members_equal_metaopt_train(name, engine):
    """Each member (its own hyperparameters) equals metaopt.train, evaluated mid-run too."""
    task = regression(steps=16)
    hparams = [{"lr": 0.05, "weight_decay": 0.0}, {"lr": 0.5, "weight_decay": 0.01}]
    if name != "schedulefree_adamw":
        hparams = [{"lr": 1.0, "weight_decay": 0.0}, {"lr": 0.5, "weight_decay": 0.01}]
    pop = Population(task, name, hparams, seeds=[0, 1], engine=engine)
    assert pop.engine.mode == engine
    for k in range(16):
        pop.step()
        if k == 7:
            mid = pop.evaluate()
    final = pop.result().members
    for i, h in enumerate(hparams):
        alone = metaopt.train(task, name, h, seed=i, eval_every=8)
        assert alone.val_curve[0][1] == pytest.approx(mid[i], rel=1e-9)
        assert final[i].value == pytest.approx(alone.value, rel=1e-9)


# -- flat buckets: chunks and the compiled backend ------------------------------------------
@pytest.mark.parametrize("name", ["prodigy", "dadapt_adam", "dadapt_sgd", "schedulefree_adamw",
                                  "schedulefree_sgd"])
def test_eager_chunks_add_up_to_the_reference(name, monkeypatch):
    """The eager flat path in chunks of 4 elements (sums added over chunks) == per parameter."""
    from metaopt.optim import backends

    monkeypatch.setattr(backends, "TEMPORARY_FLOOR", 16)
    assert backends.chunk_numel(100) == 4
    members = [problem(seed=i) for i in range(2)]
    stacked = [torch.stack(ps) for ps in zip(*(m[0] for m in members))]

    def total(ps):
        return sum(m[1]([p[i] for p in ps]) for i, m in enumerate(members))

    kwargs = {"weight_decay": [0.0, 0.1], "lr": [0.05, 0.02] if "schedulefree" in name
              else [1.0, 0.5]}
    chunked, _ = run(lambda ps: create(name, ps, population=2, backend="eager", **kwargs),
                     stacked, total, 10)
    reference, _ = run(lambda ps: create(name, ps, population=2, backend="reference",
                                         **kwargs), stacked, total, 10)
    assert_params_close(chunked, reference, dict(rtol=1e-12, atol=1e-12))


@pytest.mark.parametrize("name", ["prodigy", "schedulefree_adamw"])
def test_compiled_equals_reference_and_never_recompiles(name):
    from torch._dynamo.utils import counters

    params, loss = problem()

    def train(backend):
        ps = [p.detach().clone().float().requires_grad_(True) for p in params]
        opt = create(name, ps, backend=backend)
        graphs = []
        for k in range(10):
            if k == 5:
                graphs.append(counters["stats"]["unique_graphs"])
                opt.param_groups[0]["lr"] = float(opt.param_groups[0]["lr"]) / 2
                opt.param_groups[0]["weight_decay"] = 0.01
                opt.param_groups[0]["betas"] = (0.8, 0.95)
            opt.zero_grad()
            loss([p.double() for p in ps]).float().backward()
            opt.step()
        graphs.append(counters["stats"]["unique_graphs"])
        return ps, opt, graphs

    ours, opt, graphs = train("compiled")
    assert {r.mode for r in opt._runners.values()} == {"compiled"}
    assert graphs[0] == graphs[1], "a hyperparameter write recompiled the step"
    reference, _, _ = train("reference")
    assert_params_close(ours, reference, dict(rtol=2e-5, atol=2e-6))


# -- groups, composites and member copies ---------------------------------------------------
def test_groups_share_one_lr_and_population():
    a, b = torch.zeros(3, requires_grad=True), torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="lr must be the same in every group"):
        Prodigy([{"params": [a]}, {"params": [b], "lr": 0.5}])
    with pytest.raises(ValueError, match="same population"):
        DAdaptAdam([{"params": [torch.zeros(2, 3, requires_grad=True)], "population": 2},
                    {"params": [b]}])


def test_a_composite_switches_its_schedule_free_children():
    w = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)
    opt = metaopt.optim.Composite([{"params": [w], "optimizer": "schedulefree_sgd", "lr": 0.1},
                                   {"params": [bias], "optimizer": "adamw", "lr": 0.01}])
    alone = SGDScheduleFree([w.detach().clone().requires_grad_(True)], lr=0.1)
    for o, p in ((opt, w), (alone, alone.param_groups[0]["params"][0])):
        for _ in range(3):
            p.grad = torch.ones_like(p)
            if o is opt:
                bias.grad = torch.ones_like(bias)
            o.step()
    with metaopt.optim.evaluating(opt):
        alone.eval()
        torch.testing.assert_close(w.detach(), alone.param_groups[0]["params"][0].detach())
        assert not opt.children["schedulefree_sgd"].training
    assert opt.children["schedulefree_sgd"].training


@pytest.mark.parametrize("engine", ["stacked", "loop"])
def test_copy_member_without_hparams_takes_the_step_size_estimate(engine):
    """PBT's exploit with hparams=False: the estimate D is state, copied from src; dst keeps
    its own lr."""
    task = regression(steps=6)
    pop = Population(task, "prodigy", [{"lr": 1.0}, {"lr": 0.5}], seeds=[0, 1], engine=engine)
    for _ in range(6):
        pop.step()
    pop.copy_member(0, 1, hparams=False)
    if engine == "stacked":
        d = pop.engine.optimizer.global_scalars()["d"]
        assert float(d[1]) == float(d[0])
    else:
        d = [o.global_scalars()["d"] for o in pop.engine.optimizers]
        assert float(d[1]) == float(d[0])
    assert pop.engine.read_hparam("lr").tolist() == [1.0, 0.5]
