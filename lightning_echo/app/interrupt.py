"""Signals during a command: SIGINT (Ctrl-C) and SIGTERM (what schedulers send before they kill).

While :data:`SIGNALS` is entered (the command line enters it around everything it runs, and
``run_training`` around each run), either signal ends the run as :class:`RunInterrupted`, whose
exit status is the conventional ``128 + signal number`` (130 for SIGINT, 143 for SIGTERM).

SIGTERM during Lightning's ``fit``/``validate`` is Lightning's to handle: its own handler (which
calls ours, that only records the signal) lets the current step finish and then raises
``SIGTERMException``, so the run can save a consistent checkpoint before it stops
(:class:`~lightning_echo.app.checkpoint.LastCheckpoint`). Everywhere else, and for SIGINT
always, the signal raises :class:`RunInterrupted` at once. Code that must act on a signal at points of
its own (a job supervising the processes of a multi-device run) enters :meth:`SignalWatch.noting`.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Iterator, Optional

from lightning_echo.lightning_namespace import import_lightning

SIGTERMException = import_lightning("utilities.exceptions").SIGTERMException


WATCHED = (signal.SIGINT, signal.SIGTERM)


class RunInterrupted(BaseException):
    """A run or command stopped by a signal.

    A ``BaseException`` like ``KeyboardInterrupt``: code that records a failed job and goes on
    (``except Exception``) must not swallow it, and Lightning's own ``KeyboardInterrupt`` branch
    (which ends in ``sys.exit(1)``) does not take it.
    """

    def __init__(self, signum: int, detail: str = "", run_dir: Optional[Path] = None,
                 checkpoint: Optional[Path] = None) -> None:
        self.signum = int(signum)
        self.detail = detail
        self.run_dir = run_dir  # the run it stopped, if one was running
        self.checkpoint = checkpoint  # the checkpoint that run can be resumed from, if any
        super().__init__(f"interrupted by {self.signal_name}" + (f": {detail}" if detail else ""))

    @property
    def signal_name(self) -> str:
        """``SIGINT`` or ``SIGTERM``."""
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by this signal: ``128 + signum``."""
        return 128 + self.signum


class SignalWatch:
    """Turns SIGINT and SIGTERM into :class:`RunInterrupted` while entered (re-entrant; a no-op
    outside the main thread, where Python cannot install signal handlers).

    ``received`` is the first signal received since the outermost ``with``; ``count`` counts the
    signals received.
    """

    def __init__(self) -> None:
        self.received: Optional[int] = None
        self.count = 0
        self._noting = 0
        self._depth = 0
        self._previous: dict[int, Any] = {}
        self._handler = self._on_signal  # one bound method, to recognise it with ``is``

    def __enter__(self) -> "SignalWatch":
        if self._depth == 0 and threading.current_thread() is threading.main_thread():
            self.received = None
            for signum in WATCHED:
                self._previous[signum] = signal.getsignal(signum)
                signal.signal(signum, self._handler)
        self._depth += 1
        return self

    def __exit__(self, kind: Optional[type], error: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        self._depth -= 1
        if self._depth == 0:
            for signum, handler in self._previous.items():
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
            self._previous = {}

    def raise_if_received(self) -> None:
        """Raise RunInterrupted for a signal received but not acted on: a SIGTERM that Lightning
        noted when it had no step left to stop after (at the end of a validation or of ``fit``)."""
        if self.received is not None:
            raise RunInterrupted(self.received)

    @contextmanager
    def noting(self) -> Iterator[None]:
        """Within it, a signal is only noted (``received``, ``count``), never raised: the code
        inside looks at ``count`` at points where it can act on it."""
        self._noting += 1
        try:
            yield
        finally:
            self._noting -= 1

    def _on_signal(self, signum: int, frame: Optional[FrameType]) -> None:
        self.count += 1
        if self.received is None:
            self.received = signum
        if self._noting:
            return
        if signum == signal.SIGTERM and signal.getsignal(signal.SIGTERM) is not self._handler:
            # Lightning's handler is installed (fit or validate is running) and has called this one:
            # it stops after the current step and raises SIGTERMException.
            return
        raise RunInterrupted(signum)


SIGNALS = SignalWatch()


def interruption_signal(error: BaseException) -> Optional[int]:
    """The signal that ended a run with ``error``, or None when it was not an interruption."""
    if isinstance(error, RunInterrupted):
        return error.signum
    if isinstance(error, SIGTERMException):
        return signal.SIGTERM
    if isinstance(error, KeyboardInterrupt):
        return signal.SIGINT
    if isinstance(error, SystemExit) and SIGNALS.received is not None:
        return SIGNALS.received  # Lightning's sys.exit(1) after a KeyboardInterrupt
    return None
