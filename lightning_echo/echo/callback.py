"""``DataEchoing``: echo training batches in any Lightning project, with one callback."""

from __future__ import annotations

from typing import Any, Callable, Optional

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_warn
from torch.utils.data import DataLoader
from torchdata.nodes import BaseNode

from lightning_echo.core.echo_factor import AUTO, EchoFactor, check_echo_factor, is_integer_factor
from lightning_echo.data.background import BackgroundQueue
from lightning_echo.data.nodes import IterableNode
from lightning_echo.data.pipeline import PLACEMENTS, DataPipeline
from lightning_echo.echo import _lightning
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
    ``max_fresh_samples`` stop training after that much fresh data.

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

    Logged (through the Trainer's loggers, and shown in the progress bar): ``echo/fresh_batches``,
    ``echo/fresh_samples``, ``echo/echoed_steps``, ``echo/effective_factor``, ``echo/data_wait_s``.

    Example::

        trainer = Trainer(max_steps=2000, callbacks=[DataEchoing(factor=4)])
        trainer.fit(model, datamodule=dm)
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
        self.fresh_batches = 0
        self.fresh_samples = 0
        self.echoed_steps = 0
        self.steps = 0
        self.device_copies = 0
        self._wait_before = 0.0
        self._loader: Optional[EchoLoader] = None
        self._current: Optional[EchoInfo] = None
        self._device_batch: Any = None
        self._undo: list[Callable[[], None]] = []
        self._trainer: Optional[pl.Trainer] = None

    # -- what other callbacks may read --------------------------------------------------------
    @property
    def current_fresh_samples(self) -> Optional[int]:
        """Fresh examples in the batch being trained on (0 for an echo)."""
        return self._current.fresh_samples if self._current is not None else None

    @property
    def effective_factor(self) -> float:
        """Optimizer steps per fresh batch so far."""
        return self.steps / self.fresh_batches if self.fresh_batches else 0.0

    @property
    def data_wait_s(self) -> float:
        """Seconds the training loop waited for fresh batches."""
        return self._wait_before + (self._loader.wait_s if self._loader is not None else 0.0)

    # -- installation ----------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._trainer = trainer
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

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        while self._undo:
            self._undo.pop()()
        if self._loader is not None:
            self._loader.close()
        self._device_batch = None

    def _echo_loader(self, trainer: pl.Trainer, loader: Any) -> EchoLoader:
        if self._loader is not None:
            self._wait_before += self._loader.wait_s
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
            return ExampleEcho(
                source, float(self.factor), self.shuffle_buffer, None, self.seed, self.max_fresh_batches, self.max_fresh_samples
            )
        agree = None
        if self.factor == AUTO and trainer.world_size > 1:
            # Every step all-reduces, so a rank that takes a fresh batch before the others have
            # one only waits for them: take fresh batches when all ranks have one ready.
            strategy = trainer.strategy
            agree = lambda ready: strategy.reduce_boolean_decision(ready, all=True)  # noqa: E731
        return BatchEcho(
            source, self.factor, self.max_factor, self.seed, agree, self.max_fresh_batches, self.max_fresh_samples
        )

    def _transfer(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def batch_to_device(batch: Any, device: Any = None, dataloader_idx: int = 0) -> Any:
            loader = self._loader
            if loader is None or not loader.served or not _lightning.is_training(self._trainer):
                return original(batch, device=device, dataloader_idx=dataloader_idx)
            info = loader.served.popleft()
            self._current = info
            if info.same_as_previous and self._device_batch is not None:
                return self._device_batch
            self._device_batch = original(batch, device=device, dataloader_idx=dataloader_idx)
            self.device_copies += 1
            return self._device_batch

        return batch_to_device

    # -- accounting ------------------------------------------------------------------------------
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        # Echoed optimizers (lightning_echo.echo.optim) need to know where each echo group starts.
        if self.kind == "batch" and self._current is not None and self._current.repeat == 0:
            for optimizer in trainer.optimizers:
                start = getattr(optimizer, "start_fresh_batch", None)
                if start is not None:
                    start()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        info = self._current
        if info is None:
            return
        self.steps += 1
        self.fresh_samples += info.fresh_samples
        self.echoed_steps += int(info.is_echo)
        if self.kind == "batch":
            self.fresh_batches += int(info.repeat == 0)
        elif self._loader is not None:
            self.fresh_batches = self._loader.echo.budget.batches
        if self.steps % trainer.log_every_n_steps == 0:
            pl_module.log("fresh", float(self.fresh_batches), prog_bar=True, logger=False, on_step=True, on_epoch=False)
            pl_module.log("echoed", float(self.echoed_steps), prog_bar=True, logger=False, on_step=True, on_epoch=False)
            metrics = {
                "echo/fresh_batches": self.fresh_batches,
                "echo/fresh_samples": self.fresh_samples,
                "echo/echoed_steps": self.echoed_steps,
                "echo/effective_factor": self.effective_factor,
                "echo/data_wait_s": self.data_wait_s,
            }
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._loader is not None and self._loader.echo.budget_exhausted:
            trainer.should_stop = True

    # -- checkpointing ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "fresh_batches": self.fresh_batches,
            "fresh_samples": self.fresh_samples,
            "echoed_steps": self.echoed_steps,
            "steps": self.steps,
            "data_wait_s": self.data_wait_s,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.fresh_batches = int(state_dict["fresh_batches"])
        self.fresh_samples = int(state_dict["fresh_samples"])
        self.echoed_steps = int(state_dict["echoed_steps"])
        self.steps = int(state_dict["steps"])
        self._wait_before = float(state_dict["data_wait_s"])


def _length_or_none(loader: Any) -> Optional[int]:
    try:
        return len(loader)
    except TypeError:
        return None
