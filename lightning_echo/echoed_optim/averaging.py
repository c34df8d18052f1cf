"""``EchoIterateAveraging``: Algorithm 1's output, the average of the iterates at group starts."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Optional

import torch
from typing_extensions import override

from lightning_echo.combinations import find_progress_source
from lightning_echo.core.progress import ProgressSource
from lightning_echo.lightning_namespace import pl, require_same_lightning, warn_if_other_lightning_imported
from lightning_echo.protocols import KeepsIterates


@contextmanager
def parameters_at_iterates(optimizers: Iterable[Any]) -> Iterator[None]:
    """Within the block, the model's parameters hold the iterates ``w`` of every optimizer that
    keeps them apart from the parameters (``EchoedNesterov``); restored afterwards."""
    swapped = [o for o in optimizers if isinstance(o, KeepsIterates)]
    for optimizer in swapped:
        optimizer.swap_parameters_and_iterates()
    try:
        yield
    finally:
        for optimizer in swapped:
            optimizer.swap_parameters_and_iterates()


class EchoIterateAveraging(pl.Callback):
    """Keep the running average of the parameters at the start of each fresh batch.

    Agarwal et al.'s guarantees for echoed SGD and prox hold for the average iterate
    ``(1/T) sum_t w_t``. This callback maintains it without disturbing training: the average is
    swapped into the model for validation (and swapped back afterwards) when
    ``use_for_validation`` is set, and is saved in checkpoints. The run's progress source
    (``DataEchoing``) tells where fresh batches start; without one, every step starts a group.

    Example::

        trainer = Trainer(callbacks=[DataEchoing(factor=4), EchoIterateAveraging()])
    """

    def __init__(self, use_for_validation: bool = True) -> None:
        warn_if_other_lightning_imported(self)
        self.use_for_validation = use_for_validation
        self.average: Optional[list[torch.Tensor]] = None
        self.count = 0
        self._backup: Optional[list[torch.Tensor]] = None
        self._source: Optional[ProgressSource] = None

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        require_same_lightning(trainer, self)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._source = find_progress_source(trainer)

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        report = self._source.step_report() if self._source is not None else None
        if report is not None and report.is_echo:
            return
        params = [p.detach() for p in pl_module.parameters()]
        if self.average is None:
            self.average = [p.clone() for p in params]
            self.count = 1
            return
        self.count += 1
        for mean, value in zip(self.average, params):
            mean.add_(value - mean, alpha=1.0 / self.count)

    def _swap(self, pl_module: pl.LightningModule) -> None:
        assert self.average is not None
        with torch.no_grad():
            for param, mean in zip(pl_module.parameters(), self.average):
                saved = param.detach().clone()
                param.copy_(mean)
                mean.copy_(saved)

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.use_for_validation and self.average is not None and not trainer.sanity_checking:
            self._swap(pl_module)  # the model now holds the average; `average` holds the live weights
            self._backup = self.average

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._backup is not None:
            self._swap(pl_module)
            self._backup = None

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # Interrupted during validation (a SIGTERM checkpoint comes next): put the live weights back.
        self.on_validation_end(trainer, pl_module)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"average": self.average, "count": self.count}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.average = state_dict["average"]
        self.count = int(state_dict["count"])


class EvaluateAtIterates(pl.Callback):
    """Validate at Algorithm 2's output ``w`` rather than at Nesterov's look-ahead point ``w + d``.

    ``EchoedNesterov`` keeps the model's parameters at ``w + d`` (where gradients are taken);
    this callback swaps the iterates in for every validation and back afterwards, for each
    optimizer that has ``swap_parameters_and_iterates``.

    Example::

        trainer = Trainer(callbacks=[DataEchoing(factor=4), EvaluateAtIterates()])
    """

    def __init__(self) -> None:
        warn_if_other_lightning_imported(self)
        self._at_iterates: Optional[Any] = None

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        require_same_lightning(trainer, self)

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._at_iterates = parameters_at_iterates(trainer.optimizers)
        self._at_iterates.__enter__()

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._at_iterates is not None:
            self._at_iterates.__exit__(None, None, None)
            self._at_iterates = None

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # Interrupted during validation (a SIGTERM checkpoint comes next): back to the look-ahead point.
        self.on_validation_end(trainer, pl_module)
