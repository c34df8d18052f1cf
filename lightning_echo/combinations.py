"""Which of the library's components and Trainer settings combine, decided in one place.

A run has at most one stage that knows what each optimizer step consumed (a
:class:`~lightning_echo.core.progress.ProgressSource`: ``DataEchoing``, a straggler strategy);
the components that rebuild the train loader take a single one; the straggler strategies average
their own gradients, so Lightning's gradient accumulation would mix updates. Every component asks
here, so a rule is stated (and worded) once. Duck-typed over the Trainer: no Lightning import.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, get_args

from lightning_echo.core.progress import ProgressSource
from lightning_echo.errors import ConfigError

# Where a ``DataEchoing`` callback echoes, as the run's strategy decides (``echo_role``):
# - ``loader``: on this process's train loader (no straggler strategy);
# - ``learner``: on this learner process's own loader; the parameter server counts the cluster's
#   fresh data and ends the run at the budget (this rank's echo stage enforces none);
# - ``server``: nowhere on this process (a parameter server reads no data); its budget is the cluster's;
# - ``simulated``: inside the simulated learners' schedule (the strategy reads the callback's settings).
EchoRole = Literal["loader", "learner", "server", "simulated"]
ECHO_ROLES: tuple[EchoRole, ...] = get_args(EchoRole)


def find_progress_source(trainer: Any) -> Optional[ProgressSource]:
    """The strategy or callback that reports what each step consumed, if any (the strategy first)."""
    if isinstance(trainer.strategy, ProgressSource):
        return trainer.strategy
    return next((c for c in trainer.callbacks if isinstance(c, ProgressSource)), None)


def refuse_second_progress_source(trainer: Any, owner: object, owner_name: str) -> None:
    """Refuse a progress source among the callbacks other than ``owner`` (e.g. ``DataEchoing``
    under a straggler strategy would serve one mini-batch to several learners)."""
    other = next((c for c in trainer.callbacks if isinstance(c, ProgressSource) and c is not owner
                  and not getattr(c, "composes_with_stragglers", False)), None)
    if other is not None:
        raise ConfigError("callbacks", type(other).__name__, f"cannot be combined with {owner_name}: a run has one "
                          "stage that says what each step consumed")


def refuse_gradient_accumulation(trainer: Any, owner_name: str) -> None:
    """Refuse ``accumulate_grad_batches > 1``: ``owner_name`` already averages each update's K gradients."""
    if trainer.accumulate_grad_batches != 1:
        raise ConfigError("trainer.accumulate_grad_batches", trainer.accumulate_grad_batches,
                          f"must be 1 with {owner_name}: each server update already averages K gradients")


def refuse_several_train_loaders(loader: Any, owner_name: str) -> None:
    """Refuse a list, tuple or dict of train loaders, or Lightning's ``CombinedLoader``."""
    if isinstance(loader, (list, tuple, dict)) or type(loader).__name__ == "CombinedLoader":
        raise ConfigError("train_dataloaders", type(loader).__name__, f"{owner_name} takes a single train loader")


def refuse_manual_optimization(module: Any, owner_name: str) -> None:
    """Refuse ``automatic_optimization = False``: ``owner_name`` decides when and at which
    parameters each gradient is computed, and steps the optimizer itself."""
    if module is not None and not module.automatic_optimization:
        raise ConfigError("automatic_optimization", False, f"with {owner_name}, the strategy computes each "
                          "gradient and applies the optimizer step itself; use automatic optimization (return the "
                          "loss from training_step)")


def echo_role(trainer: Any) -> EchoRole:
    """Where ``DataEchoing`` echoes in this run (see :data:`EchoRole`): the strategy's
    ``data_echoing_role()`` when it has one (the straggler strategies), else ``loader``."""
    decide = getattr(trainer.strategy, "data_echoing_role", None)
    role = decide() if callable(decide) else "loader"
    if role not in ECHO_ROLES:
        raise ValueError(f"{type(trainer.strategy).__name__}.data_echoing_role() returned {role!r}, not one of {ECHO_ROLES}")
    return role


def find_data_echoing(trainer: Any) -> Optional[Any]:
    """The ``DataEchoing`` callback of the run (a progress source that composes with the straggler
    strategies), if any."""
    return next((c for c in trainer.callbacks if getattr(c, "composes_with_stragglers", False)), None)
