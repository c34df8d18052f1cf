"""``DataEchoing``: echo training batches in any Lightning project, with one callback."""

from __future__ import annotations

from typing import Any, Callable, Optional

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_warn
from torch.utils.data import DataLoader
from torchdata.nodes import BaseNode
from typing_extensions import override

from lightning_echo.callbacks.progress import TrainingProgress, training_progress
from lightning_echo.core.echo_factor import (
    AUTO,
    EchoFactor,
    check_echo_factor,
    is_integer_factor,
)
from lightning_echo.core.progress import (
    WALL_CLOCK,
    FreshDataBudget,
    ProgressLedger,
    StepReport,
)
from lightning_echo.data.background import BackgroundQueue
from lightning_echo.data.nodes import IterableNode
from lightning_echo.data.pipeline import PLACEMENTS, DataPipeline
from lightning_echo import lightning_internals as _lightning
from lightning_echo.echo.loader import EchoLoader
from lightning_echo.echo.node import BatchEcho, EchoInfo, ExampleEcho
from lightning_echo.errors import ConfigError
from lightning_echo.validation import non_negative_int, one_of, positive_int

KINDS = ("batch", "example")


class DataEchoing(pl.Callback):
    """Take several optimizer steps on each fresh training batch while the next one is coming.

    Installs an echo stage on the train loader the Trainer gets (from a DataModule, the
    LightningModule or ``fit(train_dataloaders=...)``); validation and test loaders are left
    alone and the LightningModule is not changed. Every served batch is one optimizer step, so
    ``global_step`` and ``max_steps`` count echoed steps; ``max_fresh_batches`` /
    ``max_fresh_samples`` stop training after that much fresh data (its last batch is still
    echoed), tightening the run's data budget (``TrainingProgress``).

    It reports what each step consumed to the run's ``TrainingProgress`` (one is added when the
    Trainer has none), which counts and logs it: the attributes ``fresh_batches``,
    ``fresh_samples``, ``echoed_steps``, ``steps``, ``effective_factor`` and ``data_wait_s`` read
    that count.

    Args:
        factor: times each fresh batch is served: a number >= 1 (non-integer: ``floor`` times
            plus once more with probability of the fraction), or ``"auto"``: echo only while
            the next fresh batch is not ready, up to ``max_factor`` times in all. Under DDP the
            ranks agree every step: a fresh batch is taken when every rank has one ready.
        kind: ``"batch"`` repeats whole batches (reusing their device copy); ``"example"``
            repeats examples and re-batches them through a ``shuffle_buffer``.
        placement: for loaders built by :mod:`lightning_echo.data` with an augmentation,
            echo ``"after_augmentation"`` (echoes are identical) or ``"before_augmentation"``
            (each echo is augmented afresh).
        seed: seeds the non-integer factor draws and the example shuffle.

    Logged (through the Trainer's loggers, next to ``TrainingProgress``'s metrics), with
    ``fresh`` and ``echoed`` in the progress bar: ``echo/fresh_batches``, ``echo/fresh_samples``,
    ``echo/echoed_steps``, ``echo/effective_factor``, ``echo/data_wait_s``.

    Example::

        from pytorch_lightning.demos.boring_classes import BoringModel

        echo = DataEchoing(factor=4)
        trainer = pl.Trainer(max_steps=40, callbacks=[echo], logger=False, enable_progress_bar=False,
                             enable_checkpointing=False, enable_model_summary=False)
        trainer.fit(BoringModel())
        assert (echo.steps, echo.fresh_batches, echo.echoed_steps) == (40, 10, 30)
    """

    def __init__(
        self,
        factor: EchoFactor = 2,
        kind: str = "batch",
        max_factor: int = 4,
        shuffle_buffer: int = 1024,
        placement: str = "after_augmentation",
        seed: int = 0,
        max_fresh_batches: Optional[int] = None,
        max_fresh_samples: Optional[int] = None,
    ) -> None:
        self.factor = check_echo_factor(factor, max_factor)
        self.kind = one_of("kind", kind, KINDS)
        if kind == "example" and factor == AUTO:
            raise ConfigError("factor", factor, "example echoing takes a number >= 1; 'auto' works with kind=batch")
        self.max_factor = max_factor
        self.shuffle_buffer = positive_int("shuffle_buffer", shuffle_buffer)
        self.placement = one_of("placement", placement, PLACEMENTS)
        self.seed = non_negative_int("seed", seed)
        self.max_fresh_batches = positive_int("max_fresh_batches", max_fresh_batches) if max_fresh_batches is not None else None
        self.max_fresh_samples = positive_int("max_fresh_samples", max_fresh_samples) if max_fresh_samples is not None else None
        self.device_copies = 0
        self._budget = FreshDataBudget(self.max_fresh_samples, self.max_fresh_batches)
        self._progress: Optional[TrainingProgress] = None
        self._loader: Optional[EchoLoader] = None
        self._current: Optional[EchoInfo] = None
        self._report: Optional[StepReport] = None
        self._device_batch: Any = None
        self._undo: list[Callable[[], None]] = []
        self._trainer: Optional[pl.Trainer] = None

    # -- the progress source (lightning_echo.core.progress.ProgressSource) ----------------------------
    clock = WALL_CLOCK
    enforces_budget = True  # the echo stage stops fetching at the budget and finishes its last group

    def step_report(self) -> Optional[StepReport]:
        """What the step being trained on consumed (an echo brings no fresh sample)."""
        return self._report

    def progress_metrics(self, ledger: ProgressLedger) -> dict[str, float]:
        return {
            "echo/fresh_batches": ledger.fresh_batches,
            "echo/fresh_samples": ledger.fresh_samples,
            "echo/echoed_steps": ledger.echoed_steps,
            "echo/effective_factor": ledger.effective_factor,
            "echo/data_wait_s": ledger.data_wait_s,
        }

    def progress_bar(self, ledger: ProgressLedger) -> dict[str, float]:
        return {"fresh": ledger.fresh_batches, "echoed": ledger.echoed_steps}

    # -- counters, read from the run's TrainingProgress --------------------------------------------
    @property
    def _ledger(self) -> ProgressLedger:
        return self._progress.ledger if self._progress is not None else ProgressLedger()

    @property
    def fresh_batches(self) -> int:
        """Fresh batches trained on so far."""
        return self._ledger.fresh_batches

    @property
    def fresh_samples(self) -> int:
        """Fresh examples trained on so far."""
        return self._ledger.fresh_samples

    @property
    def echoed_steps(self) -> int:
        """Optimizer steps on echoed data so far."""
        return self._ledger.echoed_steps

    @property
    def steps(self) -> int:
        """Optimizer steps so far."""
        return self._ledger.steps

    @property
    def effective_factor(self) -> float:
        """Optimizer steps per fresh batch so far."""
        return self._ledger.effective_factor

    @property
    def data_wait_s(self) -> float:
        """Seconds the training loop waited for its batches."""
        return self._ledger.data_wait_s

    # -- installation ----------------------------------------------------------------------------
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._trainer = trainer
        self._progress = training_progress(trainer, add=True)
        assert self._progress is not None
        self._budget = self._progress.tighten_budget(self.max_fresh_samples, self.max_fresh_batches)
        if trainer.accumulate_grad_batches > 1:
            rank_zero_warn(
                f"DataEchoing with accumulate_grad_batches={trainer.accumulate_grad_batches}: the echoes of a batch "
                "are accumulated with it before one optimizer step; set accumulate_grad_batches=1 to step on every echo."
            )
        val_source = trainer.fit_loop.epoch_loop.val_loop._data_source.instance
        if isinstance(val_source, EchoLoader):
            raise ConfigError("val_dataloaders", "an EchoLoader", "echoing applies to the train loader only")
        self._undo.append(_lightning.wrap_train_source(trainer, lambda loader: self._echo_loader(trainer, loader)))
        self._undo.append(_lightning.wrap_batch_to_device(trainer, self._transfer))

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        while self._undo:
            self._undo.pop()()
        if self._loader is not None:
            self._loader.close()
        self._device_batch = None

    def _echo_loader(self, trainer: pl.Trainer, loader: Any) -> EchoLoader:
        if self._loader is not None:
            self._loader.close()
        if isinstance(loader, (list, tuple, dict)) or type(loader).__name__ == "CombinedLoader":
            raise ConfigError("train_dataloaders", type(loader).__name__, "DataEchoing echoes a single train loader")
        meter, closers, length = None, [], None
        reuse = self.kind == "batch"

        def make_echo(node: BaseNode) -> BaseNode:
            nonlocal echo_node
            echo_node = self._echo_node(trainer, node)
            return echo_node

        echo_node: Any = None
        if isinstance(loader, DataPipeline):
            root = loader.build(insert=make_echo, placement=self.placement)
            meter = loader.meter
            closers.append(loader.close)
            reuse = reuse and self.placement == "after_augmentation"
            inner_length = _length_or_none(loader)
        else:
            if self.placement == "before_augmentation":
                raise ConfigError(
                    "placement", self.placement, "needs a loader built by lightning_echo.data (it knows where augmentation is)"
                )
            if isinstance(loader, DataLoader):
                loader = _lightning.prepare_train_dataloader(trainer, loader)
            inner_length = _length_or_none(loader)
            node: BaseNode = IterableNode(loader)
            if self.factor == AUTO:
                node = BackgroundQueue(node)
                closers.append(node.close)
            root = make_echo(node)
        if self.kind == "batch" and is_integer_factor(self.factor) and inner_length is not None:
            length = inner_length * int(self.factor)
        self._loader = EchoLoader(root, echo_node, length, meter, reuse, closers)
        return self._loader

    def _echo_node(self, trainer: pl.Trainer, source: BaseNode) -> BaseNode:
        if self.kind == "example":
            return ExampleEcho(source, float(self.factor), self.shuffle_buffer, None, self.seed, budget=self._budget)
        agree = None
        if self.factor == AUTO and trainer.world_size > 1:
            # Every step all-reduces, so a rank that takes a fresh batch before the others have
            # one only waits for them: take fresh batches when all ranks have one ready.
            strategy = trainer.strategy
            agree = lambda ready: strategy.reduce_boolean_decision(ready, all=True)  # noqa: E731
        return BatchEcho(source, self.factor, self.max_factor, self.seed, agree, budget=self._budget)

    def _transfer(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def batch_to_device(batch: Any, device: Any = None, dataloader_idx: int = 0) -> Any:
            loader = self._loader
            if loader is None or not loader.served or not _lightning.is_training(self._trainer):
                return original(batch, device=device, dataloader_idx=dataloader_idx)
            info = loader.served.popleft()
            self._current = info
            self._report = self._step_report(info, loader)
            if info.same_as_previous and self._device_batch is not None:
                return self._device_batch
            self._device_batch = original(batch, device=device, dataloader_idx=dataloader_idx)
            self.device_copies += 1
            return self._device_batch

        return batch_to_device

    # -- accounting ------------------------------------------------------------------------------
    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        # Echoed optimizers (lightning_echo.echoed_optim) need to know where each echo group starts.
        if self.kind == "batch" and self._current is not None and self._current.repeat == 0:
            for optimizer in trainer.optimizers:
                start = getattr(optimizer, "start_fresh_batch", None)
                if start is not None:
                    start()

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._loader is not None and self._loader.echo.budget_exhausted:
            trainer.should_stop = True

    def _step_report(self, info: EchoInfo, loader: EchoLoader) -> StepReport:
        if self.kind == "batch":
            fresh_batches = int(info.repeat == 0)
        else:  # example echoing mixes fresh batches: count them as the stage fetches them
            fresh_batches = max(0, loader.echo.budget.batches - self._ledger.fresh_batches)
        return StepReport(samples=info.samples, fresh_samples=info.fresh_samples, fresh_batches=fresh_batches)


def _length_or_none(loader: Any) -> Optional[int]:
    try:
        return len(loader)
    except TypeError:
        return None
