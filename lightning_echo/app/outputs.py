"""Where a run writes: everything inside its own directory, and no directory used twice."""

from __future__ import annotations

from pathlib import Path, PurePath
from typing import Any, Sequence

from hydra.core.override_parser.types import Override
from omegaconf import DictConfig, OmegaConf

from lightning_echo.errors import ConfigError
from lightning_echo.records import RUN_FILE

# Logger arguments that name a folder under the run directory (CSVLogger, TensorBoardLogger, ...);
# a WandbLogger's name and version are labels, its folder is ``dir``.
LOGGER_PATH_KEYS = ("name", "version", "sub_dir")
WANDB_PATH_KEYS = ("dir",)
# What a sweep directory holds once a sweep has used it.
SWEEP_MARKERS = ("multirun.yaml", "sweep.json")


def inside_run_dir(value: Any) -> bool:
    """Whether a logger's folder name keeps its files inside the run directory: a relative path
    without ``..`` (numbers and null are Lightning's own version numbering)."""
    if value is None or isinstance(value, (int, float)):
        return True
    path = PurePath(str(value))
    return not path.is_absolute() and ".." not in path.parts and not str(value).startswith("~")


def check_logger_paths(cfg: DictConfig) -> None:
    """Refuse a logger folder (``logger.csv.version=../../x``) that would write outside the run directory."""
    for logger, node in (cfg.get("logger") or {}).items():
        if not isinstance(node, DictConfig):
            continue
        keys = WANDB_PATH_KEYS if str(node.get("_target_", "")).endswith("WandbLogger") else LOGGER_PATH_KEYS
        for key in keys:
            value = OmegaConf.select(node, key, default=None)
            if not inside_run_dir(value):
                raise ConfigError(f"logger.{logger}.{key}", value,
                                  "must be a folder name inside the run directory (a relative path without '..')")


def used_output_dir(path: Path, multirun: bool) -> bool:
    """Whether ``path`` already holds a run (``run.json``) or, for a sweep, a sweep or any run."""
    path = Path(path)
    if not path.is_dir():
        return False
    if (path / RUN_FILE).is_file():
        return True
    if not multirun:
        return False
    return any((path / marker).exists() for marker in SWEEP_MARKERS) or any(
        (child / RUN_FILE).is_file() for child in path.iterdir() if child.is_dir())


def refuse_used_output_dir(path: Path, overrides: Sequence[Override], multirun: bool) -> None:
    """Refuse an output directory given on the command line (``hydra.sweep.dir`` / ``hydra.run.dir``)
    that an earlier run or sweep already wrote into: the two would overwrite each other's files.
    The default directories are named by date and time to the microsecond, new for every command."""
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    if any(o.key_or_group == key for o in overrides) and used_output_dir(path, multirun):
        raise ConfigError(key, str(path), "it holds an earlier " + ("sweep" if multirun else "run")
                          + "; choose a new directory, or continue that one with: lightning-echo resume " + str(path))
