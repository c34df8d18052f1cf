"""``TrainingProgress``: the one owner of training progress (fresh data, steps, time, data budget)."""

from __future__ import annotations

import time
from typing import Any, Dict, Optional, TypeVar

from typing_extensions import override

from lightning_echo.combinations import find_progress_source
from lightning_echo.core.progress import (
    SIMULATED,
    WALL_CLOCK,
    Clock,
    FreshDataBudget,
    ProgressLedger,
    ProgressSource,
    StepReport,
)
from lightning_echo.lightning_namespace import (
    import_lightning,
    pl,
    require_same_lightning,
    warn_if_other_lightning_imported,
)
from lightning_echo.metric_names import Progress

extract_batch_size = import_lightning("utilities.data").extract_batch_size


class TrainingProgress(pl.Callback):
    """Counts what training consumed and logs it, for any LightningModule and any algorithm.

    Logged every ``log_every_n_steps`` and at the start of every validation (so each validation
    loss has the progress it was reached at): ``progress/fresh_samples``,
    ``progress/fresh_batches``, ``progress/optimizer_steps``, ``time/elapsed_s`` (wall-clock
    training time since the start of ``fit``, without validation passes), ``time/data_wait_s``
    (time between training steps outside validation: waiting for the next batch and its
    host-to-device copy), and ``time/simulated_s`` for runs on a simulated clock.

    A :class:`~lightning_echo.core.progress.ProgressSource` among the callbacks or the strategy
    (``DataEchoing``, simulated learners) says what each step consumed: an echoed batch adds an
    optimizer step but no fresh sample. Without one, every batch is fresh. Its own metrics are
    logged alongside (``echo/*``). ``max_fresh_samples`` / ``max_fresh_batches`` are the run's
    data budget, for any algorithm: training stops after the step that uses it up (a source that
    enforces the budget itself, like an echo stage, finishes serving its last fresh batch first).

    Example::

        from pytorch_lightning.demos.boring_classes import BoringModel

        progress = TrainingProgress(max_fresh_samples=8)  # BoringModel trains on single examples
        trainer = pl.Trainer(max_steps=100, callbacks=[progress], logger=False, enable_progress_bar=False,
                             enable_checkpointing=False, enable_model_summary=False)
        trainer.fit(BoringModel())
        assert progress.fresh_samples == 8 and trainer.global_step == 8
    """

    ELAPSED_S = ProgressLedger.ELAPSED_S

    def __init__(self, max_fresh_samples: Optional[int] = None, max_fresh_batches: Optional[int] = None) -> None:
        warn_if_other_lightning_imported(self)
        self.ledger = ProgressLedger(FreshDataBudget(max_fresh_samples, max_fresh_batches))
        self.source: Optional[ProgressSource] = None
        self._start: Optional[float] = None
        self._validation_start: Optional[float] = None
        self._excluded_s = 0.0
        self._elapsed_before_resume = 0.0
        self._last_step_end: Optional[tuple[float, float]] = None  # (time, excluded_s) at the end of the last step
        self._global_step_at_batch: Optional[int] = None  # global_step when the current batch started

    # -- what other components read ---------------------------------------------------------------
    @property
    def fresh_samples(self) -> int:
        """Fresh examples trained on so far."""
        return self.ledger.fresh_samples

    @property
    def fresh_batches(self) -> int:
        """Fresh batches trained on so far."""
        return self.ledger.fresh_batches

    @property
    def max_fresh_samples(self) -> Optional[int]:
        """The budget of fresh samples (None: none)."""
        return self.ledger.budget.max_samples

    @property
    def clock(self) -> Clock:
        """The clock this run's time is measured in: ``wall_clock``, or ``simulated`` for a source that simulates time."""
        return self.source.clock if self.source is not None else WALL_CLOCK

    @property
    def elapsed_s(self) -> float:
        """Wall-clock seconds of training so far, without validation (summed over resumed segments)."""
        if self._start is None:
            return self._elapsed_before_resume
        now = time.perf_counter()
        in_validation = now - self._validation_start if self._validation_start is not None else 0.0
        return self._elapsed_before_resume + (now - self._start) - self._excluded_s - in_validation

    def tighten_budget(self, max_samples: Optional[int], max_batches: Optional[int]) -> FreshDataBudget:
        """Merge a stage's own limits into the run's budget (the tighter of each) and return it."""
        self.ledger.budget = self.ledger.budget.merged(max_samples, max_batches)
        return self.ledger.budget

    # -- Lightning hooks ---------------------------------------------------------------------------
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        require_same_lightning(trainer, self)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.source = find_progress_source(trainer)
        self._start = time.perf_counter()
        self._excluded_s = 0.0

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_step_end = (time.perf_counter(), self._excluded_s)

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self._global_step_at_batch = trainer.global_step
        if self._last_step_end is not None:
            ended, excluded_then = self._last_step_end
            self.ledger.add_data_wait(max(0.0, time.perf_counter() - ended - (self._excluded_s - excluded_then)))

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._start is not None:
            self._validation_start = time.perf_counter()
        if not trainer.sanity_checking:
            # The validation loss logged next belongs to this point of training.
            self._log(trainer)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._validation_start is not None:
            self._excluded_s += time.perf_counter() - self._validation_start
            self._validation_start = None

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        report = self.source.step_report() if self.source is not None else None
        if report is None:
            size = extract_batch_size(batch)
            report = StepReport(samples=size, fresh_samples=size)
        # Optimizer steps counted where they happen: a forward-only batch (SWA's batch-norm pass) takes none.
        stepped = trainer.global_step - self._global_step_at_batch if self._global_step_at_batch is not None else 1
        self.ledger.record(report, optimizer_steps=max(0, stepped))
        if trainer.global_step % trainer.log_every_n_steps == 0 or trainer.is_last_batch:
            self._log(trainer)
            if self.source is not None:
                for name, value in self.source.progress_bar(self.ledger).items():
                    # batch_size given: Lightning cannot infer one for a training_step(dataloader_iter)
                    pl_module.log(name, float(value), prog_bar=True, logger=False, on_step=True, on_epoch=False, batch_size=1)
        if self.ledger.budget_exhausted and not (self.source is not None and self.source.enforces_budget):
            trainer.should_stop = True
        self._last_step_end = (time.perf_counter(), self._excluded_s)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._start is not None:
            self._elapsed_before_resume = self.elapsed_s
            self._start = None
        self._last_step_end = None

    def _log(self, trainer: pl.Trainer) -> None:
        metrics: Dict[str, float] = {
            Progress.FRESH_SAMPLES: self.ledger.fresh_samples,
            Progress.FRESH_BATCHES: self.ledger.fresh_batches,
            Progress.OPTIMIZER_STEPS: trainer.global_step,
            Progress.ELAPSED_S: self.elapsed_s,
            Progress.DATA_WAIT_S: self.ledger.data_wait_s,
        }
        if self.clock == SIMULATED and self.ledger.clock_s is not None:
            metrics[Progress.SIMULATED_S] = self.ledger.clock_s
        if self.source is not None:
            metrics.update(self.source.progress_metrics(self.ledger))
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    # -- checkpointing ------------------------------------------------------------------------------
    @override
    def state_dict(self) -> Dict[str, Any]:
        state = self.ledger.state_dict()
        state[self.ELAPSED_S] = self.elapsed_s
        return state

    @override
    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.ledger.load_state_dict(state_dict)
        self._elapsed_before_resume = float(state_dict[self.ELAPSED_S])


def training_progress(trainer: pl.Trainer, add: bool = False) -> Optional[TrainingProgress]:
    """The Trainer's ``TrainingProgress`` callback; with ``add``, one is added when there is none."""
    return find_callback(trainer, TrainingProgress, add)


CallbackType = TypeVar("CallbackType", bound=pl.Callback)


def find_callback(trainer: pl.Trainer, kind: type[CallbackType], add: bool = False) -> Optional[CallbackType]:
    """The Trainer's first ``kind`` callback; with ``add``, a default ``kind()`` is added when there is none."""
    found = next((c for c in trainer.callbacks if isinstance(c, kind)), None)
    if found is None and add:
        found = kind()
        trainer.callbacks.append(found)
    return found
