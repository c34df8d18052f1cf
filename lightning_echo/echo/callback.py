"""``DataEchoing``: echo training batches in any Lightning project, with one callback."""

from __future__ import annotations

import math
from typing import Any, Callable, Literal, Optional, Sequence, Union, get_args

from torch.utils.data import DataLoader
from torchdata.nodes import BaseNode
from typing_extensions import override

from lightning_echo import lightning_internals as _lightning
from lightning_echo.callbacks.progress import TrainingProgress, training_progress
from lightning_echo.combinations import EchoRole, echo_role, refuse_several_train_loaders
from lightning_echo.core.batches import rebuild, tensor_versions
from lightning_echo.core.echo_factor import (
    AUTO,
    EchoFactor,
    check_echo_factor,
    steps_per_pass,
)
from lightning_echo.core.progress import (
    WALL_CLOCK,
    FreshDataBudget,
    ProgressLedger,
    StepReport,
)
from lightning_echo.data.background import BackgroundQueue
from lightning_echo.data.nodes import IterableNode
from lightning_echo.data.pipeline import PLACEMENTS, DataPipeline, Placement
from lightning_echo.echo.loader import EchoLoader
from lightning_echo.echo.node import BatchEcho, BatchSizeFn, EchoInfo, ExampleEcho, PassLimit, check_batch_size_fn
from lightning_echo.echo.rank_zero_return import RankZeroReturn
from lightning_echo.errors import ConfigError
from lightning_echo.lightning_namespace import (
    import_lightning,
    pl,
    require_same_lightning,
    warn_if_other_lightning_imported,
)
from lightning_echo.metric_names import Echo
from lightning_echo.protocols import StartsFreshBatches
from lightning_echo.validation import non_negative_int, one_of, positive_int

rank_zero_warn = import_lightning("utilities").rank_zero_warn

