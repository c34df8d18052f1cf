"""Access to the packaged Hydra configs: composing them and listing group options."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

import lightning_echo.app.resolvers  # noqa: F401  (registers the le.* resolvers)

CONFIG_MODULE = "lightning_echo.conf"
CONFIG_PATH = "pkg://" + CONFIG_MODULE
CONFIG_NAME = "config"
VERSION_BASE = "1.3"
GROUPS = ("algorithm", "backend", "data", "model", "optimizer", "loader", "trainer", "logger", "paths", "experiment")


@contextmanager
def hydra_context() -> Iterator[None]:
    """Initialise Hydra on the packaged configs (restoring any Hydra state already set up)."""
    previous = GlobalHydra.instance().is_initialized()
    if previous:
        # Called from inside a running Hydra app: reuse its config loader.
        yield
        return
    with initialize_config_module(config_module=CONFIG_MODULE, version_base=VERSION_BASE):
        yield


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """Compose the main config with command-line style overrides (no Hydra run is started)."""
    with hydra_context():
        return compose(config_name=CONFIG_NAME, overrides=list(overrides))


def group_options(group: str) -> list[str]:
    """Names of the options of a config group, e.g. ``group_options("model")``."""
    with hydra_context():
        loader = GlobalHydra.instance().config_loader()
        return sorted(loader.get_group_options(group))
