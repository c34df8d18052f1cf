"""Staleness-aware step-size rules for asynchronous SGD (pure: torch and the standard library).

A gradient's staleness ``tau`` is the number of server updates since its learner read the
parameters. Each rule gives the multiplier of the base step size, in ``[0, 1]`` (0 drops the
gradient):

- ``constant``: 1;
- ``dutta`` (Dutta et al. 2018, eq. 13): ``eta_j = min(C / ||w_j - w_tau(j)||^2, eta_max)`` with
  ``eta_max`` the base lr, so the multiplier is ``min(1, C / (||w_j - w_tau(j)||^2 eta_max))``;
- ``mishchenko`` (Mishchenko et al. 2022, their experiments): ``min(1, M / tau)``, M learners;
- ``koloskova`` (Koloskova et al. 2022, Theorem 8): 1 while ``tau <= M`` (the concurrency), else
  ``min(gamma, 1 / (4 L tau)) / gamma``, or 0 with ``drop=True``.
"""

from __future__ import annotations

import math
import operator
from dataclasses import asdict, dataclass
from typing import Any, Literal, Mapping, Optional, Sequence, get_args

import torch

from lightning_echo.errors import ConfigError
from lightning_echo.validation import one_of, positive_float, positive_int

RuleName = Literal["constant", "dutta", "mishchenko", "koloskova"]
RULES: tuple[RuleName, ...] = get_args(RuleName)
RULE_SETTINGS = ("c", "learners", "smoothness", "drop")


def check_staleness(value: Any, key: str = "staleness") -> int:
    """``value`` as an int >= 0 (numpy and other integral types accepted), else ConfigError."""
    try:
        tau = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        tau = None
    if tau is None or tau < 0:
        raise ConfigError(key, value, "must be an integer >= 0")
    return tau


def _require(key: str, value: Any, allowed: str) -> None:
    if value is None:
        raise ConfigError(key, value, allowed)


def _non_negative(key: str, value: Any, allowed: str, finite: bool) -> float:
    """``value`` as a float >= 0 (finite if asked; a 0-d tensor is fine), else ConfigError."""
    try:
        number = None if isinstance(value, (bool, str)) or value is None else float(value)
    except (TypeError, ValueError, RuntimeError):
        number = None
    if number is None or not number >= 0 or (finite and math.isinf(number)):
        raise ConfigError(key, value, allowed)
    return number


