"""The few places where lightning_echo reaches into Lightning internals (checked against Lightning 2.2-2.6).

Lightning 2.x has no public hook to wrap the train loader or to skip a host-to-device copy, so:
- the fit loop's train data source is wrapped, so the echo stage is installed whenever Lightning
  (re)loads the train loader, and a plain ``DataLoader`` still gets Lightning's own preparation
  (``DistributedSampler`` under DDP, worker checks) before it is wrapped;
- ``strategy.batch_to_device`` is wrapped on the instance while fitting, so an echoed batch reuses
  the device copy of its fresh batch;
- ``LightningModule._on_before_batch_transfer`` (which runs the user's ``on_before_batch_transfer``)
  is wrapped on the instance while fitting, so an echo that reuses that device copy does not run
  the hook again on a batch it has already run on.
The wrapping functions return an undo callable.
"""

from __future__ import annotations

from typing import Any, Callable

import pytorch_lightning as pl
from pytorch_lightning.trainer.connectors.data_connector import _process_dataloader, _resolve_overfit_batches
from pytorch_lightning.trainer.states import RunningStage, TrainerFn
from pytorch_lightning.utilities.combined_loader import CombinedLoader
from pytorch_lightning.utilities.signature_utils import is_param_in_hook_signature

Undo = Callable[[], None]


class _WrappedSource:
    """Stands in for Lightning's ``_DataLoaderSource``, wrapping what it returns."""

    def __init__(self, original: Any, wrap: Callable[[Any], Any]) -> None:
        self.original = original
        self.wrap = wrap

    def dataloader(self) -> Any:
        return self.wrap(self.original.dataloader())

    def is_defined(self) -> bool:
        return self.original.is_defined()

    def is_module(self) -> bool:
        return self.original.is_module()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.original, name)


def wrap_train_source(trainer: "pl.Trainer", wrap: Callable[[Any], Any]) -> Undo:
    """Make every train loader Lightning requests pass through ``wrap``."""
    fit_loop = trainer.fit_loop
    original = fit_loop._data_source
    fit_loop._data_source = _WrappedSource(original, wrap)
    fit_loop._combined_loader = None  # force setup_data to request (and so wrap) the loader

    def undo() -> None:
        fit_loop._data_source = original

    return undo


def validation_loader(trainer: "pl.Trainer") -> Any:
    """The validation loader (or DataModule / LightningModule providing it) the fit loop was given."""
    return trainer.fit_loop.epoch_loop.val_loop._data_source.instance


def prepare_train_dataloader(trainer: "pl.Trainer", dataloader: Any) -> Any:
    """What Lightning does to a train ``DataLoader`` it is given (samplers, strategy hooks, and
    no shuffling under ``overfit_batches``)."""
    if trainer.overfit_batches > 0:
        combined = CombinedLoader(dataloader)
        _resolve_overfit_batches(combined, mode=RunningStage.TRAINING)
        dataloader = combined.flattened[0]
    return _process_dataloader(trainer, TrainerFn.FITTING, RunningStage.TRAINING, dataloader)


def wrap_batch_to_device(trainer: "pl.Trainer", wrapper: Callable[[Callable[..., Any]], Callable[..., Any]]) -> Undo:
    """Replace ``trainer.strategy.batch_to_device`` by ``wrapper(original)`` on the instance."""
    strategy = trainer.strategy
    original = strategy.batch_to_device
    strategy.batch_to_device = wrapper(original)  # type: ignore[method-assign]

    def undo() -> None:
        if "batch_to_device" in vars(strategy):
            del strategy.batch_to_device  # back to the class's method

    return undo


def wrap_before_batch_transfer(
    pl_module: "pl.LightningModule", wrapper: Callable[[Callable[..., Any]], Callable[..., Any]]
) -> Undo:
    """Replace ``pl_module._on_before_batch_transfer`` (Lightning's caller of the user's
    ``on_before_batch_transfer``, on the module or the DataModule) by ``wrapper(original)``."""
    original = pl_module._on_before_batch_transfer
    pl_module._on_before_batch_transfer = wrapper(original)  # type: ignore[method-assign]

    def undo() -> None:
        if "_on_before_batch_transfer" in vars(pl_module):
            del pl_module._on_before_batch_transfer  # back to the class's method

    return undo


def steps_on_dataloader_iter(pl_module: "pl.LightningModule") -> bool:
    """True when ``training_step`` takes ``dataloader_iter`` (it fetches its batches itself;
    Lightning then runs no batch-transfer hook)."""
    return is_param_in_hook_signature(pl_module.training_step, "dataloader_iter", explicit=True)


def is_training(trainer: "pl.Trainer") -> bool:
    """True inside the fit loop's training part (not validation or sanity checking)."""
    return trainer.state.stage == RunningStage.TRAINING


def requested_devices(trainer: "pl.Trainer") -> int:
    """How many devices the Trainer was asked for (``devices=``), even where a single-device strategy
    silently uses one; 1 for ``"auto"`` or anything it cannot count."""
    flag = getattr(trainer._accelerator_connector, "_devices_flag", 1)
    if isinstance(flag, int):
        return max(flag, 1)
    if isinstance(flag, (list, tuple)):
        return max(len(flag), 1)
    if isinstance(flag, str) and flag.strip().lstrip("-").isdigit():
        return max(int(flag), 1)
    return 1
