"""The Task protocol and the built-in task suite."""

from __future__ import annotations

import pickle
import textwrap

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, stack_module_state, vmap

import metaopt
import metaopt.tasks as tasks
from metaopt.tasks import Task
from metaopt.tasks.task import take_step

# torch.optim by name: metaopt's own optimizer core is tested on its own.
OPTIMIZERS = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
    "rmsprop": torch.optim.RMSprop,
}
BUILTINS = [
    "quadratic",
    "rosenbrock",
    "logistic_breast_cancer",
    "ill_conditioned_regression",
    "digits_mlp",
    "digits_mlp_sigmoid",
    "digits_cnn",
    "sequence_gru",
    "transformer_copy",
    "gan_mixture",
    "policy_gradient",
]
DETERMINISTIC_OBJECTIVES = {"quadratic", "rosenbrock"}  # full-batch: data ignores the generator


@pytest.fixture(autouse=True, scope="module")
def _cpu_settings():
    torch.set_flush_denormal(True)  # denormals slow this CPU down ~30x
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only contend
    yield
    torch.set_num_threads(threads)


def make_optimizer(task: Task, module: nn.Module) -> torch.optim.Optimizer:
    return OPTIMIZERS[task.default_optimizer](module.parameters(), **task.default_hparams)


def train(task: Task, seed: int, steps: int | None = None) -> nn.Module:
    torch.manual_seed(seed)
    module = task.model()
    optimizer = make_optimizer(task, module)
    batches = task.data(torch.Generator().manual_seed(seed))
    for _ in range(task.steps if steps is None else steps):
        batch = next(batches)
        if task.train_step is not None:
            task.train_step(module, optimizer, batch)
        else:
            optimizer.zero_grad()
            task.loss(module, batch).backward()
            optimizer.step()
    return module


def as_tuple(batch) -> tuple[torch.Tensor, ...]:
    return batch if isinstance(batch, tuple) else (batch,)


def first_batches(task: Task, seed: int, n: int = 3) -> list[tuple[torch.Tensor, ...]]:
    batches = task.data(torch.Generator().manual_seed(seed))
    return [as_tuple(next(batches)) for _ in range(n)]


def same(a: list[tuple[torch.Tensor, ...]], b: list[tuple[torch.Tensor, ...]]) -> bool:
    return all(torch.equal(x, y) for ba, bb in zip(a, b, strict=True) for x, y in zip(ba, bb))


# --- registry ---------------------------------------------------------------------------------


def test_names_lists_the_builtins():
    assert tasks.names() == BUILTINS


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_is_a_well_formed_task(name):
    task = tasks.get(name)
    assert isinstance(task, Task)
    assert task.name == name
    assert task.default_optimizer in OPTIMIZERS
    assert task.steps >= 1 and task.target < float("inf") and task.description
    assert (task.train_step is None or getattr(task.train_step, "phases", None)
            or not task.vmap_ok)  # an own train_step stacks only as phases


def test_get_returns_fresh_objects():
    a, b = tasks.get("digits_mlp"), tasks.get("digits_mlp")
    assert a is not b
    a.default_hparams["lr"] = 123.0
    assert tasks.get("digits_mlp").default_hparams["lr"] != 123.0


def test_get_passes_factory_arguments():
    default, other = tasks.get("quadratic"), tasks.get("quadratic", seed=3)
    assert other.name == "quadratic-3"
    assert not torch.equal(
        next(default.data(torch.Generator()))[0], next(other.data(torch.Generator()))[0]
    )


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown task 'nope'.*digits_mlp.*policy_gradient"):
        tasks.get("nope")


USER_MODULE = """
    import torch
    from torch import nn
    from metaopt.tasks import Task

    def batches(generator):
        while True:
            yield torch.randn(8, 3, generator=generator)

    def make_task():
        return Task(
            name="user-linear",
            model=lambda: nn.Linear(3, 1),
            loss=lambda module, batch: module(batch).pow(2).mean(),
            data=batches,
            evaluate=lambda module: float(module.weight.pow(2).sum()),
            steps=5,
        )

    TASK = make_task()
    NOT_A_TASK = 42
"""


