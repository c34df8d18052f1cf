"""Whether wandb credentials are configured, without touching the network."""

from __future__ import annotations

import netrc
import os
from pathlib import Path


def wandb_has_credentials() -> bool:
    """True when a wandb API key is configured (environment or ~/.netrc); never touches the network."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc_path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    if netrc_path.is_file():
        try:
            hosts = netrc.netrc(str(netrc_path)).hosts
        except (netrc.NetrcParseError, OSError):
            return False
        base_url = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
        host = base_url.split("://", 1)[-1].split("/", 1)[0]
        return host in hosts
    return False
