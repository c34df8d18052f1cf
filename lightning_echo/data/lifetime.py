"""Stop a loader's background threads when Lightning is done with it."""

from __future__ import annotations

import abc
import weakref
from typing import TypeVar

from lightning_echo.lightning_internals import ClosedWhenLightningResets


class StopsAtLightningTeardown(ClosedWhenLightningResets):
    """Mixin for loaders that run threads: :meth:`close` runs when Lightning tears the loader down.

    When ``fit`` ends or fails, Lightning resets every train loader; that is the moment to stop our
    threads (how Lightning says so is in :mod:`lightning_echo.lightning_internals`). Iterating
    again restarts them.
    """

    @abc.abstractmethod
    def close(self) -> None:
        """Stop every background thread of this loader."""


_Loader = TypeVar("_Loader", bound=StopsAtLightningTeardown)


class ThreadedLoaders:
    """The thread-running loaders an owner (a DataModule) handed out, held weakly, to stop them all.

    Lightning resets the train loader when ``fit`` ends, also when it fails, except when the
    exception lands during validation (it then tears down the validation loop only): the owner's
    ``on_exception`` hook calls :meth:`close_all` so that no thread outlives ``fit``.
    """

    def __init__(self) -> None:
        self._loaders: "weakref.WeakSet[StopsAtLightningTeardown]" = weakref.WeakSet()

    def add(self, loader: _Loader) -> _Loader:
        """Track ``loader`` and return it."""
        self._loaders.add(loader)
        return loader

    def close_all(self) -> None:
        """Stop the threads of every tracked loader still alive."""
        for loader in list(self._loaders):
            loader.close()
