"""Progress metrics every run logs, for any LightningModule: samples, steps, wall-clock time."""

from __future__ import annotations

import time
from typing import Any, Optional

import pytorch_lightning as pl
from pytorch_lightning.utilities.data import extract_batch_size

from lightning_echo.validation import positive_int


class TrainingProgress(pl.Callback):
    """Logs ``progress/fresh_samples``, ``progress/optimizer_steps`` and ``time/elapsed_s``.

    Fresh samples count each training example the first time the loop trains on it: with
    ``DataEchoing`` among the callbacks, echoed batches add optimizer steps but no fresh samples.
    ``max_fresh_samples`` is a data budget for any algorithm: training stops after the step that
    brings the fresh samples to it (an echoed run loses at most the rest of its last echo group).
    ``time/elapsed_s`` is wall-clock training time since the start of ``fit`` (after setup),
    not counting validation passes, so runs that validate at different moments compare fairly.
    They are logged every ``log_every_n_steps`` and at the start of every validation, so each
    validation loss has the time, samples and steps it was reached at.

    Example::

        trainer = Trainer(callbacks=[TrainingProgress()], logger=CSVLogger("logs"))
    """

    def __init__(self, max_fresh_samples: Optional[int] = None) -> None:
        if max_fresh_samples is not None:
            positive_int("budget.fresh_samples", max_fresh_samples)
        self.max_fresh_samples = max_fresh_samples
        self.fresh_samples = 0
        self.fresh_batches = 0
        self._echo_stage: Optional[pl.Callback] = None
        self._start: Optional[float] = None
        self._validation_start: Optional[float] = None
        self._excluded_s = 0.0
        self._elapsed_before_resume = 0.0

    @property
    def elapsed_s(self) -> float:
        """Wall-clock seconds of training so far, without validation (summed over resumed segments)."""
        if self._start is None:
            return self._elapsed_before_resume
        now = time.perf_counter()
        in_validation = now - self._validation_start if self._validation_start is not None else 0.0
        return self._elapsed_before_resume + (now - self._start) - self._excluded_s - in_validation

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A callback that repeats batches (DataEchoing) says how many examples of each batch are new.
        self._echo_stage = next((c for c in trainer.callbacks if hasattr(c, "current_fresh_samples")), None)
        self._start = time.perf_counter()
        self._excluded_s = 0.0

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._start is not None:
            self._validation_start = time.perf_counter()
        if not trainer.sanity_checking:
            # The validation loss logged next belongs to this point of training.
            self._log(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._validation_start is not None:
            self._excluded_s += time.perf_counter() - self._validation_start
            self._validation_start = None

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        fresh = getattr(self._echo_stage, "current_fresh_samples", None)
        if fresh is None:
            fresh = extract_batch_size(batch)
        if fresh:
            self.fresh_batches += 1
            self.fresh_samples += fresh
        if trainer.global_step % trainer.log_every_n_steps == 0 or trainer.is_last_batch:
            self._log(trainer)
        if self.max_fresh_samples is not None and self.fresh_samples >= self.max_fresh_samples:
            trainer.should_stop = True

    def _log(self, trainer: pl.Trainer) -> None:
        metrics = {
            "progress/fresh_samples": self.fresh_samples,
            "progress/fresh_batches": self.fresh_batches,
            "progress/optimizer_steps": trainer.global_step,
            "time/elapsed_s": self.elapsed_s,
        }
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._start is not None:
            self._elapsed_before_resume = self.elapsed_s
            self._start = None

    def state_dict(self) -> dict[str, Any]:
        return {
            "fresh_samples": self.fresh_samples,
            "fresh_batches": self.fresh_batches,
            "elapsed_s": self.elapsed_s,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.fresh_samples = int(state_dict["fresh_samples"])
        self.fresh_batches = int(state_dict["fresh_batches"])
        self._elapsed_before_resume = float(state_dict["elapsed_s"])

