"""Every built-in task stacks: each engine and forward mode gives every member what its own
``metaopt.train`` run gives (float64, 3 steps), with one data seed for all members (the batch
drawn once, broadcast) and with a seed each; gan_mixture's two players step as phases and
policy_gradient's episodes vmap."""

import copy
import dataclasses

import pytest
import torch

import metaopt
from metaopt.population import Population

STEPS = 3
LRS = [3e-3, 1e-2]
MODES = [("auto", "auto"), ("stacked", "vmap"), ("stacked", "members"), ("loop", "auto")]
# (rtol, atol) of parameters: the REINFORCE surrogate's gradients have coordinates near 0,
# whose last bits (a batched reduction's order) Adam's first, sign-like steps amplify
TOLERANCE = {"policy_gradient": (1e-6, 1e-9)}


def _double(batch):
    if isinstance(batch, torch.Tensor):
        return batch.double() if batch.is_floating_point() else batch
    return type(batch)(_double(b) for b in batch)


def double_task(name: str) -> metaopt.tasks.Task:
    """The built-in task in float64: model, batches; its validation on a float32 copy."""
    task = metaopt.tasks.get(name)

    def data(generator):
        return (_double(b) for b in task.data(generator))

    def evaluate(module):
        return task.evaluate(copy.deepcopy(module).float())

    return dataclasses.replace(task, model=lambda: task.model().double(), data=data,
                               evaluate=evaluate)


@pytest.mark.parametrize("seeds", [[4, 4], [4, 5]], ids=["shared seed", "own seeds"])
@pytest.mark.parametrize("engine,forward", MODES, ids=["-".join(m) for m in MODES])
@pytest.mark.parametrize("name", metaopt.tasks.names())
def test_every_task_stacks_and_members_equal_separate_runs(name, engine, forward, seeds):
    task = double_task(name)
    hparams = [{"lr": lr} for lr in LRS]
    pop = Population(task, "adam", hparams, seeds=seeds, engine=engine, forward=forward)
    if engine != "loop":
        assert pop.engine.mode == "stacked", pop.note
    result = pop.run(STEPS)
    rtol, atol = TOLERANCE.get(name, (1e-9, 1e-10))
    for i, h in enumerate(hparams):
        single = metaopt.train(task, "adam", h, steps=STEPS, seed=seeds[i], progress=False)
        assert result.members[i].value == pytest.approx(single.value, rel=1e-9, abs=1e-12)
        for pname, p in single.module.named_parameters():
            torch.testing.assert_close(pop.engine.parameters_of(i)[pname], p.detach(),
                                       rtol=rtol, atol=atol)
