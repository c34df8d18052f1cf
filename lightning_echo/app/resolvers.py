"""OmegaConf resolvers used by the packaged configs (registered once, on import)."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

from lightning_echo.lightning_namespace import MODULE

OUTPUT_ENV_VAR = "LIGHTNING_ECHO_OUTPUT"


def default_output_root() -> str:
    """``$LIGHTNING_ECHO_OUTPUT`` if set, else ``~/lightning_echo``."""
    return str(Path(os.environ.get(OUTPUT_ENV_VAR) or Path.home() / "lightning_echo").expanduser())


def lightning_path(name: str) -> str:
    """``name`` (e.g. ``loggers.CSVLogger``) under the Lightning lightning_echo builds on:
    ``pytorch_lightning.loggers.CSVLogger`` or ``lightning.pytorch.loggers.CSVLogger``, so that a
    config's ``_target_: ${le.lightning:loggers.CSVLogger}`` follows the chosen namespace."""
    return f"{MODULE}.{name}"


def add(*values: int) -> int:
    """The sum of ``values`` (``${le.add:${stale.learners},1}``: the processes of a parameter server)."""
    return sum(values)


def default(value: object, fallback: object) -> object:
    """``value``, or ``fallback`` when it is null (``${le.default:${echo.factor},2}``)."""
    return fallback if value is None else value


def register_resolvers() -> None:
    """Register the ``le.*`` resolvers; safe to call more than once."""
    if not OmegaConf.has_resolver("le.output_root"):
        OmegaConf.register_new_resolver("le.output_root", default_output_root)
    if not OmegaConf.has_resolver("le.lightning"):
        OmegaConf.register_new_resolver("le.lightning", lightning_path)
    if not OmegaConf.has_resolver("le.add"):
        OmegaConf.register_new_resolver("le.add", add)
    if not OmegaConf.has_resolver("le.default"):
        OmegaConf.register_new_resolver("le.default", default)


register_resolvers()
