"""Echoed optimizers (Agarwal et al. 2020): SGD with theory-backed step sizes, proximal, Nesterov.

Each optimizer needs to know where a fresh batch starts: ``DataEchoing`` calls
``start_fresh_batch()`` on every optimizer that has it; in a hand-written loop, call it yourself
before the first step on each new batch. All three are real ``torch.optim.Optimizer`` objects
whose ``param_groups[i]["lr"]`` is the step size they apply, so lr schedulers, Lightning's
``LearningRateMonitor``, gradient clipping and checkpoints treat them as any optimizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

import torch
from torch.optim import Optimizer

from lightning_echo.core.echoed_updates import (
    inverse_k_step_size,
    nesterov_momentum,
    nesterov_step_,
    next_nesterov_lambda,
    prox_gradient_,
    theory_gd_step_size,
    theory_prox_parameters,
)
from lightning_echo.core.optimizer_wrapper import OptimizerWrapper
from lightning_echo.errors import ConfigError
from lightning_echo.validation import non_negative_float, one_of, positive_float

STEP_RULES = ("constant", "theory", "inverse_k")
Closure = Optional[Callable[[], torch.Tensor]]


def _run_closure(closure: Closure) -> Optional[torch.Tensor]:
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


class EchoedSGD(Optimizer):
    """Gradient descent inside each echo group, with a named step-size rule.

    - ``rule="constant"``: ``lr`` as given;
    - ``rule="inverse_k"``: ``lr / echo_factor``;
    - ``rule="theory"``: Theorem 7, ``min(1/beta, rho/(K D) sqrt(B/T))`` from ``beta``, ``rho``,
      ``distance``, ``echo_factor``, ``batch_size``, ``fresh_batches``; with ``lr`` given too, it
      must not exceed ``1/beta``.
    Every setting may differ per parameter group. Each group's ``"lr"`` holds the step size the
    rule gives (set when the group is added), so a scheduler scales that step size.

    Example::

        optimizer = EchoedSGD(model.parameters(), lr=0.5, rule="inverse_k", echo_factor=4)
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: Optional[float] = None,
        rule: str = "constant",
        echo_factor: float = 1.0,
        beta: Optional[float] = None,
        rho: Optional[float] = None,
        distance: Optional[float] = None,
        batch_size: Optional[int] = None,
        fresh_batches: Optional[int] = None,
    ) -> None:
        defaults = dict(
            lr=lr, rule=rule, echo_factor=echo_factor, beta=beta, rho=rho, distance=distance,
            batch_size=batch_size, fresh_batches=fresh_batches,
        )
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; its ``"lr"`` becomes the step size its rule gives."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        group["lr"] = self._step_size(group)

    @staticmethod
    def _step_size(group: dict[str, Any]) -> float:
        rule = one_of("rule", group["rule"], STEP_RULES)
        if rule == "constant":
            return positive_float("lr", group["lr"])
        if not isinstance(group["echo_factor"], (int, float)) or isinstance(group["echo_factor"], bool):
            raise ConfigError("echo_factor", group["echo_factor"], f"rule={rule!r} needs a numeric echo factor (use max_factor for 'auto')")
        if rule == "inverse_k":
            return inverse_k_step_size(group["lr"], group["echo_factor"])
        missing = [k for k in ("beta", "rho", "distance", "batch_size", "fresh_batches") if group[k] is None]
        if missing:
            raise ConfigError(missing[0], None, "rule='theory' needs beta, rho, distance, batch_size and fresh_batches")
        if group["lr"] is not None and group["lr"] > 1.0 / group["beta"]:
            raise ConfigError("lr", group["lr"], f"must be at most 1/beta = {1.0 / group['beta']:.6g} for rule='theory'")
        return theory_gd_step_size(
            group["beta"], group["rho"], group["distance"], int(group["echo_factor"]), group["batch_size"], group["fresh_batches"]
        )

    def start_fresh_batch(self) -> None:
        """Nothing to reset for plain gradient descent (kept for a uniform interface)."""

    @torch.no_grad()
    def step(self, closure: Closure = None) -> Optional[torch.Tensor]:
        loss = _run_closure(closure)
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    param.add_(param.grad, alpha=-group["lr"])
        return loss


