"""Populations: P stacked members with [P] hyperparameters step like P separate optimizers."""

import pytest
import torch
from optim_cases import CASES, member_kwargs, population_kwargs, run, stacked_problem

import metaopt

P = 3


def assert_member_equal(stacked, i, single, tol=1e-12):
    for s, p in zip(stacked, single):
        torch.testing.assert_close(s[i].detach(), p.detach(), rtol=tol, atol=tol)


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("backend", ["reference", "eager"])
def test_population_equals_separate_runs(case, backend):
    stacked, loss, members = stacked_problem(case, P)
    pop, opt = run(lambda ps: metaopt.optim.create(case.name, ps, population=P, backend=backend,
                                                   **population_kwargs(case)),
                   stacked, loss, 10)
    for i, (params, member_loss) in enumerate(members):
        single, _ = run(lambda ps, i=i: metaopt.optim.create(case.name, ps, backend="reference",
                                                             **member_kwargs(case, i)),
                        params, member_loss, 10)
        assert_member_equal(pop, i, single)
    for state in opt.state.values():  # every state tensor is per member
        for value in state.values():
            assert value.shape[0] == P


@pytest.mark.parametrize("case", CASES, ids=str)
def test_reset_member_restarts_only_that_member(case):
    stacked, loss, members = stacked_problem(case, P)
    kwargs = population_kwargs(case)
    pop, opt = run(lambda ps: metaopt.optim.create(case.name, ps, population=P, **kwargs),
                   stacked, loss, 4)
    with torch.no_grad():  # member 1 starts over: fresh weights and a fresh optimizer state
        for p, init in zip(pop, stacked):
            p[1] = init[1]
    opt.reset_member(1)
    for _ in range(6):
        opt.zero_grad()
        loss(pop).backward()
        opt.step()
    untouched, _ = run(lambda ps: metaopt.optim.create(case.name, ps, population=P, **kwargs),
                       stacked, loss, 10)
    for i in (0, 2):
        assert_member_equal(pop, i, [u[i] for u in untouched])
    fresh, _ = run(lambda ps: metaopt.optim.create(case.name, ps, **member_kwargs(case, 1)),
                   members[1][0], members[1][1], 6)
    assert_member_equal(pop, 1, fresh)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_copy_member_overwrites_weights_state_and_hparams(case):
    stacked, loss, _ = stacked_problem(case, P)
    pop, opt = run(lambda ps: metaopt.optim.create(case.name, ps, population=P,
                                                   **population_kwargs(case)),
                   stacked, loss, 3)
    opt.copy_member(0, 2)
    for p in pop:
        assert torch.equal(p[2], p[0])
        for value in opt.state[p].values():
            assert torch.equal(value[2], value[0])
    for value in opt.hparams[0].values():
        if value is not None:
            assert torch.equal(value[2], value[0])
    assert not torch.equal(pop[0][1], pop[0][0])
