"""Echoed optimizers' update rules and step-size rules (Agarwal et al. 2020, Section 3.1, Thms 7, 10, 13).

Pure functions on tensors and numbers; the optimizers in :mod:`lightning_echo.echoed_optim` apply
them. Notation: step size ``eta``, echo factor ``K``, batch size ``B``, fresh batches ``T``,
smoothness ``beta``, gradient bound ``rho``, distance to the optimum ``D``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from lightning_echo.errors import ConfigError
from lightning_echo.validation import positive_float, positive_int


def theory_gd_step_size(beta: float, rho: float, distance: float, echo_factor: int, batch_size: int, fresh_batches: int) -> float:
    """Theorem 7: ``eta = min(1/beta, rho / (K D) * sqrt(B / T))`` for echoed gradient descent."""
    beta, rho, distance = positive_float("beta", beta), positive_float("rho", rho), positive_float("distance", distance)
    k, b, t = positive_int("echo_factor", echo_factor), positive_int("batch_size", batch_size), positive_int("fresh_batches", fresh_batches)
    return min(1.0 / beta, rho / (k * distance) * math.sqrt(b / t))


def theory_prox_parameters(beta: float, rho: float, distance: float, batch_size: int, fresh_batches: int) -> tuple[float, float]:
    """Theorem 10: ``gamma = (rho / D) sqrt(T / B)`` and ``eta = 1 / (beta + gamma)`` (independent of K)."""
    beta, rho, distance = positive_float("beta", beta), positive_float("rho", rho), positive_float("distance", distance)
    b, t = positive_int("batch_size", batch_size), positive_int("fresh_batches", fresh_batches)
    gamma = rho / distance * math.sqrt(t / b)
    return gamma, 1.0 / (beta + gamma)


def inverse_k_step_size(base: float, echo_factor: float) -> float:
    """A base step size divided by the echo factor (the noise-dominated regime's scaling)."""
    base = positive_float("lr", base)
    if not echo_factor >= 1:
        raise ConfigError("echo_factor", echo_factor, "must be >= 1")
    return base / echo_factor


def prox_gradient_(grads: Sequence[torch.Tensor], params: Sequence[torch.Tensor], pivots: Sequence[torch.Tensor], gamma: float) -> None:
    """In place: ``g += gamma * (w - w_pivot)``, the gradient of ``f + gamma/2 ||w - w_pivot||^2``."""
    if gamma == 0:
        return
    for grad, param, pivot in zip(grads, params, pivots):
        grad.add_(param.detach() - pivot, alpha=gamma)


def next_nesterov_lambda(lam: float) -> float:
    """The positive root of ``l^2 - l = lam^2``: ``(1 + sqrt(1 + 4 lam^2)) / 2``."""
    return (1.0 + math.sqrt(1.0 + 4.0 * lam * lam)) / 2.0


def nesterov_momentum(lam: float, lam_next: float) -> float:
    """``gamma_{j+1} = (lambda_j - 1) / lambda_{j+1}``."""
    return (lam - 1.0) / lam_next


def nesterov_step_(
    iterates: Sequence[torch.Tensor],
    momenta: Sequence[torch.Tensor],
    lookahead_grads: Sequence[torch.Tensor],
    eta: float,
    momentum: float,
) -> None:
    """In place, one accelerated step from gradients taken at ``w + d``.

    ``w' = (w + d) - eta * grad(w + d)``, ``d' = momentum * (w' - w)``; ``iterates`` (w) and
    ``momenta`` (d) are updated.
    """
    for w, d, g in zip(iterates, momenta, lookahead_grads):
        new_w = w + d - eta * g
        d.copy_((new_w - w).mul_(momentum))
        w.copy_(new_w)
