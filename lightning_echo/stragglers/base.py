"""``StragglerStrategy``: what both straggler strategies do, written once.

Each backend is a Lightning strategy (simulated learners over ``SingleDeviceStrategy``, the
parameter server over ``DDPStrategy``) with this mixin first in its bases. The mixin holds the
:class:`~lightning_echo.stragglers.settings.StragglerSettings` and, once ``P`` is known, the
resolved variant and step-size rule; it refuses the Trainer settings neither backend can run,
wraps the user's one optimizer in a :class:`~lightning_echo.stragglers.optim.StalenessAwareOptimizer`,
and is the run's :class:`~lightning_echo.core.progress.ProgressSource`: one
:class:`~lightning_echo.core.progress.StepReport` and one set of ``stale/*`` metrics per server
update. A backend adds only its own knobs and how it obtains an update's gradients.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, ClassVar, Dict, Optional, Sequence, Union

from lightning_echo.callbacks.progress import training_progress
from lightning_echo.combinations import (
    refuse_gradient_accumulation,
    refuse_manual_optimization,
    refuse_second_progress_source,
    refuse_several_train_loaders,
)
from lightning_echo.core.adaptive_k import AdaptiveK
from lightning_echo.core.batches import find_batch_size
from lightning_echo.core.momentum import implicit_momentum
from lightning_echo.core.progress import Clock, ProgressLedger, StepReport
from lightning_echo.core.schedule import STALE_VARIANTS, VariantSpec
from lightning_echo.core.step_sizes import StepSizeRule
from lightning_echo.errors import ConfigError
from lightning_echo.lightning_namespace import pl, warn_if_other_lightning_imported
from lightning_echo.metric_names import Stale
from lightning_echo.stragglers.optim import StalenessAwareOptimizer
from lightning_echo.stragglers.settings import StragglerSettings


class StragglerStrategy:
    """Mixin of the straggler strategies (put it first: ``class X(StragglerStrategy, SomeLightningStrategy)``).

    Subclasses set ``clock`` and ``owner_name`` (how refusals name them), call
    :meth:`_init_stragglers` in their constructor and :meth:`_resolve` once ``P`` is known, and
    call :meth:`_record_update` after every server update.
    """

    clock: ClassVar[Clock]
    owner_name: ClassVar[str]
    enforces_budget = False

    settings: StragglerSettings
    spec: Optional[VariantSpec]
    rule: Optional[StepSizeRule]
    momentum_offset: float

    def _init_stragglers(self, settings: Union[StragglerSettings, str, None], fields: Dict[str, Any],
                         adaptive_k: Optional[AdaptiveK] = None) -> None:
        warn_if_other_lightning_imported(self)
        self.settings = StragglerSettings.build(settings, **fields)
        if adaptive_k is not None and (not isinstance(adaptive_k, AdaptiveK) or not self.settings.adaptive):
            raise ConfigError("adaptive_k", type(adaptive_k).__name__,
                              "must be an AdaptiveK, given with k='auto' (it chooses K while training)")
        self._adaptive_given = adaptive_k
        self.spec = None
        self.rule = None
        self.momentum_offset = 0.0
        self._undo: list[Callable[[], None]] = []
        self._metrics: Dict[str, float] = {}
        self._step_report: Optional[StepReport] = None

    def _resolve(self, learners: int) -> None:
        """Resolve the settings against ``learners`` (P): the variant with its K, the rule's M."""
        resolved = self.settings.resolve(learners)
        self.spec, self.rule, self.momentum_offset = resolved.spec, resolved.rule, resolved.momentum_offset
        given = self._adaptive_given
        if given is not None and (given.variant, given.learners) != (self.spec.name, learners):
            raise ConfigError("adaptive_k", f"AdaptiveK({given.variant!r}, learners={given.learners})",
                              f"must be built for this run's variant and learners: {self.spec.name}, {learners}")

    def _new_adaptive_k(self, learners: int) -> Optional[AdaptiveK]:
        """The rule that chooses K (``k="auto"``): the one given to the strategy, else the defaults'."""
        return self._adaptive_given if self._adaptive_given is not None else self.settings.adaptive_k(learners)

    # -- what neither backend can run ----------------------------------------------------------
    def check_trainer(self, trainer: Any) -> None:
        """Refuse, in one line, Trainer settings this strategy cannot run; the command line calls
        it before any run starts, ``setup`` again before training."""
        refuse_gradient_accumulation(trainer, self.owner_name)
        refuse_second_progress_source(trainer, self, self.owner_name)
        refuse_manual_optimization(trainer.lightning_module, self.owner_name)
        refuse_epoch_only_limits(trainer, self.settings)

    def _check_train_loader(self, loader: Any) -> None:
        refuse_several_train_loaders(loader, self.owner_name)

    # -- the server's optimizer ------------------------------------------------------------------
    def setup_optimizers(self, trainer: Any) -> None:
        super().setup_optimizers(trainer)  # type: ignore[misc]
        if trainer.training and len(self.optimizers) != 1:
            raise ConfigError("configure_optimizers", f"{len(self.optimizers)} optimizers",
                              f"{self.owner_name} needs exactly one optimizer (the parameter server's)")
        assert self.rule is not None, "_resolve() must run before the optimizers are set up"
        self.optimizers = [o if isinstance(o, StalenessAwareOptimizer)
                           else StalenessAwareOptimizer(o, self.rule, momentum_offset=self.momentum_offset)
                           for o in self.optimizers]
        if trainer.training and trainer.global_rank == 0 and not self.momentum_offset:  # learners never step theirs
            warn_if_momentum_meets_staleness(self.optimizers[0], self.spec)

    @property
    def server_optimizer(self) -> StalenessAwareOptimizer:
        """The user's optimizer, wrapped: it applies every server update."""
        optimizer = self.optimizers[0]
        assert isinstance(optimizer, StalenessAwareOptimizer)
        return optimizer

    # -- the progress source (lightning_echo.core.progress.ProgressSource) -----------------------
    def step_report(self) -> Optional[StepReport]:
        """What the server update being trained consumed (None outside an update)."""
        return self._step_report

    def progress_metrics(self, ledger: ProgressLedger) -> Dict[str, float]:
        """The last update's metrics (``stale/*`` and the backend's own)."""
        return dict(self._metrics)

    def _record_update(self, staleness: Sequence[int], discarded: int, cancelled: int,
                       extra: Dict[str, float]) -> None:
        """The metrics of the update just applied: ``stale/*`` from its gradients' staleness, the
        optimizer's last step and the run's counters, plus the backend's ``extra``."""
        optimizer = self.server_optimizer
        self._metrics = {
            Stale.STALENESS_MEAN: sum(staleness) / len(staleness) if staleness else 0.0,
            Stale.STALENESS_MAX: float(max(staleness)) if staleness else 0.0,
            Stale.STEP_FACTOR: float(optimizer.last_factor),
            Stale.LR: float(optimizer.last_lr),
            Stale.DISCARDED: float(discarded),
            Stale.CANCELLED: float(cancelled),
            Stale.K: float(len(staleness)),
            **extra,
        }

    def _undo_all(self) -> None:
        while self._undo:
            self._undo.pop()()


