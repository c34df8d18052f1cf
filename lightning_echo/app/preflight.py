"""Check every job of a command line before any work starts.

Each problem becomes one line naming the setting, the value and what is allowed: an unknown
group option, a bad value, a missing dataset file, a model that does not fit the data.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator, Sequence

from hydra import compose
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lightning_echo.app.builders import (
    build_callbacks,
    build_datamodule,
    build_model,
    build_trainer,
)
from lightning_echo.app.config import (
    CONFIG_NAME,
    GROUPS,
    compose_config,
    group_options,
    hydra_context,
)
from lightning_echo.errors import ConfigError, one_line
from lightning_echo.validation import non_negative_int


def parse_overrides(overrides: Sequence[str]) -> list[Override]:
    """Parse command-line overrides with Hydra's grammar; syntax errors become ConfigError."""
    try:
        return OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as error:
        raise ConfigError("overrides", " ".join(overrides), one_line(error, max_lines=2)) from None


def check_group_choices(overrides: Sequence[Override]) -> None:
    """Reject ``group=option`` overrides whose option does not exist, listing the choices."""
    for override in overrides:
        group = override.key_or_group
        if group not in GROUPS or override.is_delete():
            continue
        choices = group_options(group)
        values = list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.value()]
        for value in values:
            if value is not None and str(value) not in choices:
                raise ConfigError(group, value, "choose one of " + ", ".join(choices))


def expand_jobs(overrides: Sequence[Override], multirun: bool) -> list[list[str]]:
    """The override list of each job a (multi)run will launch, in launch order."""
    if not multirun:
        for override in overrides:
            if override.is_sweep_override():
                raise ConfigError(
                    override.key_or_group, override.input_line.split("=", 1)[-1], "a sweep needs multirun: add -m"
                )
        return [[o.input_line for o in overrides]]
    batches = BasicSweeper.split_arguments(list(overrides), None)
    return [list(job) for batch in batches for job in batch]


def configured_sweep(overrides: Sequence[Override]) -> tuple[bool, list[str]]:
    """Whether the config itself asks for a multirun (``hydra.mode``, as the default comparison
    does) and the sweep parameters it sets (``hydra.sweeper.params``)."""
    fixed = [o.input_line for o in overrides if not o.is_sweep_override()]
    try:
        with hydra_context():
            cfg = compose(config_name=CONFIG_NAME, overrides=fixed, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as error:
        raise ConfigError("overrides", " ".join(fixed), one_line(error, max_lines=2)) from None
    mode = str(OmegaConf.select(cfg, "hydra.mode", default=None) or "")
    params = OmegaConf.select(cfg, "hydra.sweeper.params", default=None) or {}
    return mode.endswith("MULTIRUN"), [f"{key}={value}" for key, value in params.items()]


def validate_config(cfg: DictConfig) -> None:
    """Build every object of the run from ``cfg`` without training; raise on the first problem."""
    try:
        OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as error:
        raise ConfigError(getattr(error, "full_key", "config") or "config", "?", one_line(error, max_lines=2)) from None
    non_negative_int("seed", cfg.get("seed"))
    datamodule = build_datamodule(cfg)
    build_model(cfg, datamodule.spec)
    build_callbacks(cfg)
    with _quiet_lightning():
        build_trainer(cfg, output_dir=None)
    datamodule.check_files()


def preflight(overrides: Sequence[str], multirun: bool) -> int:
    """Validate every job the command line would run; returns the number of jobs."""
    parsed = parse_overrides([o for o in overrides])
    with hydra_context():
        check_group_choices(parsed)
        config_multirun, params = configured_sweep(parsed)
        if config_multirun:
            # Hydra puts the config's sweep parameters first; the command line wins per key.
            parsed = parse_overrides(params) + parsed
            check_group_choices(parsed)
        jobs = expand_jobs(parsed, multirun or config_multirun)
        for job in jobs:
            job = [o for o in job if not o.lstrip("+~").startswith("hydra")]
            try:
                cfg = compose_config(job)
            except (HydraException, OmegaConfBaseException) as error:
                raise ConfigError("overrides", " ".join(job), one_line(error, max_lines=2)) from None
            validate_config(cfg)
    return len(jobs)


@contextmanager
def _quiet_lightning() -> Iterator[None]:
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

