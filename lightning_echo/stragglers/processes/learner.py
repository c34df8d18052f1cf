"""A learner's loop on real processes: wait for a START, compute the gradient, deliver it.

Independent of Lightning: :class:`LearnerSession` is the protocol one gradient at a time (a
Lightning strategy takes one training step per gradient); :func:`run_learner` loops over it with
``compute_gradient(params_flat, version) -> grad_flat``. An optional injected delay (a straggler model from
:mod:`lightning_echo.core.delays`) sets how long each computation takes in all: after computing,
the learner sleeps for the rest of the drawn time, so the server sees the drawn compute times
(when the real computation is shorter). While it sleeps it watches for the server: a newer
START cancels the work (it is dropped and the new one begins at once), a STOP ends the run.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from lightning_echo.core.delays import ComputeTimeSource
from lightning_echo.stragglers.processes.protocol import (
    Kind,
    Message,
    ParameterServerError,
    ProtocolError,
    StopReason,
)
from lightning_echo.stragglers.processes.transport import (
    SERVER_RANK,
    Inbound,
    PeerLost,
    Transport,
    join,
    learner_index,
)
from lightning_echo.validation import non_negative_int

LOG = logging.getLogger("lightning_echo.stragglers.processes")
ComputeGradient = Callable[[torch.Tensor, int], torch.Tensor]
SEED_STRIDE = 100_003  # learner i draws with seed * SEED_STRIDE + i: independent streams per learner


@dataclass
class LearnerReport:
    """What one learner did."""

    learner: int
    starts: int = 0  # STARTs received
    pushed: int = 0  # gradients delivered
    cancelled: int = 0  # computations dropped because a newer START arrived
    compute_s: float = 0.0  # time in compute_gradient
    injected_s: float = 0.0  # time spent in the injected delay
    data_wait_s: float = 0.0  # time a Lightning learner waited for its batches (set by the strategy; 0 in run_learner)
    stopped: bool = False  # ended by the server's STOP
    server_failed: bool = False  # ended by the server's ERROR (the run failed there)
    rejoins: int = 0  # times it joined the server again after losing it (a restarted server)


def learner_delays(source: ComputeTimeSource, learner: int, seed: int = 0) -> Callable[[], float]:
    """Learner ``learner``'s injected compute times: ``source``'s draws for that learner (its
    slowdown included), from a stream of its own fixed by ``seed``."""
    non_negative_int("stale.seed", seed)
    times = source.seeded(seed * SEED_STRIDE + learner)
    return lambda: times.sample(learner)


class _ServerLost(ParameterServerError):
    """The server's channel failed (its process ended, or it took no message in time)."""


class _Stop(Exception):
    """The server sent STOP: answer BYE and leave the loop."""

    def __init__(self, retired: bool) -> None:
        super().__init__("stop")
        self.retired = retired


@dataclass(frozen=True)
class Work:
    """A computation the server asked for: the gradient at ``params`` (version ``version``).
    ``params`` is a view into a receive buffer, valid until :meth:`LearnerSession.deliver` or
    :meth:`LearnerSession.fail`."""

    version: int
    ticket: int
    params: torch.Tensor
    began: float  # time.monotonic() when the learner took it


