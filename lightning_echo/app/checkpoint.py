"""``<run dir>/checkpoints/last.ckpt``: the state ``lightning-echo resume`` continues a run from."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig
from typing_extensions import override

from lightning_echo.errors import ConfigError
from lightning_echo.lightning_namespace import import_lightning, pl
from lightning_echo.validation import boolean, positive_float, positive_int

TrainerFn = import_lightning("trainer.states").TrainerFn
SIGTERMException = import_lightning("utilities.exceptions").SIGTERMException

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"


def last_checkpoint_path(run_dir: Path) -> Path:
    """Where a run keeps its latest checkpoint."""
    return Path(run_dir) / CHECKPOINT_DIR / LAST_CHECKPOINT


class LastCheckpoint(pl.Callback):
    """Keep ``path`` holding the latest state of training: rewritten after every ``every_n_steps``
    optimizer steps and after every ``every_n_minutes`` of training (whichever is set; both: whichever
    comes first), when training ends, and when SIGTERM stops it.

    On SIGTERM Lightning finishes the current step and raises ``SIGTERMException``; the state is
    saved then, before the process exits, so a resumed run continues exactly where this one
    stopped. Other exceptions (Ctrl-C among them) can land in the middle of a step: nothing is saved
    then, and the last periodic checkpoint is what a resumed run starts from. Each save replaces
    ``path`` atomically (a kill during a save leaves the previous checkpoint).

    Example::

        import tempfile
        from pytorch_lightning.demos.boring_classes import BoringModel

        path = Path(tempfile.mkdtemp()) / "last.ckpt"
        trainer = pl.Trainer(max_steps=6, callbacks=[LastCheckpoint(path, every_n_steps=4)], logger=False,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(BoringModel())  # saved at step 4 and when training ends; interrupted, it goes on with:
        trainer = pl.Trainer(max_steps=8, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False)
        trainer.fit(BoringModel(), ckpt_path=path)
        assert trainer.global_step == 8
    """

    def __init__(self, path: Path, every_n_steps: Optional[int] = None, every_n_minutes: Optional[float] = None) -> None:
        self.path = Path(path)
        self.every_n_steps = positive_int("every_n_steps", every_n_steps) if every_n_steps is not None else None
        self.every_n_minutes = positive_float("every_n_minutes", every_n_minutes) if every_n_minutes is not None else None
        self.saved_step: Optional[int] = None
        self._last_save_time: Optional[float] = None

    def _due(self, trainer: pl.Trainer) -> bool:
        step = trainer.global_step
        if self.every_n_steps is not None and step % self.every_n_steps == 0:
            return True
        if self.every_n_minutes is None or self._last_save_time is None:
            return False
        due = time.monotonic() - self._last_save_time >= 60.0 * self.every_n_minutes
        return bool(trainer.strategy.broadcast(due))  # every rank decides as rank 0 does

    def save(self, trainer: pl.Trainer) -> None:
        """Save the trainer's state into ``path`` (all ranks call it; rank 0 writes)."""
        if trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking or self.saved_step == trainer.global_step:
            return
        partial = self.path.with_name(self.path.name + ".partial")
        trainer.save_checkpoint(partial, weights_only=False)
        if trainer.is_global_zero:
            os.replace(partial, self.path)
        self.saved_step = trainer.global_step
        self._last_save_time = time.monotonic()

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_save_time = time.monotonic()
        self.saved_step = trainer.global_step  # a resumed run has this state already

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._due(trainer):
            self.save(trainer)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.save(trainer)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):
            self.save(trainer)


def build_last_checkpoint(cfg: DictConfig, run_dir: Optional[Path]) -> Optional[LastCheckpoint]:
    """The ``checkpoint`` settings as a :class:`LastCheckpoint` writing into ``run_dir`` (None when
    ``checkpoint.enabled`` is false). With ``run_dir=None`` the settings are only checked."""
    node = cfg.get("checkpoint") or {}
    enabled = boolean("checkpoint.enabled", node.get("enabled", True))
    try:
        callback = LastCheckpoint(last_checkpoint_path(run_dir or Path(".")), node.get("every_n_steps"), node.get("every_n_minutes"))
    except ConfigError as error:
        raise error.with_prefix("checkpoint.") from None
    if callback.every_n_steps is None and callback.every_n_minutes is None and enabled:
        raise ConfigError("checkpoint.every_n_minutes", None,
                          "set checkpoint.every_n_minutes or checkpoint.every_n_steps (or checkpoint.enabled=false)")
    return callback if enabled and run_dir is not None else None