@dataclass
class _ProxState:
    """``EchoedProx``'s own state, in one object (see :class:`OptimizerWrapper`)."""

    gamma: float  # for groups added later without their own
    pivots: list[list[torch.Tensor]]
    sums: list[list[torch.Tensor]]
    count: int = 0


def _pivot_and_sum(group: dict[str, Any]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    return [p.detach().clone() for p in group["params"]], [torch.zeros_like(p) for p in group["params"]]


class EchoedProx(OptimizerWrapper):
    """Adds the proximal term ``gamma (w - w_pivot)`` to every gradient before ``optimizer`` steps.

    At each new fresh batch the pivot becomes the average of the previous group's inner
    iterates (the points where gradients were taken), as in Agarwal et al.'s echoed proximal
    gradient descent; groups may have different sizes (adaptive echoing). ``gamma`` is
    constant, or Theorem 10's ``(rho/D) sqrt(T/B)`` via :meth:`from_theory`. With
    ``gamma=0`` it is exactly the wrapped optimizer. Per-group ``gamma`` comes from a
    ``"gamma"`` entry in the wrapped optimizer's parameter groups.

    A real ``torch.optim.Optimizer`` sharing the wrapped one's ``param_groups`` and ``state``:
    schedulers set the wrapped optimizer's lr; ``state_dict`` holds the wrapped optimizer's
    state and, under ``"echoed_prox"``, the pivots.

    Example::

        optimizer = EchoedProx(torch.optim.SGD(model.parameters(), lr=0.1), gamma=0.05)
    """

    STATE_KEY = "echoed_prox"
    OWN_FIELDS = ("_prox",)

    def __init__(self, optimizer: Optimizer, gamma: float = 0.0) -> None:
        non_negative_float("gamma", gamma)
        super().__init__(optimizer)
        for group in self.param_groups:
            non_negative_float("gamma", group.setdefault("gamma", gamma))
        pivots, sums = zip(*(_pivot_and_sum(group) for group in self.param_groups))
        self._prox = _ProxState(gamma, list(pivots), list(sums))

    @classmethod
    def with_sgd(cls, params: Iterable[Any], lr: float, gamma: float = 0.0, momentum: float = 0.0) -> "EchoedProx":
        """Proximal echoing around plain SGD (what ``algorithm=echo_prox`` builds)."""
        return cls(torch.optim.SGD(params, lr=positive_float("lr", lr), momentum=momentum), gamma=gamma)

    @classmethod
    def from_theory(
        cls, params: Iterable[Any], beta: float, rho: float, distance: float, batch_size: int, fresh_batches: int
    ) -> "EchoedProx":
        """Theorem 10: SGD with ``eta = 1/(beta + gamma)`` and ``gamma = (rho/D) sqrt(T/B)``."""
        gamma, eta = theory_prox_parameters(beta, rho, distance, batch_size, fresh_batches)
        return cls(torch.optim.SGD(params, lr=eta), gamma=gamma)

    def _group_added(self, group: dict[str, Any], index: int) -> None:
        non_negative_float("gamma", group.setdefault("gamma", self._prox.gamma))
        pivots, sums = _pivot_and_sum(group)
        self._prox.pivots.append(pivots)
        self._prox.sums.append(sums)

    @property
    def pivots(self) -> list[list[torch.Tensor]]:
        """The current centres of the proximal term, per parameter group."""
        return self._prox.pivots

    def start_fresh_batch(self) -> None:
        """Move the pivot to the average of the iterates of the group that just ended."""
        prox = self._prox
        if prox.count == 0:
            return
        for pivots, sums in zip(prox.pivots, prox.sums):
            for pivot, total in zip(pivots, sums):
                pivot.copy_(total / prox.count)
                total.zero_()
        prox.count = 0

    @torch.no_grad()
    def step(self, closure: Closure = None) -> Optional[torch.Tensor]:
        loss = _run_closure(closure)
        prox = self._prox
        for group, pivots, sums in zip(self.param_groups, prox.pivots, prox.sums):
            params = list(group["params"])
            for param, total in zip(params, sums):
                total.add_(param)
            with_grad = [(p, pv) for p, pv in zip(params, pivots) if p.grad is not None]
            prox_gradient_([p.grad for p, _ in with_grad], [p for p, _ in with_grad], [pv for _, pv in with_grad], group["gamma"])
        prox.count += 1
        self.optimizer.step()
        return loss

    def _own_state(self) -> dict[str, Any]:
        prox = self._prox
        return {
            "pivots": [[p.clone() for p in g] for g in prox.pivots],
            "sums": [[s.clone() for s in g] for g in prox.sums],
            "count": prox.count,
        }

    def _load_own_state(self, own: dict[str, Any]) -> None:
        prox = self._prox
        for mine, saved in zip(prox.pivots + prox.sums, own["pivots"] + own["sums"]):
            for tensor, value in zip(mine, saved):
                tensor.copy_(value)
        prox.count = int(own["count"])


class EchoedNesterov(Optimizer):
    """Nesterov's accelerated gradient with the state ``(d, lambda)`` carried across batches.

    The model's parameters hold the look-ahead point ``w + d`` (where the next gradient is
    taken); the iterate ``w`` itself, Algorithm 2's output, is in :meth:`iterates`.
    ``lambda_{j+1}^2 - lambda_{j+1} = lambda_j^2`` and ``gamma_{j+1} = (lambda_j - 1)/lambda_{j+1}``.

    Example::

        optimizer = EchoedNesterov(model.parameters(), lr=0.1)
    """

    def __init__(self, params: Iterable[Any], lr: float = 0.1, initial_lambda: float = 1.0) -> None:
        positive_float("lr", lr)
        if not initial_lambda >= 1:
            raise ConfigError("initial_lambda", initial_lambda, "must be >= 1")
        super().__init__(params, dict(lr=lr, initial_lambda=initial_lambda))
        for group in self.param_groups:
            group["lambda"] = float(group["initial_lambda"])
            for param in group["params"]:
                state = self.state[param]
                state["iterate"] = param.detach().clone()
                state["momentum"] = torch.zeros_like(param)

    def start_fresh_batch(self) -> None:
        """``d`` and ``lambda`` carry over between batches: nothing to do."""

    def iterates(self) -> list[torch.Tensor]:
        """The iterates ``w`` (the parameters hold ``w + d``)."""
        return [self.state[p]["iterate"] for g in self.param_groups for p in g["params"]]

    @torch.no_grad()
    def swap_parameters_and_iterates(self) -> None:
        """Exchange the parameters' values (``w + d``) with the iterates ``w``; call twice to undo."""
        for group in self.param_groups:
            for param in group["params"]:
                iterate = self.state[param]["iterate"]
                held = param.detach().clone()
                param.copy_(iterate)
                iterate.copy_(held)

    @torch.no_grad()
    def step(self, closure: Closure = None) -> Optional[torch.Tensor]:
        loss = _run_closure(closure)
        for group in self.param_groups:
            lam = group["lambda"]
            lam_next = next_nesterov_lambda(lam)
            momentum = nesterov_momentum(lam, lam_next)
            params = [p for p in group["params"] if p.grad is not None]
            iterates = [self.state[p]["iterate"] for p in params]
            momenta = [self.state[p]["momentum"] for p in params]
            nesterov_step_(iterates, momenta, [p.grad for p in params], group["lr"], momentum)
            for param, w, d in zip(params, iterates, momenta):
                param.copy_(w + d)
            group["lambda"] = lam_next
        return loss
