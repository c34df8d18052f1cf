"""Every place where lightning_echo reaches into Lightning internals (checked against Lightning 2.2-2.6,
as ``pytorch_lightning`` and as ``lightning.pytorch``: see :mod:`lightning_echo.lightning_namespace`).

Lightning 2.x has no public hook to wrap the train loader or to skip a host-to-device copy, so:

- the fit loop's train data source (``fit_loop._data_source``) is wrapped, so the echo stage is
  installed whenever Lightning (re)loads the train loader (``fit_loop._combined_loader = None``
  makes it reload), and a plain ``DataLoader`` still gets Lightning's own preparation
  (``_process_dataloader``: ``DistributedSampler`` under DDP, worker checks;
  ``_resolve_overfit_batches``) before it is wrapped;
- ``strategy.batch_to_device`` is wrapped on the instance while fitting, so an echoed batch reuses
  the device copy of its fresh batch;
- ``LightningModule._on_before_batch_transfer`` (which runs the user's ``on_before_batch_transfer``)
  is wrapped on the instance while fitting, so an echo that reuses that device copy does not run
  the hook again on a batch it has already run on;
- a loader with background threads learns that Lightning is done with it by impersonating a
  ``DataLoader``'s ``_iterator`` attribute, which Lightning sets to None when ``fit`` ends
  (``_shutdown_workers_and_reset_iterator``); the same function stops a ``DataLoader``'s workers;
- while echoing, ``trainer.limit_train_batches`` is taken over (the echo stage applies it to fresh
  batches) and ``fit_loop.epoch_loop.max_steps`` may be given a bound (see :func:`bound_max_steps`).

Each access goes through :func:`_require`, so a Lightning release that renames one fails loudly
with :class:`LightningInternalsChanged` instead of training without echoing;
``tests/test_lightning_internals.py`` checks every one of them. The wrapping functions return an
undo callable.
"""

from __future__ import annotations

import abc
import inspect
import logging
from types import ModuleType
from typing import Any, Callable, Union

from lightning_echo.lightning_namespace import MODULE, import_lightning, pl

Undo = Callable[[], None]
SUPPORTED = "pytorch-lightning / lightning 2.2-2.6"


class LightningInternalsChanged(RuntimeError):
    """This Lightning release lacks an internal attribute lightning_echo relies on."""


def _require(owner: Any, name: str) -> Any:
    """``getattr(owner, name)``, or a clear error naming the attribute and the supported releases."""
    try:
        return getattr(owner, name)
    except AttributeError:
        raise LightningInternalsChanged(
            f"lightning_echo needs {_owner_name(owner)}.{name}, which {MODULE} {pl.__version__} does not "
            f"have (supported: {SUPPORTED}); pin a supported release or report this"
        ) from None


def _owner_name(owner: Any) -> str:
    return owner.__name__ if isinstance(owner, ModuleType) else type(owner).__name__


def _from_lightning(path: str, *names: str) -> tuple[Any, ...]:
    """``from <chosen Lightning>.<path> import <names>``, each checked by :func:`_require`."""
    module = import_lightning(path)
    return tuple(_require(module, name) for name in names)


_process_dataloader, _resolve_overfit_batches = _from_lightning(
    "trainer.connectors.data_connector", "_process_dataloader", "_resolve_overfit_batches")
RunningStage, TrainerFn = _from_lightning("trainer.states", "RunningStage", "TrainerFn")
CombinedLoader, _shutdown_workers_and_reset_iterator = _from_lightning(
    "utilities.combined_loader", "CombinedLoader", "_shutdown_workers_and_reset_iterator")
(is_param_in_hook_signature,) = _from_lightning("utilities.signature_utils", "is_param_in_hook_signature")
# Lightning's own "how many batches, if it can tell" (None for an iterable-style or sized-less loader).
(sized_len,) = _from_lightning("utilities.data", "sized_len")


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
    original = _require(fit_loop, "_data_source")
    for method in ("dataloader", "is_defined", "is_module"):
        _require(original, method)
    _require(fit_loop, "_combined_loader")
    fit_loop._data_source = _WrappedSource(original, wrap)
    fit_loop._combined_loader = None  # force setup_data to request (and so wrap) the loader

    def undo() -> None:
        fit_loop._data_source = original

    return undo


def validation_loader(trainer: "pl.Trainer") -> Any:
    """The validation loader (or DataModule / LightningModule providing it) the fit loop was given."""
    source = _require(trainer.fit_loop.epoch_loop.val_loop, "_data_source")
    return _require(source, "instance")


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
    return _wrap_on_instance(trainer.strategy, "batch_to_device", wrapper)


def wrap_before_batch_transfer(
    pl_module: "pl.LightningModule", wrapper: Callable[[Callable[..., Any]], Callable[..., Any]]
) -> Undo:
    """Replace ``pl_module._on_before_batch_transfer`` (Lightning's caller of the user's
    ``on_before_batch_transfer``, on the module or the DataModule) by ``wrapper(original)``."""
    return _wrap_on_instance(pl_module, "_on_before_batch_transfer", wrapper)


def _wrap_on_instance(owner: Any, name: str, wrapper: Callable[[Callable[..., Any]], Callable[..., Any]]) -> Undo:
    """Set ``owner.<name>`` on the instance to ``wrapper(original method)``; undo restores the class's."""
    setattr(owner, name, wrapper(_require(owner, name)))

    def undo() -> None:
        if name in vars(owner):
            delattr(owner, name)

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
    flag = _require(_require(trainer, "_accelerator_connector"), "_devices_flag")
    if isinstance(flag, int):
        return max(flag, 1)
    if isinstance(flag, (list, tuple)):
        return max(len(flag), 1)
    if isinstance(flag, str) and flag.strip().lstrip("-").isdigit():
        return max(int(flag), 1)
    return 1


