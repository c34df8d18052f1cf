"""``DivergenceGuard``: the one owner of "this run diverged" (a loss that is no longer finite, one
that grew far above where the run started, or one that a caller bounds, such as ``TargetLoss``'s
full training loss)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

import torch
from typing_extensions import override

from lightning_echo.callbacks.progress import find_callback
from lightning_echo.lightning_namespace import pl, require_same_lightning, warn_if_other_lightning_imported
from lightning_echo.metric_names import Loss
from lightning_echo.errors import ConfigError
from lightning_echo.validation import positive_int

TRAIN_LOSS = Loss.TRAIN
# The command line's ``divergence_growth``: a loss 100 times its start is no training any more.
DEFAULT_MAX_GROWTH = 100.0


@dataclass(frozen=True)
class Divergence:
    """Where a run diverged: ``metric`` had ``value`` after ``step`` optimizer steps; ``limit`` is
    the bound it crossed (None: it was not finite)."""

    step: int
    metric: str
    value: float
    limit: Optional[float] = None

    def describe(self) -> str:
        """``train/loss=nan at step 12`` or ``train/full_loss=31.2 above 23 at step 40``."""
        bound = f" above {self.limit:.4g}" if self.limit is not None and math.isfinite(self.value) else ""
        return f"{self.metric}={self.value:.4g}{bound} at step {self.step}"

    def as_dict(self) -> dict[str, Any]:
        """For a JSON record (a non-finite value is written as its name, e.g. ``"nan"``)."""
        value: Any = self.value if math.isfinite(self.value) else str(self.value)
        return {"step": self.step, "metric": self.metric, "value": value, "limit": self.limit}


def find_divergence(metric: str, value: float, step: int, limit: Optional[float] = None) -> Optional[Divergence]:
    """The divergence ``value`` shows: it is not finite, or it is above ``limit`` when one is given."""
    value = float(value)
    if not math.isfinite(value) or (limit is not None and value > limit):
        return Divergence(int(step), metric, value, limit)
    return None


class DivergenceGuard(pl.Callback):
    """Stops training at the first non-finite training loss, and holds the run's :class:`Divergence`.

    Every ``every_n_steps`` optimizer steps it looks at the loss ``training_step`` returned (a
    tensor, or a mapping with ``"loss"``), dated by the step it was computed at (as loggers date
    it). With ``max_growth`` (like ``EarlyStopping(divergence_threshold=...)``, but relative), a
    loss that is finite but above ``max_growth`` times the run's first positive training loss
    (kept in checkpoints, so a resumed run keeps its reference) also counts: a run whose loss went
    from 2 to 80,000 diverged even though it stayed finite. Other callbacks that measure a loss of their own report
    it through :meth:`observe` (``TargetLoss`` checks its full training loss against a bound), so
    there is one place that decides a run diverged and one record of it: :attr:`divergence`.
    Training stops the way ``EarlyStopping`` stops it (``trainer.should_stop``); whoever started
    ``fit`` reads :attr:`divergence` afterwards (the command line records the run as ``diverged``).

    Example::

        guard = DivergenceGuard()
        trainer = Trainer(callbacks=[guard], max_steps=100)
        trainer.fit(model)
        if guard.divergence is not None:
            print("diverged:", guard.divergence.describe())
    """

    def __init__(self, every_n_steps: int = 1, max_growth: Optional[float] = None) -> None:
        warn_if_other_lightning_imported(self)
        self.every_n_steps = positive_int("every_n_steps", every_n_steps)
        self.max_growth = check_max_growth(max_growth)
        self.divergence: Optional[Divergence] = None
        self.reference_loss: Optional[float] = None  # the run's first positive training loss
        self._batch_step = 0

    def growth_limit(self, reference: Optional[float] = None) -> Optional[float]:
        """The bound ``max_growth`` sets above ``reference`` (default: the first training loss);
        None without ``max_growth`` or a positive reference."""
        reference = self.reference_loss if reference is None else reference
        if self.max_growth is None or reference is None or not reference > 0 or not math.isfinite(reference):
            return None
        return self.max_growth * reference

    def observe(self, trainer: pl.Trainer, metric: str, value: float, limit: Optional[float] = None,
                step: Optional[int] = None) -> Optional[Divergence]:
        """Check ``value`` of ``metric`` at ``step`` (default: the Trainer's ``global_step``) against
        ``limit`` when given; the first divergence found is kept and stops training. Returns the
        run's divergence so far."""
        if self.divergence is None:
            found = find_divergence(metric, value, trainer.global_step if step is None else step, limit)
            if found is not None:
                self.divergence = found
                trainer.should_stop = True
        return self.divergence

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        require_same_lightning(trainer, self)

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self._batch_step = trainer.global_step

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._batch_step % self.every_n_steps != 0:
            return
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            value = float(loss.detach())
            if self.reference_loss is None and math.isfinite(value) and value > 0:
                self.reference_loss = value
            self.observe(trainer, TRAIN_LOSS, value, limit=self.growth_limit(), step=self._batch_step)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"reference_loss": self.reference_loss}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.reference_loss = state_dict.get("reference_loss")


def check_max_growth(max_growth: Optional[float], key: str = "max_growth") -> Optional[float]:
    """``max_growth`` as a float > 1, or None (no growth rule); refused in one line otherwise."""
    if max_growth is None:
        return None
    if isinstance(max_growth, bool) or not isinstance(max_growth, (int, float)) or not (
            math.isfinite(max_growth) and max_growth > 1):
        raise ConfigError(key, max_growth, "must be a finite number > 1 (how many times its first loss a loss may "
                          "grow before the run counts as diverged), or null for no such rule")
    return float(max_growth)


def divergence_guard(trainer: pl.Trainer, add: bool = False) -> Optional[DivergenceGuard]:
    """The Trainer's ``DivergenceGuard``; with ``add``, one is added when there is none."""
    return find_callback(trainer, DivergenceGuard, add)
