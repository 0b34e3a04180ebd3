"""One list of every metaopt optimizer with torch.optim's twin, shared by the optimizer tests.

Each entry gives keyword variants for parity runs, per-member values for population runs,
and settings that reach a quadratic's optimum.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


def T(value: float) -> torch.Tensor:
    """A float64 0-d tensor hyperparameter (torch computes with a tensor's own dtype)."""
    return torch.tensor(value, dtype=torch.float64)


@dataclass
class Case:
    name: str
    variants: list[dict] = field(default_factory=lambda: [{}])
    members: dict = field(default_factory=dict)  # hparam -> per-member values (P = 3)
    quadratic: dict = field(default_factory=dict)
    quadratic_steps: int = 300
    matrices_only: bool = False  # Muon: 2-D parameters only
    cycles: str | None = None  # "momentum" / "betas" for OneCycleLR's momentum cycling
    torch_twin: bool = True  # torch.optim has the same algorithm (parity tests apply)

    @property
    def torch_cls(self):
        import metaopt

        return getattr(torch.optim, metaopt.optim.lookup(self.name).__name__)

    def __str__(self) -> str:
        return self.name


TORCH_CASES = [
    Case("sgd", [{"lr": 0.05}, {"lr": T(0.05), "momentum": 0.9},
                 {"lr": 0.03, "momentum": 0.9, "dampening": 0.2, "weight_decay": 0.1},
                 {"lr": 0.03, "momentum": 0.8, "nesterov": True, "weight_decay": 0.01},
                 {"lr": 0.01, "momentum": 0.5, "maximize": True}],
         members={"lr": [0.01, 0.05, 0.1], "momentum": [0.0, 0.5, 0.9],
                  "dampening": [0.0, 0.1, 0.3], "weight_decay": [0.0, 0.01, 0.1]},
         quadratic={"lr": 0.1, "momentum": 0.5}, cycles="momentum"),
    Case("adagrad", [{}, {"lr": 0.1, "lr_decay": 0.01, "weight_decay": 0.05},
                     {"initial_accumulator_value": 0.3, "eps": 1e-6, "maximize": True},
                     {"lr": T(0.05)}],
         members={"lr": [0.01, 0.1, 0.3], "lr_decay": [0.0, 0.01, 0.1],
                  "initial_accumulator_value": [0.0, 0.1, 1.0], "eps": [1e-10, 1e-6, 1e-3]},
         quadratic={"lr": 0.5}),
    Case("rmsprop", [{}, {"centered": True, "alpha": 0.9}, {"momentum": 0.9, "lr": 0.003},
                     {"centered": True, "momentum": 0.5, "weight_decay": 0.1, "eps": 1e-4},
                     {"maximize": True, "lr": T(0.001)}],
         members={"lr": [0.001, 0.01, 0.003], "alpha": [0.9, 0.99, 0.5],
                  "eps": [1e-8, 1e-4, 1e-2], "momentum": [0.0, 0.5, 0.9],
                  "weight_decay": [0.0, 0.1, 0.01]},
         quadratic={"lr": 0.01}, quadratic_steps=600, cycles="momentum"),
    Case("adam", [{}, {"amsgrad": True, "weight_decay": 0.1}, {"betas": (0.5, 0.9), "eps": 1e-4},
                  {"lr": T(0.01), "betas": (T(0.8), T(0.95))},
                  {"maximize": True, "decoupled_weight_decay": True, "weight_decay": 0.2}],
         members={"lr": [0.001, 0.01, 0.03], "betas": ([0.9, 0.5, 0.0], [0.999, 0.9, 0.5]),
                  "eps": [1e-8, 1e-3, 1e-5], "weight_decay": [0.0, 0.1, 0.01]},
         quadratic={"lr": 0.05}, cycles="betas"),
    Case("adamw", [{}, {"amsgrad": True}, {"weight_decay": 0.5, "betas": (0.0, 0.99)},
                   {"maximize": True, "lr": 0.01}],
         members={"lr": [0.001, 0.01, 0.03], "betas": ([0.9, 0.5, 0.0], [0.999, 0.9, 0.5]),
                  "weight_decay": [0.0, 0.1, 0.01]},
         quadratic={"lr": 0.05, "weight_decay": 0.0}, cycles="betas"),
    Case("adamax", [{}, {"weight_decay": 0.1, "betas": (0.5, 0.9)}, {"maximize": True,
                                                                      "eps": 1e-3}],
         members={"lr": [0.002, 0.01, 0.05], "betas": ([0.9, 0.5, 0.0], [0.999, 0.9, 0.5]),
                  "eps": [1e-8, 1e-3, 1e-5], "weight_decay": [0.0, 0.1, 0.01]},
         quadratic={"lr": 0.05}, cycles="betas"),
    Case("nadam", [{}, {"weight_decay": 0.1}, {"decoupled_weight_decay": True,
                                               "weight_decay": 0.1, "momentum_decay": 0.01},
                   {"maximize": True, "betas": (0.8, 0.99)}],
         members={"lr": [0.002, 0.01, 0.05], "betas": ([0.9, 0.5, 0.0], [0.999, 0.9, 0.5]),
                  "momentum_decay": [0.004, 0.0, 0.1], "weight_decay": [0.0, 0.1, 0.01]},
         quadratic={"lr": 0.05}, cycles="betas"),
    Case("radam", [{}, {"betas": (0.9, 0.9)}, {"weight_decay": 0.1, "betas": (0.9, 0.8)},
                   {"decoupled_weight_decay": True, "weight_decay": 0.1, "maximize": True}],
         members={"lr": [0.001, 0.01, 0.05], "betas": ([0.9, 0.5, 0.0], [0.999, 0.9, 0.7]),
                  "eps": [1e-8, 1e-3, 1e-5], "weight_decay": [0.0, 0.1, 0.01]},
         quadratic={"lr": 0.05, "betas": (0.9, 0.9)}, cycles="betas"),
    Case("adadelta", [{}, {"rho": 0.5, "weight_decay": 0.1}, {"lr": 0.5, "eps": 1e-3,
                                                             "maximize": True}],
         members={"lr": [1.0, 0.5, 0.1], "rho": [0.9, 0.5, 0.99], "eps": [1e-6, 1e-3, 1e-4],
                  "weight_decay": [0.0, 0.1, 0.01]},
         quadratic={"lr": 0.5, "eps": 1e-2}, quadratic_steps=600),
    Case("adafactor", [{}, {"lr": 0.1, "weight_decay": 0.1}, {"d": 2.0, "beta2_decay": -0.5},
                       {"eps": (1e-20, 1e-2), "maximize": True}],
         members={"lr": [0.01, 0.1, 0.05], "beta2_decay": [-0.8, -0.5, -1.0],
                  "d": [1.0, 2.0, 1.5], "weight_decay": [0.0, 0.1, 0.01]},
         quadratic={"lr": 0.3}, quadratic_steps=500),
    Case("muon", [{}, {"lr": 0.02, "nesterov": False}, {"adjust_lr_fn": "match_rms_adamw",
                                                       "weight_decay": 0.0, "momentum": 0.5},
                  {"ns_steps": 3, "eps": 1e-5, "lr": 0.01}],
         members={"lr": [0.001, 0.02, 0.01], "momentum": [0.95, 0.5, 0.0],
                  "weight_decay": [0.1, 0.0, 0.01]},
         quadratic={"lr": 0.02, "weight_decay": 0.0}, matrices_only=True,
         cycles="momentum"),
]

# Optimizers beyond torch.optim (checked against references written from their papers).
BEYOND_TORCH_CASES: list[Case] = [
    Case("adabound", [{}, {"amsbound": True, "weight_decay": 0.1},
                      {"lr": T(0.01), "final_lr": 0.05, "gamma": 0.1},
                      {"maximize": True, "betas": (0.5, 0.9), "eps": 1e-4, "gamma": 0.0}],
         members={"lr": [0.001, 0.01, 0.03], "betas": ([0.9, 0.5, 0.0], [0.999, 0.9, 0.5]),
                  "final_lr": [0.1, 0.01, 0.5], "gamma": [1e-3, 0.1, 0.0],
                  "eps": [1e-8, 1e-3, 1e-5], "weight_decay": [0.0, 0.1, 0.01]},
         quadratic={"lr": 0.05}, torch_twin=False),
    Case("lamb", [{}, {"weight_decay": 0.1, "lr": 0.01}, {"bias_correction": False, "eps": 1e-3},
                  {"maximize": True, "betas": (0.8, 0.99), "lr": T(0.02)}],
         members={"lr": [0.001, 0.01, 0.03], "betas": ([0.9, 0.5, 0.0], [0.999, 0.9, 0.5]),
                  "eps": [1e-6, 1e-3, 1e-8], "weight_decay": [0.0, 0.1, 0.01]},
         quadratic={"lr": 0.05}, torch_twin=False),
    Case("lion", [{}, {"lr": 1e-3, "weight_decay": 0.1}, {"betas": (0.5, 0.9), "lr": T(0.01)},
                  {"maximize": True, "betas": (0.0, 0.5), "lr": 3e-3}],
         members={"lr": [1e-4, 1e-3, 1e-2], "betas": ([0.9, 0.5, 0.0], [0.99, 0.9, 0.5]),
                  "weight_decay": [0.0, 0.1, 1.0]},
         quadratic={"lr": 0.02}, torch_twin=False),
    Case("lookahead", [{}, {"base": "sgd", "lr": 0.05, "momentum": 0.9, "k": 3},
                       {"base": "rmsprop", "alpha": 0.9, "lookahead_alpha": 0.3},
                       {"k": 2, "alpha": 0.8, "lr": 0.01, "weight_decay": 0.1}],
         members={"lr": [0.001, 0.01, 0.03], "betas": ([0.9, 0.5, 0.0], [0.999, 0.9, 0.5]),
                  "k": [2, 3, 5], "alpha": [0.5, 0.8, 0.2]},
         quadratic={"lr": 0.05}, torch_twin=False),
]

# Learning-rate-free optimizers (parity with the authors' packages: test_optim_lr_free.py).
INF = float("inf")
LR_FREE_CASES: list[Case] = [
    Case("prodigy", [{}, {"weight_decay": 0.1, "use_bias_correction": True},
                     {"decouple": False, "weight_decay": 0.05, "safeguard_warmup": True},
                     {"betas": (0.5, 0.9), "beta3": 0.8, "d_coef": 0.5, "growth_rate": 1.1,
                      "lr": T(0.5)}],
         members={"lr": [1.0, 0.5, 2.0], "betas": ([0.9, 0.5, 0.0], [0.999, 0.9, 0.99]),
                  "weight_decay": [0.0, 0.1, 0.01], "d0": [1e-6, 1e-4, 1e-3],
                  "d_coef": [1.0, 0.5, 2.0], "growth_rate": [INF, 1.1, 2.0]},
         quadratic={}, torch_twin=False),
    Case("dadapt_adam", [{}, {"weight_decay": 0.1, "decouple": True},
                         {"use_bias_correction": True, "betas": (0.5, 0.9), "eps": 1e-4},
                         {"growth_rate": 1.05, "d0": 1e-3, "lr": T(0.5), "layer_scale": 2.0}],
         members={"lr": [1.0, 0.5, 2.0], "betas": ([0.9, 0.5, 0.0], [0.999, 0.9, 0.99]),
                  "weight_decay": [0.0, 0.1, 0.01], "d0": [1e-6, 1e-4, 1e-3],
                  "growth_rate": [INF, 1.1, 2.0], "layer_scale": [1.0, 0.5, 2.0]},
         quadratic={}, torch_twin=False),
    Case("dadapt_sgd", [{}, {"momentum": 0.9}, {"momentum": 0.5, "weight_decay": 0.1},
                        {"growth_rate": 1.1, "d0": 1e-3, "lr": T(0.5)}],
         members={"lr": [1.0, 0.5, 2.0], "momentum": [0.0, 0.5, 0.9],
                  "weight_decay": [0.0, 0.1, 0.01], "d0": [1e-6, 1e-4, 1e-3],
                  "growth_rate": [INF, 1.1, 2.0]},
         quadratic={"momentum": 0.9}, quadratic_steps=600, torch_twin=False),
    Case("schedulefree_adamw", [{}, {"lr": 0.01, "weight_decay": 0.1},
                                {"warmup_steps": 3, "r": 0.5, "weight_lr_power": 1.0},
                                {"betas": (0.5, 0.99), "eps": 1e-4, "lr": T(0.02)}],
         members={"lr": [0.0025, 0.01, 0.05], "betas": ([0.9, 0.5, 0.95], [0.999, 0.9, 0.99]),
                  "weight_decay": [0.0, 0.1, 0.01], "warmup_steps": [0, 3, 5],
                  "r": [0.0, 0.5, 1.0], "weight_lr_power": [2.0, 1.0, 0.0]},
         quadratic={"lr": 0.1}, torch_twin=False),
    Case("schedulefree_sgd", [{}, {"lr": 0.1, "momentum": 0.5, "weight_decay": 0.1},
                              {"warmup_steps": 3, "r": 1.0, "lr": T(0.2)}],
         members={"lr": [0.05, 0.1, 0.2], "momentum": [0.9, 0.5, 0.95],
                  "weight_decay": [0.0, 0.1, 0.01], "warmup_steps": [0, 3, 5],
                  "r": [0.0, 0.5, 1.0], "weight_lr_power": [2.0, 1.0, 0.0]},
         quadratic={"lr": 0.1}, torch_twin=False),
]

# Optimizers that need a closure (and so no populations): their invariants run with closures
# in test_optim_second_order.py; ``quadratic`` settings reach the shared quadratic's optimum.
CLOSURE_CASES: list[Case] = [
    Case("lbfgs", [{}, {"line_search_fn": "strong_wolfe", "history_size": 5},
                   {"lr": T(0.5), "max_iter": 4}],
         quadratic={"line_search_fn": "strong_wolfe"}, quadratic_steps=5, torch_twin=True),
    Case("newton", [{}, {"damping": 1e-2, "lr": 0.8}, {"adaptive_damping": False}],
         quadratic={}, quadratic_steps=3, torch_twin=False),
    Case("hessian_free", [{}, {"cg_max_iter": 5, "damping": 0.1}, {"cg_decay": 0.5}],
         quadratic={"cg_max_iter": 30}, quadratic_steps=5, torch_twin=False),
    # (the shared problem has no nn.Linear: K-FAC falls back to its base there; its own
    # layers are tested in test_optim_second_order.py)
    Case("kfac", [{}, {"base": "adam", "damping": 0.01, "lr": 0.01},
                  {"lr": 0.05, "momentum": 0.9, "update_freq": 2, "kl_clip": None}],
         quadratic={"lr": 0.1, "momentum": 0.5}, quadratic_steps=300, torch_twin=False),
    # (likewise: its own layers are tested in test_optim_natural_gradient.py)
    Case("natural_gradient", [{}, {"base": "adam", "kl_clip": 1e-3, "fisher_decay": 0.5},
                              {"structure": "dense", "damping": 0.1, "lr": 0.01}],
         quadratic={"lr": 0.1, "momentum": 0.5}, quadratic_steps=300, torch_twin=False),
]

# Kronecker-factored preconditioners (dense float64 references: test_optim_second_order.py).
PRECONDITIONER_CASES: list[Case] = [
    Case("shampoo", [{}, {"precondition_frequency": 2, "start_preconditioning_step": 1},
                     {"grafting": "sgd", "lr": 0.01, "precondition_frequency": 1,
                      "block_size": 3, "shampoo_beta": 0.9},
                     {"grafting": "none", "precondition_frequency": 3, "weight_decay": 0.1,
                      "eps": 1e-6, "lr": T(0.01)}],
         members={"lr": [0.001, 0.01, 0.03], "betas": ([0.9, 0.5, 0.0], [0.999, 0.9, 0.5]),
                  "shampoo_beta": [1.0, 0.9, 0.5], "eps": [1e-12, 1e-6, 1e-3],
                  "graft_eps": [1e-8, 1e-3, 1e-5], "weight_decay": [0.0, 0.1, 0.01]},
         quadratic={"lr": 0.05, "precondition_frequency": 5}, torch_twin=False),
    Case("soap", [{}, {"precondition_frequency": 1, "precondition_1d": True},
                  {"block_size": 3, "precondition_frequency": 2, "shampoo_beta": 0.5},
                  {"max_precond_dim": 5, "weight_decay": 0.0, "betas": (0.9, 0.99),
                   "lr": T(0.01)}],
         members={"lr": [0.001, 0.01, 0.03], "betas": ([0.9, 0.5, 0.0], [0.999, 0.9, 0.5]),
                  "shampoo_beta": [0.95, 0.5, 0.0], "eps": [1e-8, 1e-3, 1e-5],
                  "weight_decay": [0.0, 0.1, 0.01]},
         quadratic={"lr": 0.05}, torch_twin=False),
]

CASES = (TORCH_CASES + BEYOND_TORCH_CASES + LR_FREE_CASES  # every optimizer: invariants,
         + PRECONDITIONER_CASES)  # populations
BY_NAME = {c.name: c for c in CASES}


def problem(matrices_only: bool = False, dtype=torch.float64, seed: int = 0):
    """A small non-quadratic model: a 2-layer tanh network on fixed data (and its loss)."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(7, 5), (3, 7)] if matrices_only else [(7, 5), (7,), (3, 7), (3,)]
    params = [(torch.randn(s, generator=g) * 0.5).to(dtype) for s in shapes]
    x = torch.randn(16, 5, generator=g).to(dtype)
    y = torch.randn(16, 3, generator=g).to(dtype)

    def loss(ps):
        if matrices_only:
            w1, w2 = ps
            return ((torch.tanh(x @ w1.T) @ w2.T - y) ** 2).mean()
        w1, b1, w2, b2 = ps
        return ((torch.tanh(x @ w1.T + b1) @ w2.T + b2 - y) ** 2).mean()

    return params, loss


def run(opt_factory, params, loss, steps: int, scheduler_factory=None):
    """Train copies of ``params`` for ``steps`` and return them (and the optimizer)."""
    ps = [p.detach().clone().requires_grad_(True) for p in params]
    opt = opt_factory(ps)
    sched = scheduler_factory(opt) if scheduler_factory else None
    for _ in range(steps):
        opt.zero_grad()
        loss(ps).backward()
        opt.step()
        if sched is not None:
            sched.step()
    return ps, opt


def member_kwargs(case: Case, i: int) -> dict:
    """Scalar hyperparameters of member ``i`` of the population case."""
    out = {}
    for key, values in case.members.items():
        out[key] = tuple(v[i] for v in values) if key == "betas" else values[i]
    return out


def population_kwargs(case: Case) -> dict:
    """The same hyperparameters as ``[P]`` values (lists, as a user would write them)."""
    out = {}
    for key, values in case.members.items():
        out[key] = tuple(list(v) for v in values) if key == "betas" else list(values)
    return out


def stacked_problem(case: Case, P: int = 3):
    """P members, each ``problem(seed=i)``: stacked params and the summed loss."""
    members = [problem(case.matrices_only, seed=i) for i in range(P)]
    stacked = [torch.stack(ps) for ps in zip(*(m[0] for m in members))]

    def loss(ps):
        return sum(m[1]([p[i] for p in ps]) for i, m in enumerate(members))

    return stacked, loss, members
