"""OmegaConf resolvers used by the packaged configs (registered once, on import)."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

OUTPUT_ENV_VAR = "LIGHTNING_ECHO_OUTPUT"


def default_output_root() -> str:
    """``$LIGHTNING_ECHO_OUTPUT`` if set, else ``~/lightning_echo``."""
    return str(Path(os.environ.get(OUTPUT_ENV_VAR) or Path.home() / "lightning_echo").expanduser())


def register_resolvers() -> None:
    """Register the ``le.*`` resolvers; safe to call more than once."""
    if not OmegaConf.has_resolver("le.output_root"):
        OmegaConf.register_new_resolver("le.output_root", default_output_root)


register_resolvers()
