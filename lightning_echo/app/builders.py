"""Build the run's objects from its config; errors name the config key that caused them."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lightning_echo.callbacks.progress import TrainingProgress
from lightning_echo.core.learner_data import data_times_from_config
from lightning_echo.core.progress import WALL_CLOCK
from lightning_echo.data.background import ThrottleSpec
from lightning_echo.data.modules.array import ArrayDataModule
from lightning_echo.data.spec import DataSpec
from lightning_echo.errors import ConfigError, IncompatibleDataError, one_line
from lightning_echo.lightning_namespace import pl
from lightning_echo.report.wandb_credentials import wandb_has_credentials
from lightning_echo.validation import positive_float

Logger = pl.loggers.Logger
DEFAULT_BACKEND = "simulated"
# Config sections whose keys the components name in full in their errors (a strategy's ``stale.k``,
# ``ps.timeout``, ``trainer.devices``): not prefixed again with the node that built them.
QUALIFIED_SECTIONS = ("stale.", "ps.", "trainer.")


def _instantiate(node: DictConfig, prefix: str, **runtime_kwargs: Any) -> Any:
    """Build ``node``'s ``_target_``; errors of our own are reported with the config prefix (a
    key a component already names in full, such as ``stale.k``, is left as it is).

    ``runtime_kwargs`` (objects such as a DataSpec) are passed straight to the constructor,
    never through OmegaConf, so they keep their types.
    """
    try:
        factory = instantiate(node, _partial_=True)
    except Exception as error:  # Hydra wraps import and argument errors, and a nested node's, in InstantiationException
        cause = error.__cause__ or error
        if isinstance(cause, ConfigError):
            raise _qualified(cause, prefix) from None
        raise ConfigError(prefix.rstrip("."), node.get("_target_"), one_line(cause, max_lines=2)) from None
    try:
        return factory(**runtime_kwargs)
    except ConfigError as error:
        raise _qualified(error, prefix) from None
    except TypeError as error:
        raise ConfigError(prefix.rstrip("."), node.get("_target_"), f"bad arguments: {error}") from None


def _qualified(error: ConfigError, prefix: str) -> ConfigError:
    return error if error.key.startswith(QUALIFIED_SECTIONS) else error.with_prefix(prefix)


def build_datamodule(cfg: DictConfig) -> ArrayDataModule:
    """The ``data`` group's LightningDataModule (constructed, not yet loaded), throttled per ``loader``
    (not on simulated learners: there the loader group is each learner's simulated data time)."""
    datamodule = _instantiate(cfg.data, "data.")
    throttle = build_throttle(cfg)
    if throttle is not None and learners_are_simulated(cfg):
        datamodule.unthrottled_pipeline = True  # the same stateful pipeline; the learners' data times are simulated
    else:
        datamodule.throttle = throttle
    return datamodule


def learners_are_simulated(cfg: DictConfig) -> bool:
    """A straggler algorithm on simulated learners (``backend=simulated``)."""
    return cfg.algorithm.get("settings") is not None and cfg.get("backend", {}).get("name") == DEFAULT_BACKEND


def build_throttle(cfg: DictConfig) -> Optional[ThrottleSpec]:
    """The ``loader`` group as a ThrottleSpec (None for ``loader=none``); on simulated learners it
    is checked as their data times (``speeds`` and ``trace`` are for them only)."""
    loader = cfg.get("loader") or {}
    if loader.get("name", "none") == "none":
        return None
    simulated_only = [key for key in ("speeds", "trace") if loader.get(key) is not None]
    if learners_are_simulated(cfg):
        try:
            data_times_from_config(loader)
        except ConfigError as error:
            raise error.with_prefix("loader.") from None
    elif simulated_only:
        key = simulated_only[0]
        raise ConfigError(f"loader.{key}", loader.get(key), "gives each simulated learner its own loader: only for a "
                          "straggler algorithm on backend=simulated (leave it unset here)")
    try:
        return ThrottleSpec(
            seconds_per_batch=loader.get("seconds_per_batch"),
            slowdown=loader.get("slowdown"),
            jitter=loader.get("jitter"),
            jitter_param=loader.get("jitter_param"),
            seed=int(cfg.get("seed", 0)),
            queue_size=loader.get("queue_size", 2),
        )
    except ConfigError as error:
        raise error.with_prefix("loader.") from None


def build_optimizer_factory(cfg: DictConfig) -> Callable[..., torch.optim.Optimizer]:
    """A function ``params -> Optimizer`` from the ``optimizer`` group, checked on a dummy parameter."""
    if cfg.optimizer.get("lr") is not None or cfg.optimizer.get("rule", "constant") != "theory":
        positive_float("optimizer.lr", cfg.optimizer.get("lr"))
    try:
        factory = instantiate(cfg.optimizer)
    except Exception as error:
        raise ConfigError("optimizer", cfg.optimizer.get("_target_"), one_line(error.__cause__ or error, max_lines=2)) from None
    try:
        factory([torch.nn.Parameter(torch.zeros(1))])
    except ConfigError as error:
        raise error.with_prefix("optimizer.") from None
    except (ValueError, TypeError) as error:  # torch's own checks ("Invalid momentum value: -1"), unknown arguments
        raise ConfigError("optimizer", cfg.optimizer.get("_target_"), str(error)) from None
    return factory


def build_model(cfg: DictConfig, spec: DataSpec) -> pl.LightningModule:
    """The ``model`` group's LightningModule for data of shape ``spec``."""
    try:
        return _instantiate(cfg.model, "model.", spec=spec, optimizer=build_optimizer_factory(cfg))
    except IncompatibleDataError as error:
        model_name = cfg.model.get("_target_", "?").rsplit(".", 1)[-1]
        raise IncompatibleDataError(f"model {model_name} does not fit data {spec.name}: {error}") from None


def build_callbacks(cfg: DictConfig) -> list[pl.Callback]:
    """The algorithm's callbacks plus the progress metrics every run logs (and its data budget), and
    with ``record.step_times=true`` the step-time recorder (its trace goes to the run directory)."""
    budget = cfg.get("budget") or {}
    try:
        progress = TrainingProgress(max_fresh_samples=budget.get("fresh_samples"), max_fresh_batches=budget.get("fresh_batches"))
    except ConfigError as error:
        raise error.with_prefix("budget.") from None
    callbacks: list[pl.Callback] = [progress]
    for name, node in (cfg.algorithm.get("callbacks") or {}).items():
        # Settings the user sets as e.g. `echo.factor` are reported under that name.
        prefix = f"{name}." if name in cfg else f"algorithm.callbacks.{name}."
        callback = _instantiate(node, prefix)
        if callback is not None:  # e.g. a straggler algorithm's learner echoing, when echo.factor is unset
            callbacks.append(callback)
    from lightning_echo.advisor.record import StepTimeRecorder
    from lightning_echo.validation import boolean

    if boolean("record.step_times", (cfg.get("record") or {}).get("step_times", False)):
        callbacks.append(StepTimeRecorder())  # into the Trainer's default_root_dir: the run directory
    return callbacks


def build_algorithm_settings(cfg: DictConfig) -> Optional[Any]:
    """The settings object the algorithm declares (``algorithm.settings``, e.g. a straggler
    algorithm's StragglerSettings), or None."""
    node = cfg.algorithm.get("settings")
    return None if node is None else _instantiate(node, "algorithm.settings.")


def build_strategy(cfg: DictConfig) -> Optional[Any]:
    """The strategy the algorithm declares (``algorithm.strategy``; a straggler algorithm's is its
    backend's, ``backend.strategy``), given the algorithm's settings; None to use ``trainer.strategy``."""
    node = cfg.algorithm.get("strategy")
    if node is None:
        if cfg.get("backend", {}).get("name") not in (None, DEFAULT_BACKEND):
            raise ConfigError("backend", cfg.backend.name,
                              f"runs a straggler algorithm's learners; algorithm={cfg.algorithm.get('name')} has none: "
                              "choose algorithm=p_sync, k_sync, k_batch_sync, async, k_async, k_batch_async, "
                              "rennala or ringmaster")
        return None
    chosen = cfg.trainer.get("strategy", "auto")
    if chosen not in (None, "auto"):
        raise ConfigError("trainer.strategy", chosen,
                          f"algorithm={cfg.algorithm.get('name')} trains with its own strategy; leave trainer.strategy=auto")
    settings = build_algorithm_settings(cfg)
    return _instantiate(node, "algorithm.strategy.", **({"settings": settings} if settings is not None else {}))


def build_loggers(cfg: DictConfig, output_dir: Path, group: Optional[str] = None,
                  name: Optional[str] = None) -> list[Logger]:
    """Loggers of the ``logger`` group, all writing under ``output_dir``; a wandb logger without
    its own ``group``/``name`` gets the sweep's ``group`` and the run's ``name``."""
    loggers: list[Logger] = []
    for key, node in (cfg.get("logger") or {}).items():
        node = OmegaConf.to_container(node, resolve=True)
        assert isinstance(node, dict)
        extra: dict[str, Any] = {"save_dir": str(output_dir)}
        if node.get("offline") == "auto":
            node["offline"] = not wandb_has_credentials()
        if str(node.get("_target_", "")).endswith("WandbLogger"):
            node["group"] = node.get("group") or group
            node["name"] = node.get("name") or name
        loggers.append(_instantiate(OmegaConf.create(node), f"logger.{key}.", **extra))
    return loggers


def trainer_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """The ``trainer`` group as keyword arguments, checked for values Lightning would accept silently."""
    kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    assert isinstance(kwargs, dict)
    kwargs.pop("_target_", None)
    max_steps, max_epochs = kwargs.get("max_steps", -1), kwargs.get("max_epochs")
    if not isinstance(max_steps, int) or isinstance(max_steps, bool) or (max_steps < 1 and max_steps != -1):
        raise ConfigError("trainer.max_steps", max_steps, "must be a positive integer, or -1 for no step limit")
    if max_epochs is not None and (not isinstance(max_epochs, int) or (max_epochs < 1 and max_epochs != -1)):
        raise ConfigError("trainer.max_epochs", max_epochs, "must be a positive integer, or -1/null for no epoch limit")
    if max_steps == -1 and max_epochs in (None, -1) and kwargs.get("max_time") is None:
        raise ConfigError("trainer.max_steps", max_steps, "set trainer.max_steps or trainer.max_epochs, else training never stops")
    every = kwargs.get("log_every_n_steps", 50)
    if not isinstance(every, int) or every < 1:
        raise ConfigError("trainer.log_every_n_steps", every, "must be a positive integer")
    _check_validation_and_accumulation(kwargs)
    return kwargs


def _check_validation_and_accumulation(kwargs: dict[str, Any]) -> None:
    """Values that Lightning accepts and then divides by during training (a traceback in a run
    directory): refused here, in one line, before anything starts."""
    interval = kwargs.get("val_check_interval")
    if interval is not None and (isinstance(interval, bool) or not isinstance(interval, (int, float))
                                 or (isinstance(interval, int) and interval < 1)
                                 or (isinstance(interval, float) and not 0 < interval <= 1)):
        raise ConfigError("trainer.val_check_interval", interval,
                          "must be a number of steps >= 1, a fraction of an epoch in (0, 1], or null")
    epochs = kwargs.get("check_val_every_n_epoch", 1)
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
        raise ConfigError("trainer.check_val_every_n_epoch", epochs, "must be a positive integer, or null")
    accumulate = kwargs.get("accumulate_grad_batches", 1)
    if isinstance(accumulate, bool) or not isinstance(accumulate, int) or accumulate < 1:
        raise ConfigError("trainer.accumulate_grad_batches", accumulate, "must be a positive integer")


def build_trainer(
    cfg: DictConfig,
    output_dir: Optional[Path],
    callbacks: Optional[list[pl.Callback]] = None,
    loggers: Optional[list[Logger]] = None,
    strategy: Optional[Any] = None,
) -> pl.Trainer:
    """A Lightning Trainer from the ``trainer`` group with the given callbacks and loggers, training
    with the algorithm's strategy when it declares one (``strategy``: that one, already built)."""
    kwargs = trainer_kwargs(cfg)
    if strategy is None:
        strategy = build_strategy(cfg)
    if strategy is not None:
        kwargs["strategy"] = strategy
    try:
        return pl.Trainer(
            **kwargs,
            callbacks=callbacks or [],
            logger=loggers if loggers else False,
            default_root_dir=str(output_dir) if output_dir is not None else None,
        )
    except TypeError as error:
        raise ConfigError("trainer", "...", f"bad Trainer argument: {error}") from None
    except Exception as error:
        # Lightning refuses bad values with MisconfigurationException or ValueError (precision=weird),
        # and an accelerator whose package is missing with ImportError (accelerator=tpu without XLA).
        if type(error).__name__ == "MisconfigurationException" or isinstance(error, (ValueError, ImportError)):
            raise ConfigError("trainer", _short(kwargs), one_line(error, max_lines=1)) from None
        raise


def _short(kwargs: dict[str, Any]) -> str:
    keys = ("accelerator", "devices", "strategy", "precision")
    return ", ".join(f"{k}={kwargs[k] if isinstance(kwargs[k], (str, int, float)) else type(kwargs[k]).__name__}"
                     for k in keys if k in kwargs)


def algorithm_label(cfg: DictConfig) -> str:
    """The algorithm's label in reports (``algorithm.label``: a string or a node that builds one)."""
    node = cfg.algorithm.get("label")
    if node is None:
        return str(cfg.algorithm.name)
    if isinstance(node, DictConfig):
        return str(_instantiate(node, "algorithm.label."))
    return str(node)


def run_clock(cfg: DictConfig) -> str:
    """The clock the run's time is measured in (``algorithm.clock``; a straggler algorithm's is its backend's)."""
    return str(cfg.algorithm.get("clock", WALL_CLOCK))


def algorithm_keys(cfg: DictConfig) -> dict[str, Any]:
    """The algorithm's own settings as flat keys (``algorithm.keys``; a value may be a node whose
    ``_target_`` computes it from the settings, e.g. a resolved default)."""
    flat: dict[str, Any] = {}
    for key, node in (cfg.algorithm.get("keys") or {}).items():
        if isinstance(node, DictConfig) and "_target_" in node:
            flat[str(key)] = _instantiate(node, f"algorithm.keys.{key}.")
        else:
            flat[str(key)] = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    return flat


def algorithm_is_baseline(cfg: DictConfig) -> bool:
    """Whether runs of the algorithm are the synchronous baseline of a comparison
    (``algorithm.baseline``: a boolean or a node that decides from the settings)."""
    node = cfg.algorithm.get("baseline", False)
    if isinstance(node, DictConfig):
        return bool(_instantiate(node, "algorithm.baseline."))
    return bool(node)


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Hide Lightning's "GPU available: ..." lines while building a Trainer only to check it."""
    loggers = [logging.getLogger(name) for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