EchoKind = Literal["batch", "example"]
KINDS: tuple[EchoKind, ...] = get_args(EchoKind)


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

    What each step sees (see the method card for the full list):

    - With ``kind="batch"`` (after augmentation), the batch-transfer hooks
      ``on_before_batch_transfer``, ``transfer_batch_to_device`` and ``on_after_batch_transfer``
      run once per fresh batch, as without echoing; every step, the fresh one and each echo,
      gets its own copy of the result's containers (dicts, lists, tuples, dataclasses, objects of
      your own batch class, shallowly) over the
      same device tensors, so ``batch.pop("labels")`` in ``training_step`` does not reach the
      echoes. In-place changes to the tensors themselves (``x.mul_(2)``) do: a warning says so.
      Where each served batch is new data (``kind="example"``, ``placement="before_augmentation"``),
      the three hooks run for every step.
    - ``training_step(self, dataloader_iter)`` is supported: each batch it takes is counted
      (fresh or echo) and it moves batches to the device itself, as without echoing.
    - ``trainer.train_dataloader`` reads the wrapped loader's attributes through
      (``dataset``, ``sampler``, ``batch_size``, ...), so Lightning calls the sampler's
      ``set_epoch`` every epoch, on every rank under DDP.

    How it meets the Trainer's options:

    - ``limit_train_batches`` / ``overfit_batches`` count fresh batches (echo groups are never cut
      short); while fitting, ``trainer.limit_train_batches`` reads 1.0.
    - With a number as ``factor`` (``kind="batch"``) an epoch of ``n`` fresh batches is exactly
      ``floor(factor) * n + round((factor - floor(factor)) * n)`` steps (the extra serves of a
      non-integer factor are spread over each epoch) and Lightning is given that length. With
      ``"auto"`` or ``kind="example"`` it is not known: an epoch-bounded run gets the bound
      (``max_factor`` or ``ceil(factor)`` steps per fresh batch) as ``max_steps``, for
      ``trainer.estimated_stepping_batches``, and a fractional ``val_check_interval`` is refused.
    - Lightning's tuners detach every callback while they search: they search on fresh batches.
    - A second ``fit`` on the same Trainer keeps counting, as ``global_step`` does; a new Trainer
      starts from zero. Under ``ddp_spawn`` the callback in the launching process reports rank 0's
      counters after ``fit``.
    - The echo stage's threads and the ``DataLoader``'s worker processes stop when ``fit`` returns
      or fails.
    - Under a straggler strategy each learner echoes its own mini-batches (``combinations.echo_role``):
      simulated learners echo inside their schedule, while their simulated loaders lag
      (``StragglerSettings.data_delay``); a parameter server's learner processes echo on their own
      loaders and the server counts the cluster's fresh data (its budget is the run's).

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
        batch_size_fn: returns the number of examples in a batch, as for Lightning's
            ``ThroughputMonitor`` (default: the first dimension of the batch's first tensor, or
            the length of its first list of strings). Where neither tells it, each batch counts
            as one sample (with a warning); example echoing and ``max_fresh_samples`` then need
            ``batch_size_fn``.

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
        kind: EchoKind = "batch",
        max_factor: int = 4,
        shuffle_buffer: int = 1024,
        placement: Placement = "after_augmentation",
        seed: int = 0,
        max_fresh_batches: Optional[int] = None,
        max_fresh_samples: Optional[int] = None,
        batch_size_fn: Optional[BatchSizeFn] = None,
    ) -> None:
        warn_if_other_lightning_imported(self)
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
        self.batch_size_fn = check_batch_size_fn(batch_size_fn)
        self.device_copies = 0
        self._budget = FreshDataBudget(self.max_fresh_samples, self.max_fresh_batches)
        self._progress: Optional[TrainingProgress] = None
        self._loader: Optional[EchoLoader] = None
        self._current: Optional[EchoInfo] = None
        self._report: Optional[StepReport] = None
        self._device_batch: Any = None
        self._device_versions: Optional[tuple[int, ...]] = None
        self._warned_in_place = False
        self._steps_on_iterator = False
        self._taken: list[EchoInfo] = []  # batches the current step took itself (dataloader_iter)
        self._undo: list[Callable[[], None]] = []
        self._undo_max_steps: Optional[Callable[[], None]] = None
        self._fresh_limit: Union[int, float] = 1.0  # Lightning's limit_train_batches, applied to fresh batches
        self._trainer: Optional[pl.Trainer] = None
        self._from_rank_zero = RankZeroReturn()  # counters of a ddp_spawn run, for the launching process
        self.role: EchoRole = "loader"

    # -- the progress source (lightning_echo.core.progress.ProgressSource) ----------------------------
    clock = WALL_CLOCK
    composes_with_stragglers = True  # the straggler strategies echo on their learners (combinations.echo_role)
    enforces_budget = True  # the echo stage stops fetching at the budget and finishes its last group

    def step_report(self) -> Optional[StepReport]:
        """What the step being trained on consumed (an echo brings no fresh sample)."""
        return self._report

    def progress_metrics(self, ledger: ProgressLedger) -> dict[str, float]:
        return {
            Echo.FRESH_BATCHES: ledger.fresh_batches,
            Echo.FRESH_SAMPLES: ledger.fresh_samples,
            Echo.ECHOED_STEPS: ledger.echoed_steps,
            Echo.EFFECTIVE_FACTOR: ledger.effective_factor,
            Echo.DATA_WAIT_S: ledger.data_wait_s,
        }

    def progress_bar(self, ledger: ProgressLedger) -> dict[str, float]:
        return {"fresh": ledger.fresh_batches, "echoed": ledger.echoed_steps}

    # -- counters, read from the run's TrainingProgress --------------------------------------------
    @property
    def _ledger(self) -> ProgressLedger:
        received = self._from_rank_zero.received()
        if received is not None:  # this process launched a ddp_spawn run: rank 0's counts
            ledger = ProgressLedger()
            ledger.load_state_dict(received)
            return ledger
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
        require_same_lightning(trainer, self)
        if stage != "fit":
            return
        self._trainer = trainer
        self._from_rank_zero.forget()
        self._progress = training_progress(trainer, add=True)
        assert self._progress is not None
        self._budget = self._progress.tighten_budget(self.max_fresh_samples, self.max_fresh_batches)
        self.role = echo_role(trainer)
        if self.role == "simulated":
            return  # no loader to echo on this process: the strategy echoes inside its schedule
        if isinstance(_lightning.validation_loader(trainer), EchoLoader):
            raise ConfigError("val_dataloaders", "an EchoLoader", "echoing applies to the train loader only")
        # On a parameter server too: its epochs have the length of the learners' echoed passes, and every rank refuses alike.
        self._check_validation_interval(trainer)
        if self.role == "server":
            return  # no loader to echo on this process: the server counts the cluster's fresh data
        if self.role == "learner":
            self._budget = FreshDataBudget()  # the parameter server counts the cluster's fresh data and stops it
        if trainer.accumulate_grad_batches > 1:
            rank_zero_warn(
                f"DataEchoing with accumulate_grad_batches={trainer.accumulate_grad_batches}: the echoes of a batch "
                "are accumulated with it before one optimizer step; set accumulate_grad_batches=1 to step on every echo."
            )
        self._steps_on_iterator = _lightning.steps_on_dataloader_iter(pl_module)
        self._fresh_limit, undo_limit = _lightning.take_train_batch_limit(trainer)
        self._undo.append(undo_limit)
        self._undo.append(_lightning.wrap_train_source(trainer, lambda loader: self._echo_loader(trainer, loader)))
        self._undo.append(_lightning.wrap_before_batch_transfer(pl_module, self._before_transfer))
        self._undo.append(_lightning.wrap_batch_to_device(trainer, self._transfer))

    def _check_validation_interval(self, trainer: pl.Trainer) -> None:
        """Refuse a fraction-of-an-epoch ``val_check_interval`` where an epoch's steps are not known."""
        interval = trainer.val_check_interval
        if not isinstance(interval, float) or interval == 1.0 or self.knows_epoch_length:
            return
        stage = "factor='auto'" if self.factor == AUTO else "kind='example'"
        raise ConfigError(
            "val_check_interval", interval,
            f"with DataEchoing({stage}) the number of optimizer steps in an epoch is not known in advance: "
            "validate every N steps (val_check_interval=N, an int; check_val_every_n_epoch=None to count across "
            "epochs), or echo with a number as factor and kind='batch'",
        )

    @property
    def knows_epoch_length(self) -> bool:
        """True when an epoch's number of optimizer steps follows from its number of fresh batches
        (batch echoing with a number as factor); it is then known wherever the loader has a length."""
        return self.kind == "batch" and self.factor != AUTO

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.role not in ("loader", "learner"):
            return
        if not isinstance(trainer.train_dataloader, EchoLoader):
            raise _lightning.LightningInternalsChanged(
                "DataEchoing could not install its echo stage on the train loader (the train loader is a "
                f"{type(trainer.train_dataloader).__name__}) with pytorch-lightning {pl.__version__} "
                f"(supported: {_lightning.SUPPORTED})"
            )

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._release()
        if trainer.global_rank == 0:
            self._from_rank_zero.send(self._ledger.state_dict())  # to the launching process of a ddp_spawn run
        else:
            self._from_rank_zero.close()

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # Lightning calls no teardown hook when fit fails, and resets the train loader (stopping its
        # threads and worker processes) only when the exception lands outside validation: release
        # everything here, so that nothing outlives fit and the Trainer is as it was.
        self._release()

    def _release(self) -> None:
        """Undo what ``setup`` changed on the Trainer and stop the echo loader's threads and workers."""
        while self._undo:
            self._undo.pop()()
        if self._undo_max_steps is not None:
            self._undo_max_steps()
            self._undo_max_steps = None
        if self._loader is not None:
            self._loader.close()
        self._device_batch, self._device_versions = None, None

    def _echo_loader(self, trainer: pl.Trainer, loader: Any) -> Any:
        if self._loader is not None:
            self._loader.close()
            self._loader = None
        if not any(callback is self for callback in trainer.callbacks):
            # Lightning's tuners (lr_find, scale_batch_size) detach every callback while they
            # search: they train on fresh batches, as without echoing.
            return loader
        refuse_several_train_loaders(loader, "DataEchoing")
        meter, closers = None, []
        reuse = self.kind == "batch"
        fresh_per_epoch: Optional[int] = None

        def make_echo(node: BaseNode) -> BaseNode:
            nonlocal echo_node
            if fresh_per_epoch is not None and fresh_per_epoch != inner_length:
                node = PassLimit(node, fresh_per_epoch)
            echo_node = self._echo_node(trainer, node, fresh_per_epoch)
            return echo_node

        echo_node: Any = None
        if isinstance(loader, DataPipeline):
            inner_length = _length_or_none(loader)
            fresh_per_epoch = fresh_batches_per_epoch(inner_length, self._fresh_limit)
            root = loader.build(insert=make_echo, placement=self.placement)
            meter = loader.meter
            closers.append(loader.close)
            reuse = reuse and self.placement == "after_augmentation"
        else:
            if self.placement == "before_augmentation":
                raise ConfigError(
                    "placement", self.placement, "needs a loader built by lightning_echo.data (it knows where augmentation is)"
                )
            if isinstance(loader, DataLoader):
                loader = _lightning.prepare_train_dataloader(trainer, loader)
            inner_length = _length_or_none(loader)
            fresh_per_epoch = fresh_batches_per_epoch(inner_length, self._fresh_limit)
            iterable = IterableNode(loader)
            node: BaseNode = iterable
            if self.factor == AUTO:
                node = BackgroundQueue(node)
                closers.append(node.close)
            closers.append(iterable.close)  # a DataLoader's worker processes stop with its iterator
            if isinstance(loader, DataLoader):
                closers.append(lambda: _lightning.stop_dataloader_workers(loader))  # persistent workers
            root = make_echo(node)
        length = self._epoch_steps(fresh_per_epoch)
        if length is None:
            self._bound_max_steps(trainer, fresh_per_epoch)
        self._loader = EchoLoader(root, echo_node, length, meter, reuse, closers, wrapped=loader)
        if self._steps_on_iterator:
            self._loader.on_serve = self._taken_by_step
        return self._loader

    def _epoch_steps(self, fresh_per_epoch: Optional[int]) -> Optional[int]:
        """Optimizer steps in an epoch of ``fresh_per_epoch`` fresh batches, where it is known."""
        if fresh_per_epoch is None or not self.knows_epoch_length:
            return None
        return steps_per_pass(float(self.factor), fresh_per_epoch)

    def _bound_max_steps(self, trainer: pl.Trainer, fresh_per_epoch: Optional[int]) -> None:
        """Without a known epoch length, give an epoch-bounded run a ``max_steps`` it cannot
        exceed (``max_factor`` or ``ceil(factor)`` serves per fresh batch, over the fresh batches
        of ``max_epochs`` epochs or the fresh-batch budget), so that
        ``trainer.estimated_stepping_batches`` is that bound instead of -1."""
        if self._undo_max_steps is not None:
            self._undo_max_steps()
            self._undo_max_steps = None
        if trainer.max_steps != -1 or trainer.max_epochs in (None, -1):
            return
        fresh_total = [fresh_per_epoch * trainer.max_epochs] if fresh_per_epoch is not None else []
        if self._budget.max_batches is not None:
            fresh_total.append(self._budget.max_batches)
        if not fresh_total:
            return  # a loader without a length and no budget: Lightning's own answer (-1) stands
        serves = self.max_factor if self.factor == AUTO else math.ceil(float(self.factor))
        self._undo_max_steps = _lightning.bound_max_steps(trainer, min(fresh_total) * serves)

    def _echo_node(self, trainer: pl.Trainer, source: BaseNode, fresh_per_epoch: Optional[int] = None) -> BaseNode:
        if self.kind == "example":
            return ExampleEcho(
                source, float(self.factor), self.shuffle_buffer, None, self.seed, budget=self._budget,
                batch_size_fn=self.batch_size_fn,
            )
        agree = None
        if self.factor == AUTO and trainer.world_size > 1:
            # Every step all-reduces, so a rank that takes a fresh batch before the others have
            # one only waits for them: take fresh batches when all ranks have one ready.
            strategy = trainer.strategy
            agree = lambda ready: strategy.reduce_boolean_decision(ready, all=True)  # noqa: E731
        return BatchEcho(
            source, self.factor, self.max_factor, self.seed, agree, budget=self._budget, batch_size_fn=self.batch_size_fn,
            pass_batches=fresh_per_epoch or None,
        )

    # -- batch transfer: the hooks run once per fresh batch; every step gets its own containers -----
    def _reuses_device_copy(self) -> bool:
        """True when the batch Lightning is about to transfer is an echo whose device copy is held."""
        loader = self._loader
        return (
            loader is not None
            and bool(loader.served)
            and loader.served[0].same_as_previous
            and self._device_batch is not None
            and _lightning.is_training(self._trainer)
        )

    def _before_transfer(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def on_before_batch_transfer(batch: Any, dataloader_idx: int = 0) -> Any:
            if self._reuses_device_copy():
                return batch  # the hook already ran on this fresh batch; its result is reused
            return original(batch, dataloader_idx=dataloader_idx)

        return on_before_batch_transfer

    def _transfer(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def batch_to_device(batch: Any, device: Any = None, dataloader_idx: int = 0) -> Any:
            loader = self._loader
            if loader is None or not loader.served or not _lightning.is_training(self._trainer):
                return original(batch, device=device, dataloader_idx=dataloader_idx)
            reuse = self._reuses_device_copy()
            info = loader.served.popleft()
            self._current = info
            self._report = self._step_report([info], loader)
            if reuse:
                self._warn_if_changed_in_place()
                return rebuild(self._device_batch)
            moved = original(batch, device=device, dataloader_idx=dataloader_idx)
            self.device_copies += 1
            if loader.reuse_device_copy:
                self._device_batch = rebuild(moved)  # containers the step cannot reach
                self._device_versions = tensor_versions(moved)
            return moved

        return batch_to_device

    def _warn_if_changed_in_place(self) -> None:
        if self._warned_in_place or tensor_versions(self._device_batch) == self._device_versions:
            return
        self._warned_in_place = True
        rank_zero_warn(
            "DataEchoing: a training batch's tensors were changed in place (e.g. x.mul_(2) in training_step); its "
            "echoes share those tensors and see the change. Change a copy instead (x = x * 2)."
        )

    # -- a training_step(self, dataloader_iter) takes its batches itself ----------------------------
    def _taken_by_step(self, info: EchoInfo) -> None:
        self._taken.append(info)
        self._current = info
        assert self._loader is not None
        self._report = self._step_report(self._taken, self._loader)
        if self.kind == "batch" and info.repeat == 0 and self._trainer is not None:
            self._start_fresh_batch(self._trainer)

    # -- accounting ------------------------------------------------------------------------------
    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if self._steps_on_iterator:
            self._taken, self._report = [], None  # this step's batches are counted as it takes them
            return
        if self.kind == "batch" and self._current is not None and self._current.repeat == 0:
            self._start_fresh_batch(trainer)

    @staticmethod
    def _start_fresh_batch(trainer: pl.Trainer) -> None:
        # Echoed optimizers (lightning_echo.echoed_optim) need to know where each echo group starts.
        for optimizer in trainer.optimizers:
            if isinstance(optimizer, StartsFreshBatches):
                optimizer.start_fresh_batch()

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._loader is not None and self._loader.echo.budget_exhausted:
            trainer.should_stop = True

    def _step_report(self, infos: Sequence[EchoInfo], loader: EchoLoader) -> StepReport:
        """What a step trained on: one served batch, or every batch a ``dataloader_iter`` step took."""
        if self.kind == "batch":
            fresh_batches = sum(int(info.repeat == 0) for info in infos)
        else:  # example echoing mixes fresh batches: count them as the stage fetches them
            fresh_batches = max(0, loader.echo.budget.batches - self._ledger.fresh_batches)
        return StepReport(
            samples=sum(info.samples for info in infos),
            fresh_samples=sum(info.fresh_samples for info in infos),
            fresh_batches=fresh_batches,
        )


def fresh_batches_per_epoch(length: Optional[int], limit: Union[int, float]) -> Optional[int]:
    """Fresh batches in an epoch of a loader of ``length`` batches (None: unknown) under Lightning's
    ``limit_train_batches`` (an int: at most that many batches; a float: that fraction of them)."""
    if isinstance(limit, float) and limit == 1.0:
        return length
    if isinstance(limit, int):
        return limit if length is None else min(length, limit)
    if length is None:
        raise ConfigError(
            "limit_train_batches", limit, "a fraction needs a train loader with a length: give a number of fresh batches (an int)"
        )
    fresh = int(length * limit)
    if fresh == 0:
        raise ConfigError("limit_train_batches", limit, f"{limit} of {length} fresh batches is none: give at least {1 / length:.3g}")
    return fresh


def _length_or_none(loader: Any) -> Optional[int]:
    try:
        return len(loader)
    except TypeError:
        return None
