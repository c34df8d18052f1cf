"""What the command line's ``echo`` block builds: ``echo.factor`` null means the algorithm's own
default (2 under ``algorithm=echo``; no echoing under a straggler algorithm, whose learners echo
only when a factor is set)."""

from __future__ import annotations

from typing import Any, Optional

from lightning_echo.echo.callback import DataEchoing

DEFAULT_FACTOR = 2  # algorithm=echo with echo.factor unset


def check_echo_settings(factor: Any = None, **settings: Any) -> DataEchoing:
    """Check an ``echo`` block as ``DataEchoing`` would take it (an unset factor as the default)."""
    return DataEchoing(factor=DEFAULT_FACTOR if factor is None else factor, **settings)


def learner_echoing(factor: Any = None, **settings: Any) -> Optional[DataEchoing]:
    """The ``DataEchoing`` a straggler algorithm's learners echo with, or None when ``echo.factor``
    is unset (then the run adds no callback)."""
    return None if factor is None else DataEchoing(factor=factor, **settings)