class LearnerSession:
    """One learner's side of the protocol, one gradient at a time: :meth:`next_work`, compute,
    :meth:`deliver`; :meth:`close` at the end. :func:`run_learner` is this loop; a Lightning
    strategy drives it one training step per gradient.

    ``injected_delay()`` draws how long each computation takes in all, counted from
    :meth:`next_work`; :meth:`deliver` sleeps out the rest while watching for the server (a newer
    START cancels the work, a STOP ends the session). ``server_timeout`` (default: twice the
    transport's timeout, so the server first settles its own timeouts with the other learners) is
    the longest the learner waits for the server. Raises :class:`ParameterServerError` when the
    server is gone, silent for too long, ends the run with an error, or drops this learner.

    ``rejoin_wait`` > 0: when the server's process ends, the learner joins the server at the
    same address again (a restarted server), waiting up to that many seconds for it; the work
    in hand is dropped and the learner takes the new server's first START.
    """

    def __init__(
        self,
        transport: Transport,
        injected_delay: Optional[Callable[[], float]] = None,
        server_timeout: Optional[float] = None,
        rejoin_wait: float = 0.0,
    ) -> None:
        self.transport = transport
        self.injected_delay = injected_delay
        self.limit = 2 * transport.timeout if server_timeout is None else float(server_timeout)
        self.rejoin_wait = float(rejoin_wait)
        self.last_version = -1  # the newest version this learner read
        self.report = LearnerReport(learner_index(transport.rank))
        self._out = transport.new_message()
        self._held: Optional[Inbound] = None  # a START that cancelled the last work, to be taken next
        self._work: Optional[Inbound] = None
        self._began = 0.0
        self._ended = False  # this learner sent its final message (BYE or ERROR)
        self._closed = False

    @property
    def learner(self) -> int:
        """This learner's index."""
        return self.report.learner

    @property
    def stopped(self) -> bool:
        """True once the server has ended the session with STOP."""
        return self.report.stopped

    @property
    def gradient_buffer(self) -> torch.Tensor:
        """The outgoing flat gradient: write into it, then :meth:`deliver` without an argument."""
        return self._out.payload

    def next_work(self) -> Optional[Work]:
        """Wait for the next START (the newest, if several are queued); ``None`` once the server
        sent STOP (after answering BYE)."""
        if self.report.stopped:
            return None
        if self._work is not None:
            raise RuntimeError("deliver() or fail() must follow next_work()")
        while True:
            try:
                held, self._held = self._held, None
                inbound = held if held is not None else _wait_for_work(self.transport, self.report, self.limit)
                self._work = _latest(self.transport, self.report, inbound)
                break
            except _Stop as stop:
                self._goodbye(stop)
                return None
            except _ServerLost as lost:
                self._rejoin_or_raise(lost)
            except ParameterServerError:
                self._end_after()
                raise
        self._began = time.monotonic()
        header = self._work.header
        self.last_version = max(self.last_version, header.version)
        return Work(header.version, header.ticket, self._work.payload, self._began)

    def deliver(self, gradient: Optional[torch.Tensor] = None, note: bytes = b"") -> bool:
        """Push the gradient of the current work (``gradient``, or what the caller wrote into
        :attr:`gradient_buffer`), with ``note`` (what the learner logged, see
        :mod:`.logged`), once the injected delay has passed. Returns False when the work
        was dropped instead: a newer START cancelled it (taken by the next :meth:`next_work`) or
        the server sent STOP."""
        work = self._work
        if work is None:
            raise RuntimeError("next_work() must come first")
        header = work.header
        try:
            if gradient is not None:
                self._out.payload.copy_(gradient.detach().reshape(-1))
        except BaseException:
            self.fail()
            raise
        self._release_work()
        computed = time.monotonic()
        self.report.compute_s += computed - self._began
        until = self._began + self.injected_delay() if self.injected_delay is not None else computed
        try:
            newer = _next_message(self.transport, self.learner, until)  # sleeps out the injected delay, watching
            self.report.injected_s += time.monotonic() - computed
            if newer is not None:  # a newer START cancels this work (STOP and ERROR raise)
                self._held = _accept(self.transport, self.report, newer)
                self.report.cancelled += 1
                return False
            _send(self.transport, self._out, Kind.PUSH, self.learner, header.version, header.ticket, note)
        except _Stop as stop:
            self._goodbye(stop)
            return False
        except _ServerLost as lost:
            self._rejoin_or_raise(lost)
            return False
        except ParameterServerError:
            self._end_after()
            raise
        self.report.pushed += 1
        return True

    def fail(self) -> None:
        """The computation failed, or the learner leaves: tell the server (ERROR, once; nothing is
        sent after this learner's final message)."""
        self._release_work()
        if not self._ended:
            self._ended = True
            _send_quietly(self.transport, self._out, Kind.ERROR, self.learner)

    def leave(self) -> None:
        """The learner ends before the server's STOP: say BYE (once; nothing after a final message)."""
        self._release_work()
        if not self._ended:
            self._ended = True
            _send_quietly(self.transport, self._out, Kind.BYE, self.learner)

    def close(self, wait: Optional[float] = None) -> None:
        """Release the buffers and wait for the receiver thread: it ends with the server's final
        message (STOP or ERROR; the server sends one in answer to this learner's own), at most
        ``wait`` seconds (default: the transport's timeout; see :meth:`Transport.close`)."""
        if self._closed:
            return
        self._closed = True
        self._release_work()
        if self._held is not None:
            self.transport.release(self._held)
            self._held = None
        self.transport.close(wait=self.transport.timeout if wait is None else wait)

    def _rejoin_or_raise(self, lost: _ServerLost) -> None:
        """The server is gone: join it again at its address (a restarted server), or raise."""
        address = self.transport.address
        if self.rejoin_wait <= 0 or address is None:
            self._end_after()
            raise ParameterServerError(str(lost)) from None
        LOG.warning("learner %d lost the parameter server (%s); joining it again at %s (waiting up to %g s)",
                    self.learner, lost, address, self.rejoin_wait)
        old = self.transport
        if self._held is not None:
            old.release(self._held)
            self._held = None
        old.close(wait=0.0)
        try:
            self.transport = join(address, self.learner, old.numel, old.dtype, old.timeout,
                                  wait=self.rejoin_wait, read_version=self.last_version)
        except ParameterServerError as error:
            self._ended = True
            raise ParameterServerError(f"learner {self.learner} lost the parameter server and could not join it "
                                       f"again: {error}") from None
        self.report.rejoins += 1

    def _end_after(self) -> None:
        """The server is gone, silent, or ended the run. One that ended it with ERROR still
        listens: say BYE, so that its receiver thread for this learner ends."""
        if self.report.server_failed and not self._ended:
            _send_quietly(self.transport, self._out, Kind.BYE, self.learner)
        self._ended = True

    def _release_work(self) -> None:
        if self._work is not None:
            self.transport.release(self._work)
            self._work = None

    def _goodbye(self, stop: _Stop) -> None:
        if not self._ended:
            self._ended = True
            _send_quietly(self.transport, self._out, Kind.BYE, self.learner)
        if stop.retired:
            raise ParameterServerError(
                f"the parameter server dropped learner {self.learner} (rank {self.transport.rank}): it delivered "
                f"no gradient within ps.timeout={self.transport.timeout:g} s"
            ) from None


