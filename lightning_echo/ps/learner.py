"""A learner's loop on real processes: wait for a START, compute the gradient, deliver it.

Independent of Lightning: the caller gives ``compute_gradient(params_flat, version) ->
grad_flat``. An optional injected delay (a straggler model from
:mod:`lightning_echo.core.delays`) sets how long each computation takes in all: after computing,
the learner sleeps for the rest of the drawn time, so the server sees the drawn compute times
(when the real computation is shorter). While it sleeps it watches for the server: a newer
START cancels the work (it is dropped and the new one begins at once), a STOP ends the run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from lightning_echo.core.delays import ComputeTimeSource
from lightning_echo.ps.protocol import (
    Kind,
    Message,
    ParameterServerError,
    ProtocolError,
    StopReason,
)
from lightning_echo.ps.transport import (
    SERVER_RANK,
    Inbound,
    PeerLost,
    Transport,
    learner_index,
)
from lightning_echo.validation import non_negative_int

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
    stopped: bool = False  # ended by the server's STOP


def learner_delays(source: ComputeTimeSource, learner: int, seed: int = 0) -> Callable[[], float]:
    """Learner ``learner``'s injected compute times: ``source``'s draws for that learner (its
    slowdown included), from a stream of its own fixed by ``seed``."""
    non_negative_int("stale.seed", seed)
    times = source.seeded(seed * SEED_STRIDE + learner)
    return lambda: times.sample(learner)


class _Stop(Exception):
    """The server sent STOP: answer BYE and leave the loop."""

    def __init__(self, retired: bool) -> None:
        super().__init__("stop")
        self.retired = retired


def run_learner(
    transport: Transport,
    compute_gradient: ComputeGradient,
    injected_delay: Optional[Callable[[], float]] = None,
    server_timeout: Optional[float] = None,
) -> LearnerReport:
    """Serve the parameter server until it sends STOP; return what this learner did.

    ``params_flat`` given to ``compute_gradient`` is valid only during the call (its buffer is
    reused); the returned gradient is copied. ``server_timeout`` (default: twice the
    transport's timeout, so the server first settles its own timeouts with the other learners)
    is the longest this learner waits for the server. Raises :class:`ParameterServerError` when
    the server is gone, silent for too long, ends the run with an error, or drops this learner;
    if ``compute_gradient`` raises, the server is told and the error propagates.
    """
    learner = learner_index(transport.rank)
    report = LearnerReport(learner)
    limit = 2 * transport.timeout if server_timeout is None else float(server_timeout)
    out = transport.new_message()
    work: Optional[Inbound] = None
    try:
        while True:
            if work is None:
                work = _wait_for_work(transport, report, limit)
            start = _latest(transport, report, work)
            work = None
            began = time.monotonic()
            try:
                gradient = compute_gradient(start.payload, start.header.version)
                out.payload.copy_(gradient.detach().reshape(-1))
            except BaseException:
                _send_quietly(transport, out, Kind.ERROR, learner)
                raise
            finally:
                transport.release(start)
            computed = time.monotonic()
            report.compute_s += computed - began
            until = began + injected_delay() if injected_delay is not None else computed
            newer = _next_message(transport, learner, until)  # sleeps out the injected delay, watching
            report.injected_s += time.monotonic() - computed
            if newer is not None:  # a newer START cancels this work (STOP and ERROR raise)
                work = _accept(transport, report, newer)
                report.cancelled += 1
                continue
            _send(transport, out, Kind.PUSH, learner, start.header.version, start.header.ticket)
            report.pushed += 1
    except _Stop as stop:
        _send_quietly(transport, out, Kind.BYE, learner)
        if stop.retired:
            raise ParameterServerError(
                f"the parameter server dropped learner {learner} (rank {transport.rank}): it delivered "
                f"no gradient within ps.timeout={transport.timeout:g} s"
            ) from None
        return report
    finally:
        transport.close(wait=0.5)


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
        raise ParameterServerError(f"learner {learner} stops: {lost}") from None


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
        raise ParameterServerError(
            f"the parameter server (rank {SERVER_RANK}) ended the run with an error (see its log); "
            f"learner {report.learner} stops"
        )
    raise ProtocolError(f"the parameter server sent {header.kind.name}, which only learners send")


def _send(transport: Transport, out: Message, kind: Kind, learner: int, version: int, ticket: int) -> None:
    try:
        transport.send(SERVER_RANK, out, kind, learner, version=version, ticket=ticket)
    except PeerLost as lost:
        raise ParameterServerError(f"learner {learner} stops: {lost}") from None


def _send_quietly(transport: Transport, out: Message, kind: Kind, learner: int) -> None:
    """A goodbye or an error report: the server may already be gone."""
    try:
        transport.send(SERVER_RANK, out, kind, learner)
    except PeerLost:
        pass
