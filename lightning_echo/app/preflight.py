"""Check every job of a command line before any work starts.

Each problem becomes one line naming the setting, the value and what is allowed: an unknown
group option or key, a bad value (also in the settings of an algorithm not in use), a missing
dataset file, a model that does not fit the data, an output directory that cannot be written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from hydra import compose
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lightning_echo.app.builders import (
    build_callbacks,
    build_datamodule,
    build_model,
    build_trainer,
    quiet_lightning,
)
from lightning_echo.app.checkpoint import build_last_checkpoint
from lightning_echo.app.config import (
    CONFIG_NAME,
    GROUPS,
    compose_config,
    group_options,
    hydra_context,
)
from lightning_echo.app.data_check import check_dataset_readable
from lightning_echo.app.launch import check_process_count, processes_to_start
from lightning_echo.app.outputs import check_logger_paths, refuse_used_output_dir
from lightning_echo.app.overrides import check_known_keys, is_group_override, parse_overrides, quoted_override
from lightning_echo.app.resume import refuse_checkpoint_overrides
from lightning_echo.app.value_checks import check_algorithm_settings, check_integer_sizes, check_report_settings
from lightning_echo.errors import ConfigError, one_line
from lightning_echo.protocols import ChecksTrainer
from lightning_echo.callbacks.divergence import DEFAULT_MAX_GROWTH, check_max_growth
from lightning_echo.validation import boolean, random_seed, writable_directory

# Group options that were renamed: the old spelling is refused with the new one.
RENAMED_OPTIONS = {("trainer", "parameter_server"): "backend=processes"}


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
                renamed = RENAMED_OPTIONS.get((group, str(value)))
                raise ConfigError(group, value, (f"it is now {renamed}; " if renamed else "") + "choose one of " + ", ".join(choices))


def expand_jobs(overrides: Sequence[Override], multirun: bool) -> list[list[str]]:
    """The override list of each job a (multi)run will launch, in launch order."""
    if not multirun:
        for override in overrides:
            if override.is_sweep_override():
                key, _, value = override.input_line.partition("=")
                raise ConfigError(key, value, "a sweep needs multirun: add -m (or, if the commas belong to the "
                                  f"value, quote it: {quoted_override(key, value)})")
        return [[o.input_line for o in overrides]]
    batches = BasicSweeper.split_arguments(list(overrides), None)
    return [list(job) for batch in batches for job in batch]


def compose_with_hydra(overrides: Sequence[Override]) -> DictConfig:
    """The config with its ``hydra`` node, composed from the overrides that are not sweeps (what
    Hydra composes to decide the run mode and the output directory)."""
    fixed = [o.input_line for o in overrides if not o.is_sweep_override()]
    try:
        with hydra_context():
            return compose(config_name=CONFIG_NAME, overrides=fixed, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as error:
        raise _compose_error(fixed, error) from None


def configured_sweep(cfg: DictConfig) -> tuple[bool, list[str]]:
    """Whether the config itself asks for a multirun (``hydra.mode``, as the default comparison
    does) and the sweep parameters it sets (``hydra.sweeper.params``)."""
    mode = str(OmegaConf.select(cfg, "hydra.mode", default=None) or "")
    params = OmegaConf.select(cfg, "hydra.sweeper.params", default=None) or {}
    return mode.endswith("MULTIRUN"), [f"{key}={value}" for key, value in params.items()]


def check_output_dir(cfg: DictConfig, overrides: Sequence[Override], multirun: bool) -> Path:
    """Refuse an output directory (``hydra.run.dir``, or ``hydra.sweep.dir`` for a multirun; both
    under ``paths.output_root`` unless set) that is a file or cannot be written."""
    dir_key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    try:
        path = Path(str(OmegaConf.select(cfg, dir_key)))
        output_root = OmegaConf.select(cfg, "paths.output_root")
    except OmegaConfBaseException as error:
        raise ConfigError(dir_key, "?", one_line(error, max_lines=1)) from None
    if any(o.key_or_group == dir_key for o in overrides):
        return writable_directory(dir_key, str(path), path)
    return writable_directory("paths.output_root", output_root, path)


def validate_config(cfg: DictConfig) -> None:
    """Build every object of the run from ``cfg`` without training; raise on the first problem."""
    try:
        container = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as error:
        raise ConfigError(getattr(error, "full_key", "config") or "config", "?", one_line(error, max_lines=2)) from None
    random_seed("seed", cfg.get("seed"))
    boolean("validate_before_training", cfg.get("validate_before_training", True))
    check_max_growth(cfg.get("divergence_growth", DEFAULT_MAX_GROWTH), "divergence_growth")
    check_report_settings(cfg.get("report") or {})
    check_integer_sizes(container)
    check_process_count(cfg)
    datamodule = build_datamodule(cfg)
    build_model(cfg, datamodule.spec)
    build_callbacks(cfg)
    build_last_checkpoint(cfg, run_dir=None)
    check_logger_paths(cfg)
    check_algorithm_settings(cfg)
    with quiet_lightning():
        trainer = build_trainer(cfg, output_dir=None)
    processes_to_start(cfg, trainer)
    check_restarts(cfg)
    if isinstance(trainer.strategy, ChecksTrainer):
        trainer.strategy.check_trainer(trainer)
    try:
        datamodule.check_files()
    except ConfigError as error:
        raise error.with_prefix("data.") from None
    check_dataset_readable(datamodule)


def check_restarts(cfg: DictConfig) -> None:
    """A parameter-server run's fault settings that depend on others: a server started again
    needs the run's checkpoints; ``ps.min_learners`` cannot exceed the learners."""
    if (cfg.get("backend") or {}).get("name") != "processes" or "ps" not in cfg:
        return
    learners = int(cfg.stale.learners)
    if int(cfg.ps.get("min_learners") or 1) > learners:
        raise ConfigError("ps.min_learners", cfg.ps.min_learners, f"must be at most stale.learners ({learners})")
    if int(cfg.ps.get("restart_server") or 0) > 0 and not (cfg.get("checkpoint") or {}).get("enabled", False):
        raise ConfigError("ps.restart_server", cfg.ps.restart_server,
                          "needs checkpoint.enabled=true: a server started again resumes from the run's last checkpoint "
                          "(set its period with checkpoint.every_n_steps or every_n_minutes)")