def refuse_epoch_only_limits(trainer: Any, settings: StragglerSettings) -> None:
    """With ``stale.k=auto`` an epoch's number of server updates is not known in advance (K
    changes while training; ``estimated_stepping_batches`` is then ``max_steps``, Lightning's rule
    for a loader without length): refuse a run that only epochs would end, in one line."""
    if not settings.adaptive or trainer.max_steps >= 0:
        return
    progress = training_progress(trainer)
    budget = progress is not None and progress.ledger.budget.is_limited
    if budget or any(isinstance(c, pl.callbacks.Timer) for c in trainer.callbacks):
        return
    raise ConfigError("trainer.max_steps", trainer.max_steps,
                      "with stale.k=auto K changes while training, so the server updates of an epoch are not known "
                      "in advance: set max_steps (server updates), max_time or a fresh-data budget")


def warn_if_momentum_meets_staleness(optimizer: Any, spec: Optional[VariantSpec]) -> None:
    """Warn when a variant whose gradients may be stale steps an optimizer with momentum: the two
    compound (asynchrony itself acts as momentum, about ``1 - 1/P``; Mitliagkas et al. 2016), and
    runs that converge without momentum can diverge with 0.9."""
    if spec is None or spec.name not in STALE_VARIANTS:
        return
    momentum, kind = max((_momentum_of(group) for group in optimizer.param_groups), default=(0.0, "momentum"))
    implicit = implicit_momentum(spec.learners, spec.k)
    if momentum > 0 and implicit > 0:
        remedy = ("set momentum_correction='implicit' (stale.momentum_correction=implicit) to lower it by that much, "
                  if kind == "momentum" else "lower it ")
        warnings.warn(
            f"{spec.name} applies stale gradients, and the optimizer has {kind} {momentum:g}: asynchrony adds an "
            f"implicit momentum of about 1 - K/P = {implicit:.2f}, and the two together often diverge; {remedy}"
            "or use a synchronous variant (see the stragglers method card)", stacklevel=2)


def _momentum_of(group: Dict[str, Any]) -> tuple[float, str]:
    """A param group's momentum and what it is called: SGD/RMSprop ``momentum``, or Adam-style ``betas[0]``."""
    if "momentum" in group:
        return float(group["momentum"] or 0.0), "momentum"
    betas = group.get("betas")
    return (float(betas[0]), "betas[0]") if isinstance(betas, (tuple, list)) and betas else (0.0, "momentum")


def examples_in(batch: Any) -> int:
    """The examples in one learner's mini-batch: the first dimension of its first tensor; a batch
    whose size cannot be told counts as one example, with a warning (as in ``DataEchoing``)."""
    size = find_batch_size(batch)
    if size is None:
        warnings.warn(f"cannot tell the number of examples in a batch of type {type(batch).__name__}: each "
                      "mini-batch counts as one sample in progress/fresh_samples", stacklevel=2)
        return 1
    return size