def run_learner(
    transport: Transport,
    compute_gradient: ComputeGradient,
    injected_delay: Optional[Callable[[], float]] = None,
    server_timeout: Optional[float] = None,
    rejoin_wait: float = 0.0,
) -> LearnerReport:
    """Serve the parameter server until it sends STOP; return what this learner did.

    ``params_flat`` given to ``compute_gradient`` is valid only during the call (its buffer is
    reused); the returned gradient is copied. ``server_timeout``, ``rejoin_wait``: see :class:`LearnerSession`.
    Raises :class:`ParameterServerError` when the server is gone, silent for too long, ends the
    run with an error, or drops this learner; if ``compute_gradient`` raises, the server is told
    and the error propagates.
    """
    session = LearnerSession(transport, injected_delay, server_timeout, rejoin_wait)
    try:
        while (work := session.next_work()) is not None:
            try:
                gradient = compute_gradient(work.params, work.version)
            except BaseException:
                session.fail()
                raise
            session.deliver(gradient)
        return session.report
    finally:
        session.close()


def _wait_for_work(transport: Transport, report: LearnerReport, limit: float) -> Inbound:
    inbound = _next_message(transport, report.learner, time.monotonic() + limit)
    if inbound is None:
        raise ParameterServerError(
            f"learner {report.learner} (rank {transport.rank}) heard nothing from the parameter server "
            f"(rank {SERVER_RANK}) for {limit:g} s while waiting for work"
        )
    return _accept(transport, report, inbound)


def _latest(transport: Transport, report: LearnerReport, work: Inbound) -> Inbound:
    """``work``, or the newest START already queued behind it (several cancellations in a row)."""
    while True:
        newer = _next_message(transport, report.learner, 0.0)
        if newer is None:
            return work
        transport.release(work)
        work = _accept(transport, report, newer)
        report.cancelled += 1


def _next_message(transport: Transport, learner: int, until: float) -> Optional[Inbound]:
    """The server's next message if one arrives before ``until`` (a ``time.monotonic()`` value)."""
    try:
        return transport.recv_any(timeout=max(0.0, until - time.monotonic()))
    except PeerLost as lost:
        raise _ServerLost(f"learner {learner} stops: {lost}") from None


def _accept(transport: Transport, report: LearnerReport, inbound: Inbound) -> Inbound:
    """``inbound`` if it is a START; STOP and ERROR end the loop."""
    header = inbound.header
    if header.kind == Kind.START:
        report.starts += 1
        return inbound
    transport.release(inbound)
    if header.kind == Kind.STOP:
        report.stopped = True
        raise _Stop(retired=header.ticket == StopReason.RETIRED)
    if header.kind == Kind.ERROR:
        report.server_failed = True
        raise ParameterServerError(
            f"the parameter server (rank {SERVER_RANK}) ended the run with an error (see its log); "
            f"learner {report.learner} stops"
        )
    raise ProtocolError(f"the parameter server sent {header.kind.name}, which only learners send")


def _send(transport: Transport, out: Message, kind: Kind, learner: int, version: int, ticket: int,
          note: bytes = b"") -> None:
    try:
        transport.send(SERVER_RANK, out, kind, learner, version=version, ticket=ticket, note=note)
    except PeerLost as lost:
        raise _ServerLost(f"learner {learner} stops: {lost}") from None


def _send_quietly(transport: Transport, out: Message, kind: Kind, learner: int) -> None:
    """A goodbye or an error report: the server may already be gone."""
    try:
        transport.send(SERVER_RANK, out, kind, learner)
    except PeerLost:
        pass