def preflight(overrides: Sequence[str], multirun: bool) -> list[list[str]]:
    """Validate every job the command line would run; returns each job's overrides, in launch order."""
    parsed = parse_overrides(overrides)
    refuse_checkpoint_overrides(parsed)
    with hydra_context():
        check_group_choices(parsed)
        # The run mode and the sweep the config sets depend on its groups and hydra.* alone.
        config_multirun, params = configured_sweep(
            compose_with_hydra([o for o in parsed if is_group_override(o, GROUPS) or o.is_hydra_override()]))
        if config_multirun:
            # Hydra puts the config's sweep parameters first; the command line wins per key.
            parsed = parse_overrides(params) + parsed
            check_group_choices(parsed)
        multirun = multirun or config_multirun
        jobs = expand_jobs(parsed, multirun)
        bases: dict[tuple[str, ...], DictConfig] = {}
        for job in jobs:
            job_overrides = [o for o in parse_overrides(job) if not o.is_hydra_override()]
            groups = tuple(o.input_line for o in job_overrides if is_group_override(o, GROUPS))
            if groups not in bases:
                bases[groups] = _compose(groups)
            check_known_keys(job_overrides, bases[groups], GROUPS)
            validate_config(_compose([o.input_line for o in job_overrides]))
        output_dir = check_output_dir(compose_with_hydra(parsed), parsed, multirun)
        refuse_used_output_dir(output_dir, parsed, multirun)
    return jobs


def _compose(overrides: Sequence[str]) -> DictConfig:
    try:
        return compose_config(overrides)
    except (HydraException, OmegaConfBaseException) as error:
        raise _compose_error(overrides, error) from None


def _compose_error(overrides: Sequence[str], error: Exception) -> ConfigError:
    # Hydra's "To append to your config use +key=value" would lead to a key nobody reads.
    lines = [line for line in str(error).splitlines() if not line.strip().startswith("To append to your config")]
    return ConfigError("overrides", " ".join(overrides), one_line("\n".join(lines), max_lines=2))
