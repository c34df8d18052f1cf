"""Stop a loader's background threads when Lightning is done with it."""

from __future__ import annotations

import abc
from typing import Any


class StopsAtLightningTeardown(abc.ABC):
    """Mixin for loaders that run threads: :meth:`close` runs when Lightning tears the loader down.

    When ``fit`` ends or fails, Lightning sets ``loader._iterator = None`` on every train loader
    (``CombinedLoader.reset``); that is the moment to stop our threads. Iterating again restarts them.
    """

    @abc.abstractmethod
    def close(self) -> None:
        """Stop every background thread of this loader."""

    @property
    def _iterator(self) -> None:
        return None

    @_iterator.setter
    def _iterator(self, value: Any) -> None:
        if value is None:
            self.close()
