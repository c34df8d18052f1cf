"""What the library's components offer each other beyond Lightning's own interfaces, declared as
``typing.Protocol``s instead of probed with ``getattr`` (the run's progress source, the other
one, is :class:`lightning_echo.core.progress.ProgressSource`)."""

from __future__ import annotations

from typing import Any, Optional, Protocol, runtime_checkable


@runtime_checkable
class ChecksTrainer(Protocol):
    """A strategy that refuses Trainer settings it cannot run; the command line asks it before
    any run starts (``setup`` asks again)."""

    def check_trainer(self, trainer: Any) -> None:
        """Raise ``ConfigError`` (one line) for a setting this component cannot run with."""


@runtime_checkable
class AssignsRankRoles(Protocol):
    """A multi-process strategy whose ranks have different jobs (a parameter server and learners)."""

    @property
    def deciding_ranks(self) -> tuple[int, ...]:
        """The ranks whose outcome is the run's: another rank that ends is reported, not fatal by itself."""

    def saves_checkpoints(self, global_rank: int) -> bool:
        """Whether the process of ``global_rank`` writes the run's checkpoints."""

    @property
    def deciders_outlive_s(self) -> Optional[float]:
        """How long the deciding ranks may go on once every other rank has failed (None: no limit)."""


@runtime_checkable
class ReportsTrainLoss(Protocol):
    """A strategy whose process runs no ``training_step`` of its own (a parameter server): the
    training loss it knows instead of the module's logged one."""

    @property
    def train_loss(self) -> Optional[float]:
        """The mean training loss of the last update's gradients (None before the first)."""


@runtime_checkable
class StartsFreshBatches(Protocol):
    """An optimizer that needs to know where each fresh batch starts (Agarwal et al.'s echoed optimizers)."""

    def start_fresh_batch(self) -> None:
        """The next step is the first on a new fresh batch."""


@runtime_checkable
class KeepsIterates(Protocol):
    """An optimizer whose parameters hold a look-ahead point, not its iterate (echoed Nesterov)."""

    def swap_parameters_and_iterates(self) -> None:
        """Exchange the parameters and the iterates in place (twice restores them)."""
