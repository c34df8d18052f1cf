"""How much momentum asynchrony itself adds, and what is left of an optimizer's own momentum
once that is taken into account (Mitliagkas, Zhang, Hadjis and Re 2016, "Asynchrony begets
momentum").

With Q updates landing, on average, while one learner computes its gradient, asynchronous SGD
behaves in expectation like momentum SGD with an implicit momentum of ``1 - 1/Q``. An explicit
momentum on top compounds it: runs that converge with plain SGD can diverge with 0.9. Tuning
the explicit momentum down by the implicit one keeps the total near what the user chose.
For K-async, K-batch-async and Ringmaster, ``Q = P / K`` (K gradients per update, P learners
computing); for async, ``Q = P``.

Example::

    assert implicit_momentum(learners=8, gradients_per_update=1) == 0.875
    assert corrected_momentum(0.9, implicit_momentum(8, 1)) == pytest.approx(0.025)
"""

from __future__ import annotations

from typing import Literal, get_args

from lightning_echo.errors import ConfigError
from lightning_echo.validation import positive_int

MomentumCorrection = Literal["none", "implicit"]
MOMENTUM_CORRECTIONS: tuple[MomentumCorrection, ...] = get_args(MomentumCorrection)


def implicit_momentum(learners: int, gradients_per_update: int) -> float:
    """The momentum asynchrony adds with ``learners`` computing and ``gradients_per_update``
    gradients per update: ``1 - K / P`` (0 when every update waits for all of them)."""
    positive_int("stale.learners", learners)
    positive_int("gradients per update", gradients_per_update)
    return max(0.0, 1.0 - gradients_per_update / learners)


def corrected_momentum(momentum: float, implicit: float) -> float:
    """The explicit momentum to apply so that, with ``implicit`` added, the total stays near
    ``momentum``: ``max(0, momentum - implicit)``."""
    if not 0.0 <= implicit < 1.0:
        raise ConfigError("implicit momentum", implicit, "must be in [0, 1)")
    return max(0.0, momentum - implicit)