def test_get_imports_user_tasks(tmp_path, monkeypatch):
    (tmp_path / "metaopt_user_tasks.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    from_object = tasks.get("metaopt_user_tasks:TASK")
    from_factory = tasks.get("metaopt_user_tasks:make_task")
    for task in (from_object, from_factory):
        assert task.name == "user-linear" and task.steps == 5 and task.target == float("inf")
    assert from_object is not tasks.get("metaopt_user_tasks:TASK")
    with pytest.raises(TypeError, match="neither a Task"):
        tasks.get("metaopt_user_tasks:NOT_A_TASK")
    with pytest.raises(ValueError, match="no attribute 'missing'"):
        tasks.get("metaopt_user_tasks:missing")
    with pytest.raises(ValueError, match="cannot import task"):
        tasks.get("metaopt_no_such_module:TASK")


def test_task_validates_its_fields():
    task = tasks.get("rosenbrock")
    fields = dict(name=task.name, model=task.model, loss=task.loss, data=task.data)
    with pytest.raises(ValueError, match="steps"):
        Task(**fields, evaluate=task.evaluate, steps=0)
    with pytest.raises(ValueError, match="lower-case"):
        Task(**fields, evaluate=task.evaluate, steps=10, default_optimizer="Adam")
    with pytest.raises(TypeError, match="evaluate"):
        Task(**fields, evaluate=None, steps=10)


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_pickles(name):
    task = tasks.get(name)
    clone = pickle.loads(pickle.dumps(task))
    torch.manual_seed(0)
    module = task.model()
    assert clone.evaluate(module) == task.evaluate(module)


# --- data, models, evaluation ------------------------------------------------------------------


@pytest.mark.parametrize("name", BUILTINS)
def test_data_is_deterministic_per_generator(name):
    task = tasks.get(name)
    rng_state = torch.get_rng_state()
    a, b, c = first_batches(task, 0), first_batches(task, 0), first_batches(task, 1)
    assert torch.equal(torch.get_rng_state(), rng_state), "data must not use the global RNG"
    assert same(a, b)
    assert all(x.shape == y.shape and x.dtype == y.dtype for x, y in zip(a[0], a[-1], strict=True))
    assert same(a, c) == (name in DETERMINISTIC_OBJECTIVES)
    if name not in DETERMINISTIC_OBJECTIVES:
        assert not same(a[:1], a[1:2]), "consecutive batches should differ"


@pytest.mark.parametrize("name", BUILTINS)
def test_model_and_evaluate_are_deterministic(name):
    task = tasks.get(name)
    torch.manual_seed(0)
    module = task.model()
    params = [p.detach().clone() for p in module.parameters()]
    rng_state = torch.get_rng_state()
    value = task.evaluate(module)
    assert isinstance(value, float) and value == task.evaluate(module)
    assert torch.equal(torch.get_rng_state(), rng_state), "evaluate must not use the global RNG"
    assert all(torch.equal(p, q) for p, q in zip(params, module.parameters(), strict=True))
    torch.manual_seed(0)
    assert task.evaluate(task.model()) == value
    loss = task.loss(module, next(task.data(torch.Generator().manual_seed(0))))
    assert loss.shape == () and loss.requires_grad and torch.isfinite(loss)


class _Bound(nn.Module):
    """Exposes ``task.loss(inner, batch)`` as ``forward`` so functional_call can swap params."""

    def __init__(self, task: Task, inner: nn.Module) -> None:
        super().__init__()
        self.task, self.inner = task, inner

    def forward(self, batch):
        return self.task.loss(self.inner, batch)


@pytest.mark.parametrize("name", [n for n in BUILTINS if tasks.get(n).vmap_ok])
def test_vmap_ok_tasks_vmap_over_a_population(name):
    """Two members with their own params and batches: vmapped grads equal per-member grads."""
    task = tasks.get(name)
    members = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        members.append(task.model())
    stacked, _ = stack_module_state(members)
    batches = [next(task.data(torch.Generator().manual_seed(seed))) for seed in (0, 1)]
    batch = tuple(torch.stack(parts) for parts in zip(*map(as_tuple, batches), strict=True))
    batch = batch if isinstance(batches[0], tuple) else batch[0]
    bound = _Bound(task, members[0])

    def member_loss(params, member_batch):
        named = {f"inner.{key}": value for key, value in params.items()}
        return functional_call(bound, named, (member_batch,))

    grads = vmap(grad(member_loss))(stacked, batch)
    for i, module in enumerate(members):
        module.zero_grad()
        task.loss(module, batches[i]).backward()
        for key, param in module.named_parameters():
            torch.testing.assert_close(grads[key][i], param.grad, rtol=1e-4, atol=1e-5)


# --- training ----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", BUILTINS)
def test_default_optimizer_reaches_target(name, seed):
    """With metaopt's own optimizer of the default name, through metaopt.train."""
    task = tasks.get(name)
    torch.manual_seed(seed)
    start = task.evaluate(task.model())
    result = metaopt.train(task, task.default_optimizer, task.default_hparams, seed=seed,
                           progress=False)
    final = result.value
    assert result.ok, result.reason
    assert final <= task.target < start, f"{name} seed {seed}: {start:.4f} -> {final:.4f}"


@pytest.mark.parametrize("name", ["digits_mlp", "gan_mixture"])
def test_take_step_matches_the_explicit_loop(name):
    task = tasks.get(name)
    reference = train(task, seed=0, steps=5)
    torch.manual_seed(0)
    module = task.model()
    optimizer = make_optimizer(task, module)
    batches = task.data(torch.Generator().manual_seed(0))
    for _ in range(5):
        value, _ = take_step(task, module, optimizer, next(batches))
        assert value.shape == () and not value.requires_grad
    for p, q in zip(reference.parameters(), module.parameters(), strict=True):
        assert torch.equal(p, q)


def test_take_step_feeds_closure_optimizers():
    task = tasks.get("rosenbrock")
    torch.manual_seed(0)
    module = task.model()
    optimizer = torch.optim.LBFGS(module.parameters(), line_search_fn="strong_wolfe")
    batches = task.data(torch.Generator())
    for _ in range(20):
        take_step(task, module, optimizer, next(batches))
    assert task.evaluate(module) < 1e-6


class _Recorder(torch.optim.SGD):
    """SGD that zeroes grads instead of dropping them and records which params have grads."""

    def __init__(self, params, **kwargs):
        super().__init__(params, **kwargs)
        self.calls: list[set[int]] = []

    def zero_grad(self, set_to_none: bool = False) -> None:
        super().zero_grad(set_to_none=False)

    def step(self, closure=None):
        params = [p for group in self.param_groups for p in group["params"]]
        self.calls.append({id(p) for p in params if p.grad is not None})
        return super().step(closure)


def test_gan_train_step_updates_one_player_at_a_time():
    task = tasks.get("gan_mixture")
    torch.manual_seed(0)
    module = task.model()
    optimizer = _Recorder(module.parameters(), lr=0.01)
    task.train_step(module, optimizer, next(task.data(torch.Generator().manual_seed(0))))
    discriminator = {id(p) for p in module.discriminator.parameters()}
    generator = {id(p) for p in module.generator.parameters()}
    assert optimizer.calls == [discriminator, generator]
