"""Batched CartPole written in torch (the physics of Barto, Sutton & Anderson 1983, as in
Gymnasium's CartPole-v1), and rollouts of a Bernoulli policy driven by pre-drawn noise."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

GRAVITY = 9.8
CART_MASS = 1.0
POLE_MASS = 0.1
HALF_LENGTH = 0.5
FORCE = 10.0
TAU = 0.02
X_LIMIT = 2.4
THETA_LIMIT = 12 * 2 * math.pi / 360


def initial_states(n: int, generator: torch.Generator) -> Tensor:
    """``n`` start states ``[n, 4]`` = (x, ẋ, θ, θ̇), uniform in ±0.05."""
    return 0.1 * torch.rand(n, 4, generator=generator) - 0.05


def physics(state: Tensor, push_right: Tensor) -> Tensor:
    """One Euler step of the cart-pole for every row of ``state`` ``[n, 4]``."""
    x, x_dot, theta, theta_dot = state.unbind(-1)
    force = torch.where(push_right, FORCE, -FORCE)
    cos, sin = theta.cos(), theta.sin()
    total = CART_MASS + POLE_MASS
    temp = (force + POLE_MASS * HALF_LENGTH * theta_dot**2 * sin) / total
    theta_acc = (GRAVITY * sin - cos * temp) / (
        HALF_LENGTH * (4.0 / 3.0 - POLE_MASS * cos**2 / total)
    )
    x_acc = temp - POLE_MASS * HALF_LENGTH * theta_acc * cos / total
    return torch.stack(
        [
            x + TAU * x_dot,
            x_dot + TAU * x_acc,
            theta + TAU * theta_dot,
            theta_dot + TAU * theta_acc,
        ],
        dim=-1,
    )


def failed(state: Tensor) -> Tensor:
    return (state[:, 0].abs() > X_LIMIT) | (state[:, 2].abs() > THETA_LIMIT)


class Rollout(NamedTuple):
    states: Tensor  # [T, n, 4] observed states
    actions: Tensor  # [T, n] bool, True = push right
    alive: Tensor  # [T, n] float, 1 while the episode runs (the reward of that step)


@torch.no_grad()
def rollout(policy: nn.Module, start: Tensor, noise: Tensor) -> Rollout:
    """Run ``n`` episodes for ``T = noise.shape[1]`` steps: at step t, push right iff
    ``noise[:, t] < sigmoid(policy(state))``. Episodes end when the pole falls or the cart
    leaves the track; a finished episode's later steps have ``alive = 0``."""
    state, alive = start, torch.ones(len(start), device=start.device)
    states, actions, alives = [], [], []
    for t in range(noise.shape[1]):
        push_right = noise[:, t] < torch.sigmoid(policy(state).squeeze(-1))
        states.append(state)
        actions.append(push_right)
        alives.append(alive)
        state = physics(state, push_right)
        alive = alive * (~failed(state)).float()
    return Rollout(torch.stack(states), torch.stack(actions), torch.stack(alives))
