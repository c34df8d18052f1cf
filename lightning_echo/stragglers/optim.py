"""An optimizer wrapper that scales each step by a staleness-aware step-size rule.

Whoever applies asynchronous updates (a parameter server, a simulated one, a hand-written
loop) calls :meth:`StalenessAwareOptimizer.tell` with the staleness of the gradient(s) the next
step applies, then :meth:`~StalenessAwareOptimizer.step`. The wrapper is a real
``torch.optim.Optimizer`` that shares the wrapped optimizer's ``param_groups`` and ``state``, so
lr schedulers, Lightning's ``LearningRateMonitor``, gradient clipping and checkpoints treat it
as the optimizer itself. The rule scales the lr for that one step only: schedulers and
monitors keep seeing their own (base) lr; the lr actually applied is in ``last_lr``. A
``momentum_offset`` lowers every group's ``momentum`` the same way, for the step only
(:mod:`lightning_echo.core.momentum`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch.optim import Optimizer

from lightning_echo.core.momentum import corrected_momentum
from lightning_echo.core.optimizer_wrapper import OptimizerWrapper
from lightning_echo.core.step_sizes import (
    StepSizeRule,
    check_staleness,
    combined_factor,
    squared_distance,
)
from lightning_echo.errors import ConfigError

Closure = Optional[Callable[[], Any]]
Told = tuple[tuple[int, ...], Optional[tuple[float, ...]]]  # stalenesses, squared distances
STATE_KEY = "staleness_aware"


def in_optimizer_order(
    optimizer_params: Sequence[torch.Tensor], params: Sequence[torch.Tensor], values: Sequence[torch.Tensor]
) -> list[torch.Tensor]:
    """``values`` (one per tensor of ``params``: what a learner read) re-listed in the order of
    ``optimizer_params``, the order :meth:`StalenessAwareOptimizer.tell` pairs stale parameters
    in. A parameter of the optimizer's that is not among ``params`` (frozen, not exchanged)
    counts as unchanged: its current value. Pairs by identity, never by position."""
    position = {id(p): i for i, p in enumerate(params)}
    return [values[position[id(p)]] if id(p) in position else p.detach() for p in optimizer_params]


def _evaluate(closure: Closure) -> Any:
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def _stalenesses(staleness: Union[int, Sequence[int]]) -> tuple[int, ...]:
    if isinstance(staleness, torch.Tensor):
        staleness = staleness.tolist()
    if isinstance(staleness, (list, tuple)):
        if not staleness:
            raise ConfigError("staleness", staleness, "must be an integer >= 0 or a non-empty sequence of them")
        return tuple(check_staleness(tau) for tau in staleness)
    return (check_staleness(staleness),)


@dataclass
class _Progress:
    """The wrapper's own mutable state, kept in one object.

    Lightning's ``LightningOptimizer`` subclasses the optimizer's class on the fly and forwards
    attributes it lacks to the optimizer: a ``tell`` made through it then writes into this
    shared object, not onto the ``LightningOptimizer`` itself.
    """

    rule: StepSizeRule
    momentum_offset: float = 0.0
    told: Optional[Told] = None
    steps: int = 0
    dropped: int = 0
    last_factor: float = 1.0
    last_lr: float = 0.0
    last_staleness: Union[int, tuple[int, ...]] = 0


class StalenessAwareOptimizer(OptimizerWrapper):
    """Wraps any optimizer; each step's lr is the group's lr times the rule's factor.

    ``tell(staleness, stale_params)`` before a step gives the staleness of the gradient(s) in
    ``.grad`` (one int, or one per gradient when the update averages K of them: the factor is
    then :func:`~lightning_echo.core.step_sizes.combined_factor` of theirs) and, for the dutta
    rule, the parameters each gradient was computed at. ``step()`` then evaluates the closure
    (if any; a ``tell`` made inside it, e.g. from a Lightning ``on_before_optimizer_step`` hook,
    applies to this step), scales every group's lr for the inner step only and restores it.
    A step with nothing told is a plain step (factor 1, staleness 0). A factor of 0 drops the
    update: the inner optimizer is not stepped at all (its state and step counts stay as they are).

    The dutta rule caps each group at its own lr (``eta_max``), so with groups of different lrs
    the factors differ per group; ``last_factor`` and ``last_lr`` report the first group.
    An adaptive inner optimizer (Adam, ...) still folds a scaled-down gradient into its moments;
    only a factor of 0 keeps it out. Optimizers that re-evaluate the closure (LBFGS) are not
    supported: the closure is evaluated once, before the inner step.

    Example::

        optimizer = StalenessAwareOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), "mishchenko", learners=4)
        optimizer.tell(staleness=8)  # returns 0.5
        optimizer.step()             # an SGD step with lr 0.05; param_groups[0]["lr"] is 0.1 again
    """

    STATE_KEY = STATE_KEY
    OWN_FIELDS = ("_progress",)

    def __init__(self, optimizer: Optimizer, rule: Union[StepSizeRule, str] = "constant", *,
                 momentum_offset: float = 0.0, **rule_params: Any) -> None:
        if not isinstance(optimizer, Optimizer):
            raise ConfigError("optimizer", type(optimizer).__name__, "must be a torch.optim.Optimizer")
        if isinstance(optimizer, StalenessAwareOptimizer):
            raise ConfigError(
                "optimizer", type(optimizer).__name__, "must not be staleness-aware already (wrap its .optimizer instead)"
            )
        if isinstance(rule, StepSizeRule):
            if rule_params:
                raise ConfigError(
                    "stale.lr_rule", rule, "pass either a StepSizeRule or a rule name with its settings, not both"
                )
        else:
            rule = StepSizeRule.from_config(rule, rule_params)
        for index, group in enumerate(optimizer.param_groups):
            self._check_lr(group, index)
        if isinstance(momentum_offset, bool) or not isinstance(momentum_offset, (int, float)) or not 0 <= momentum_offset < 1:
            raise ConfigError("momentum_offset", momentum_offset, "must be a number in [0, 1)")
        super().__init__(optimizer)
        self._progress = _Progress(rule, float(momentum_offset), last_lr=float(optimizer.param_groups[0]["lr"]))

    @property
    def rule(self) -> StepSizeRule:
        """The step-size rule (replaced by the saved one on ``load_state_dict``)."""
        return self._progress.rule

    @property
    def steps(self) -> int:
        """Calls to ``step``, dropped ones included."""
        return self._progress.steps

    @property
    def dropped(self) -> int:
        """Steps skipped because their factor was 0."""
        return self._progress.dropped

    @property
    def last_factor(self) -> float:
        """The factor the last step used (first group's; 0 when dropped)."""
        return self._progress.last_factor

    @property
    def last_lr(self) -> float:
        """The lr the last step actually applied to the first group (0 when dropped)."""
        return self._progress.last_lr

    @property
    def momentum_offset(self) -> float:
        """Subtracted from every group's ``momentum`` (floored at 0) for each step."""
        return self._progress.momentum_offset

    @property
    def last_staleness(self) -> Union[int, tuple[int, ...]]:
        """The last step's staleness as told: an int, or a tuple for several gradients (0: nothing told)."""
        return self._progress.last_staleness

    @staticmethod
    def _check_lr(group: dict[str, Any], index: int) -> None:
        if "lr" not in group:
            raise ConfigError(
                f"optimizer.param_groups[{index}]['lr']", None, "every parameter group needs an lr for the rule to scale"
            )

    def _group_added(self, group: dict[str, Any], index: int) -> None:
        self._check_lr(group, index)

    def _params(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def snapshot(self) -> list[torch.Tensor]:
        """Detached copies of every parameter, in the order ``tell`` expects (what a learner reads)."""
        return [p.detach().clone() for p in self._params()]

    def tell(
        self,
        staleness: Union[int, Sequence[int]],
        stale_params: Optional[Sequence[Sequence[torch.Tensor]]] = None,
    ) -> float:
        """Set the staleness of the gradient(s) the next step applies; return that step's factor.

        ``stale_params`` holds, per gradient, the parameters it was computed at (a list of
        tensors in the order of the optimizer's params, as :meth:`snapshot` gives); a plain list
        of tensors is accepted for one gradient. Only the dutta rule needs them (their distance
        to the current parameters is taken now, so tell right before the step); other rules
        ignore them. The latest ``tell`` before a step wins. The returned factor is the first
        group's at the current lr.
        """
        taus = _stalenesses(staleness)
        distances = None
        if self.rule.needs_distance:
            if stale_params is None:
                raise ConfigError(
                    "stale_params", None,
                    "the dutta rule needs the parameters each gradient was computed at (one list of tensors per gradient)",
                )
            per_gradient = list(stale_params)
            if per_gradient and isinstance(per_gradient[0], torch.Tensor):
                per_gradient = [per_gradient]
            if len(per_gradient) != len(taus):
                raise ConfigError(
                    "len(stale_params)", len(per_gradient), f"must equal the number of staleness values told ({len(taus)})"
                )
            current = self._params()
            distances = tuple(
                squared_distance(current, list(params), name=f"stale_params[{i}]") for i, params in enumerate(per_gradient)
            )
        factors = self._factors(taus, distances)  # validates before anything is stored
        self._progress.told = (taus, distances)
        return factors[0]

    def _factors(self, taus: tuple[int, ...], distances: Optional[tuple[float, ...]]) -> list[float]:
        """Per group: the mean over the told gradients of the rule's factor at that group's lr."""
        dists = distances if distances is not None else (None,) * len(taus)
        result = []
        for group in self.param_groups:
            lr = group["lr"]
            base = float(lr.detach()) if isinstance(lr, torch.Tensor) else lr
            result.append(combined_factor([self.rule.factor(base, tau, d) for tau, d in zip(taus, dists)]))
        return result

    def step(self, closure: Closure = None) -> Any:
        """Evaluate ``closure``, then step the wrapped optimizer with every lr scaled by the told factor."""
        loss = _evaluate(closure)
        progress = self._progress
        told, progress.told = progress.told, None
        taus, distances = told if told is not None else ((0,), None)
        factors = [1.0] * len(self.param_groups) if told is None else self._factors(taus, distances)
        progress.last_staleness = taus[0] if len(taus) == 1 else taus
        progress.steps += 1
        if all(f == 0.0 for f in factors):
            progress.dropped += 1
            progress.last_factor, progress.last_lr = 0.0, 0.0
            return loss
        base_lrs = [group["lr"] for group in self.param_groups]
        offset = progress.momentum_offset
        base_momenta = [group.get("momentum") for group in self.param_groups]
        try:
            for group, factor in zip(self.param_groups, factors):
                if factor != 1.0:
                    group["lr"] = group["lr"] * factor
                if offset and group.get("momentum"):
                    group["momentum"] = corrected_momentum(group["momentum"], offset)
            applied = self.param_groups[0]["lr"]
            self.optimizer.step()
        finally:
            for group, lr, momentum in zip(self.param_groups, base_lrs, base_momenta):
                group["lr"] = lr
                if momentum is not None:
                    group["momentum"] = momentum
        progress.last_factor, progress.last_lr = factors[0], float(applied)
        return loss

    def _own_state(self) -> dict[str, Any]:
        """Plain values only (rule settings, counters, a pending ``tell``), so a checkpoint stays
        loadable with ``torch.load(weights_only=True)``; on load, the saved rule replaces the one
        this wrapper was built with (as the saved lrs replace the built ones)."""
        progress, told = self._progress, None
        if progress.told is not None:
            taus, distances = progress.told
            told = {"staleness": list(taus), "distance_sq": None if distances is None else list(distances)}
        return {
            "rule": progress.rule.to_dict(),
            "steps": progress.steps,
            "dropped": progress.dropped,
            "told": told,
            "last_factor": progress.last_factor,
            "last_lr": progress.last_lr,
            "last_staleness": progress.last_staleness,
        }

    def _load_own_state(self, own: dict[str, Any]) -> None:
        told, staleness = own["told"], own["last_staleness"]
        loaded = _Progress(
            rule=StepSizeRule(**own["rule"]),
            momentum_offset=self._progress.momentum_offset,  # a setting of this run, not state
            told=None if told is None else (
                tuple(told["staleness"]),
                None if told["distance_sq"] is None else tuple(told["distance_sq"]),
            ),
            steps=int(own["steps"]),
            dropped=int(own["dropped"]),
            last_factor=float(own["last_factor"]),
            last_lr=float(own["last_lr"]),
            last_staleness=tuple(staleness) if isinstance(staleness, (list, tuple)) else int(staleness),
        )
        vars(self._progress).update(vars(loaded))  # in place: the object may be shared (see _Progress)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rule={self.rule!r}, optimizer={self.optimizer!r})"
