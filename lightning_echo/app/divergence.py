"""A run that diverged, as the command line reports it: one line with where it diverged and the
settings to look at."""

from __future__ import annotations

from typing import Union

from omegaconf import DictConfig

from lightning_echo.app.builders import algorithm_keys
from lightning_echo.callbacks.divergence import Divergence
from lightning_echo.errors import LightningEchoError
from lightning_echo.records import DIVERGED_EXIT_CODE


class RunDiverged(LightningEchoError):
    """Training stopped because its loss stopped being finite (or crossed a callback's bound).

    The command exits with :data:`~lightning_echo.records.DIVERGED_EXIT_CODE`; in a sweep the job
    is recorded as ``diverged`` and the next job runs.
    """

    exit_code = DIVERGED_EXIT_CODE

    def __init__(self, divergence: Union[Divergence, str], hint: str) -> None:
        """``divergence``: where it diverged, or that as described by the process that trained (a rank)."""
        self.divergence = divergence if isinstance(divergence, Divergence) else None
        self.described = divergence.describe() if isinstance(divergence, Divergence) else divergence
        self.hint = hint
        super().__init__(f"training diverged: {self.described}; {hint}")


def divergence_hint(cfg: DictConfig) -> str:
    """The settings that make a run diverge: the step size, and the algorithm's own settings."""
    settings = [f"optimizer.lr={cfg.optimizer.get('lr')}"]
    if cfg.optimizer.get("momentum"):
        settings.append(f"optimizer.momentum={cfg.optimizer.get('momentum')}")
    own = ", ".join(f"{key}={value}" for key, value in sorted(algorithm_keys(cfg).items()))
    hint = "look at " + ", ".join(settings) + " (a smaller step size)"
    return hint + (f" and algorithm={cfg.algorithm.name}'s settings ({own})" if own else "")