def seed_everything_quietly(seed: int) -> None:
    """``seed_everything(seed, workers=True)`` without its "Seed set to" log line. Lightning 2.2
    has no ``verbose`` argument; its seed logger is raised to WARNING for the call instead."""
    if "verbose" in inspect.signature(pl.seed_everything).parameters:
        pl.seed_everything(seed, workers=True, verbose=False)
        return
    logger = logging.getLogger(pl.seed_everything.__module__)
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        pl.seed_everything(seed, workers=True)
    finally:
        logger.setLevel(level)


# -- loaders Lightning is done with ------------------------------------------------------------------
class ClosedWhenLightningResets(abc.ABC):
    """Mixin: ``close()`` runs when Lightning is done with the loader.

    When ``fit`` ends or fails, Lightning resets every train loader (``CombinedLoader.reset``), which
    sets ``loader._iterator = None`` (``_shutdown_workers_and_reset_iterator``, meant for a
    ``DataLoader``'s persistent iterator); this attribute stands in for it and calls ``close()``.
    """

    @abc.abstractmethod
    def close(self) -> None:
        """Stop what the loader runs in the background."""

    @property
    def _iterator(self) -> None:
        return None

    @_iterator.setter
    def _iterator(self, value: Any) -> None:
        if value is None:
            self.close()


def stop_dataloader_workers(dataloader: Any) -> None:
    """Stop a ``DataLoader``'s persistent worker processes as Lightning does when ``fit`` ends
    (its non-persistent workers stop when the iterator holding them is dropped)."""
    _shutdown_workers_and_reset_iterator(dataloader)


# -- Trainer limits that echoing redefines ---------------------------------------------------------
def take_train_batch_limit(trainer: "pl.Trainer") -> tuple[Union[int, float], Undo]:
    """Take ``trainer.limit_train_batches`` (also what ``overfit_batches`` sets) away from Lightning,
    which would apply it to served, echoed batches, so that the echo stage can apply it to fresh
    batches. Returns the limit and an undo; Lightning sees 1.0 (no limit) until then. A limit of 0
    (no training) is left to Lightning."""
    limit = _require(trainer, "limit_train_batches")
    if limit == 0 or (isinstance(limit, float) and limit == 1.0):
        return limit, lambda: None
    trainer.limit_train_batches = 1.0

    def undo() -> None:
        trainer.limit_train_batches = limit

    return limit, undo


def bound_max_steps(trainer: "pl.Trainer", steps: int) -> Undo:
    """Set ``max_steps`` to ``steps``, an upper bound on the optimizer steps of the run, where the
    user set none; Lightning then reports it as ``trainer.estimated_stepping_batches`` for a train
    loader without a length. Training still ends where it would have (the bound is never reached
    earlier). Returns an undo."""
    epoch_loop = trainer.fit_loop.epoch_loop
    original = _require(epoch_loop, "max_steps")
    epoch_loop.max_steps = steps

    def undo() -> None:
        epoch_loop.max_steps = original

    return undo


# -- a parameter server's processes ----------------------------------------------------------------
def lift_fit_limits(trainer: "pl.Trainer") -> Undo:
    """Let the fit loop run until ``trainer.should_stop``: no ``max_steps``, ``max_epochs``,
    ``min_steps`` or ``min_epochs`` (a parameter server's learner ends when the server says so,
    whatever the Trainer's limits). Returns an undo."""
    fit_loop = trainer.fit_loop
    epoch_loop = fit_loop.epoch_loop
    saved = {
        (fit_loop, "max_epochs"): _require(fit_loop, "max_epochs"),
        (fit_loop, "min_epochs"): _require(fit_loop, "min_epochs"),
        (epoch_loop, "max_steps"): _require(epoch_loop, "max_steps"),
        (epoch_loop, "min_steps"): _require(epoch_loop, "min_steps"),
    }
    fit_loop.max_epochs, fit_loop.min_epochs = -1, None
    epoch_loop.max_steps, epoch_loop.min_steps = -1, None

    def undo() -> None:
        for (owner, name), value in saved.items():
            setattr(owner, name, value)

    return undo


(_SubprocessScriptLauncher, _set_num_threads_if_needed) = _from_lightning(
    "strategies.launchers.subprocess_script", "_SubprocessScriptLauncher", "_set_num_threads_if_needed")


class _LauncherWithoutObserver(_SubprocessScriptLauncher):  # type: ignore[misc, valid-type]
    """Lightning's ``devices=N`` launcher (it re-runs the script as N - 1 child processes) without
    its child-process observer, which kills every process once one child ends with an error."""

    def launch(self, function: Callable[..., Any], *args: Any, trainer: Any = None, **kwargs: Any) -> Any:
        self.cluster_environment.validate_settings(num_devices=self.num_processes, num_nodes=self.num_nodes)
        if not self.cluster_environment.creates_processes_externally:
            _require(self, "_call_children_scripts")()
        _set_num_threads_if_needed(num_processes=self.num_processes)
        return function(*args, **kwargs)


def use_launcher_that_outlives_its_children(strategy: Any, num_processes: int, num_nodes: int) -> None:
    """Give ``strategy`` (a DDP-style strategy) Lightning's subprocess launcher, minus the observer
    that SIGKILLs all processes when one child process fails: a parameter server carries on when
    a learner dies. The processes are started as under ``DDPStrategy`` (or not at all when a
    launcher such as torchrun or SLURM started them)."""
    _require(strategy, "_launcher")
    strategy._launcher = _LauncherWithoutObserver(strategy.cluster_environment, num_processes, num_nodes)