@dataclass(frozen=True)
class StepSizeRule:
    """A named staleness-aware step-size rule with its parameters.

    ``c`` is Dutta's C (``dutta``), ``learners`` the number of learners M (``mishchenko``,
    ``koloskova``), ``smoothness`` the smoothness constant L (``koloskova`` unless ``drop``).
    Settings a rule does not use are kept but ignored, so one config can sweep several rules.

    Example::

        rule = StepSizeRule("mishchenko", learners=4)
        rule.factor(base_lr=0.1, staleness=8)  # 0.5: the step is 0.1 * 0.5
    """

    name: RuleName
    c: Optional[float] = None
    learners: Optional[int] = None
    smoothness: Optional[float] = None
    drop: bool = False

    def __post_init__(self) -> None:
        one_of("stale.lr_rule", self.name, RULES)
        if self.c is not None:
            object.__setattr__(self, "c", positive_float("stale.c", self.c))
        if self.learners is not None:
            positive_int("stale.learners", self.learners)
        if self.smoothness is not None:
            object.__setattr__(self, "smoothness", positive_float("stale.smoothness", self.smoothness))
        if not isinstance(self.drop, bool):
            raise ConfigError("stale.drop", self.drop, "must be true or false")
        if self.name == "dutta":
            _require("stale.c", self.c, "the dutta rule needs C > 0 (eta_j = min(C / ||w_j - w_tau||^2, eta_max))")
        elif self.name == "mishchenko":
            _require(
                "stale.learners", self.learners,
                "the mishchenko rule needs the number of learners M >= 1 (gamma_k = gamma * min(1, M / tau_k))",
            )
        elif self.name == "koloskova":
            _require(
                "stale.learners", self.learners, "the koloskova rule needs the concurrency M >= 1 (full step while tau_k <= M)"
            )
            if not self.drop:
                _require(
                    "stale.smoothness", self.smoothness,
                    "the koloskova rule needs L > 0 (gamma_k = min(gamma, 1 / (4 L tau_k)) when tau_k > M), or stale.drop=true",
                )

    @classmethod
    def from_config(cls, name: str, params: Optional[Mapping[str, Any]] = None) -> "StepSizeRule":
        """Build from a rule name and a mapping of settings (``None`` values mean "not set")."""
        params = dict(params or {})
        for key, value in params.items():
            if key not in RULE_SETTINGS:
                raise ConfigError(f"stale.{key}", value, "the step-size settings are " + ", ".join(RULE_SETTINGS))
        if params.get("drop") is None:
            params.pop("drop", None)
        return cls(name, **params)

    def to_dict(self) -> dict[str, Any]:
        """Plain settings (str, numbers, bool, None): what a checkpoint stores."""
        return asdict(self)

    @property
    def needs_distance(self) -> bool:
        """True when :meth:`factor` needs ``||w_j - w_tau||^2`` (the dutta rule)."""
        return self.name == "dutta"

    def factor(self, base_lr: float, staleness: int, distance_sq: Optional[float] = None) -> float:
        """Multiplier of ``base_lr`` in ``[0, 1]`` for one gradient of the given staleness (0: drop it).

        ``distance_sq`` is ``||w_j - w_tau||^2`` (see :func:`squared_distance`), needed by ``dutta``
        only. With ``base_lr == 0`` every rule gives 1: no cap can bind a zero step.
        """
        lr = _non_negative("lr", base_lr, "must be a finite number >= 0", finite=True)
        tau = check_staleness(staleness)
        if self.name == "constant":
            return 1.0
        if self.name == "dutta":
            dist = _non_negative(
                "distance_sq", distance_sq, "the dutta rule needs ||w_j - w_tau||^2, a number >= 0", finite=False
            )
            if dist == 0 or lr == 0:
                return 1.0
            # Divide in two steps: C / d^2 may overflow to inf (-> 1) but never divides by zero;
            # an infinite distance (diverged parameters) gives 0, i.e. the gradient is dropped.
            return min(1.0, (self.c / dist) / lr)
        if self.name == "mishchenko":
            return 1.0 if tau <= self.learners else self.learners / tau
        if tau <= self.learners:
            return 1.0
        if self.drop:
            return 0.0
        if lr == 0:
            return 1.0
        return min(1.0, (1.0 / (4.0 * self.smoothness * tau)) / lr)


def combined_factor(factors: Sequence[float]) -> float:
    """The multiplier for one update that averages K gradients: the mean of their factors.

    The update averages the K gradients (Dutta et al. eq. 3, ``w - eta/K sum_l g_l``) and a rule can
    only scale that one step's learning rate. Weighting each gradient by its own factor would
    move ``eta/K sum_l f_l g_l``; the mean factor applied to the average spends the same total
    step size ``eta/K sum_l f_l``, equals it exactly when the gradients agree, stays in
    ``[0, 1]``, and is 0 (drop the update) only when every gradient is dropped.
    """
    values = [float(f) for f in factors]
    if not values:
        raise ConfigError("factors", list(factors), "must hold at least one factor")
    for value in values:
        if not 0.0 <= value <= 1.0:
            raise ConfigError("factors", list(factors), "every factor must lie in [0, 1]")
    return math.fsum(values) / len(values)


def squared_distance(current: Sequence[torch.Tensor], stale: Sequence[torch.Tensor], name: str = "stale") -> float:
    """``sum_i ||current_i - stale_i||^2`` over all tensors, accumulated in float64.

    ``stale`` may live on another device (e.g. copies kept on the CPU); ``name`` is the setting
    named in errors.
    """
    if len(stale) != len(current):
        raise ConfigError(f"len({name})", len(stale), f"must equal the number of parameters ({len(current)})")
    parts = []
    for i, (now, old) in enumerate(zip(current, stale)):
        if not isinstance(old, torch.Tensor):
            raise ConfigError(f"{name}[{i}]", type(old).__name__, "must be a tensor")
        if old.shape != now.shape:
            raise ConfigError(f"{name}[{i}].shape", tuple(old.shape), f"must match the parameter's shape {tuple(now.shape)}")
        now64 = now.detach().to(torch.float64)
        parts.append((now64 - old.detach().to(device=now.device, dtype=torch.float64)).pow(2).sum())
    if not parts:
        return 0.0
    # One host sync for the whole sum rather than one per tensor.
    return float(torch.stack([part.to(parts[0].device) for part in parts]).sum())
