"""The parameter server's loop on real processes, driven by :class:`~lightning_echo.core.schedule.ServerPolicy`.

The server holds the authoritative flat parameters. It starts every learner at version 0, then
takes gradients as they arrive: the policy says whether each is accepted, when an update is due
and which learners start (or are cancelled) when. An update averages the accepted gradients in
arrival order and hands them to the caller, who changes :attr:`ParameterServer.params` in place
(a plain SGD step, or the user's optimizer); the server then sends the new parameters to the
learners the policy starts.

Cancellation on real processes: the server sends a cancelled learner its new START at once. A
learner still computing drops its work when that START arrives; a gradient that was already on
its way carries the ticket of an older START and is dropped on arrival (counted in
``cancelled_arrived``), with nothing sent back, since the learner finds the new START waiting.

Lost learners: a learner whose process ends is noticed at once (its channel closes); one that
delivers no gradient within ``timeout`` seconds of its START is declared unresponsive and sent
STOP. Variants that cancel all running work at each update (sync, k_sync, k_batch_sync) wait for
fresh gradients from their learners, so they stop with :class:`ParameterServerError`; the others
carry on with the remaining learners while enough are left for an update.

``stale.k=auto``: with an :class:`~lightning_echo.core.adaptive_k.AdaptiveK`, the server times
every gradient that arrives for its current START (from sending the START to receiving the
PUSH: the learner's compute, injected delay and the transfers), feeds the update's loss to the
rule when the update is complete, and sets the policy's K for the next update from it (no update
is due then: the policy's pending gradients were just applied). A lost learner is retired from
the rule too.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

from lightning_echo.core.adaptive_k import AdaptiveK
from lightning_echo.core.schedule import GradientRecord, ServerPolicy, VariantSpec
from lightning_echo.errors import ConfigError
from lightning_echo.stragglers.processes.protocol import (
    Kind,
    ParameterServerError,
    ProtocolError,
    StopReason,
)
from lightning_echo.stragglers.processes.transport import (
    Inbound,
    Joined,
    PeerLost,
    Refused,
    Transport,
    learner_index,
    learner_rank,
)
from lightning_echo.validation import positive_int

LOG = logging.getLogger("lightning_echo.stragglers.processes")
# The final messages a learner sends on its own, and what they mean for the server.
_ENDED = {Kind.ERROR: "its gradient computation raised an error (see that learner's log)",
          Kind.BYE: "it ended before the server stopped it"}

ApplyUpdate = Callable[[torch.Tensor, list[int], Optional[list[torch.Tensor]]], None]


@dataclass(frozen=True)
class PendingUpdate:
    """An update ready to apply: ``gradient`` is the mean of the accepted gradients (the server's
    buffer: read it, do not keep it), ``staleness`` one value per gradient, ``stale_params`` the
    flat parameters each gradient was computed at (only when the server keeps them), ``notes``
    the note each gradient's PUSH carried (what its learner logged)."""

    version: int
    gradient: torch.Tensor
    staleness: list[int]
    stale_params: Optional[list[torch.Tensor]]
    gradients: tuple[GradientRecord, ...]
    start_tickets: tuple[int, ...]
    cancelled: tuple[int, ...]
    notes: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class UpdateRecord:
    """One applied update: the new ``version``, the gradients it averaged (learner, read version,
    staleness, and the learner's START ticket each was computed for), the learners cancelled."""

    version: int
    learners: tuple[int, ...]
    read_versions: tuple[int, ...]
    staleness: tuple[int, ...]
    start_tickets: tuple[int, ...]
    cancelled: tuple[int, ...]
    time_s: float


@dataclass
class ServerReport:
    """What a run did, counted by the server."""

    variant: str
    learners: int
    updates: int = 0
    gradients_used: int = 0
    gradients_discarded: int = 0  # refused by the policy (rennala's stale ones, ringmaster's too old)
    computations_cancelled: int = 0  # running work the policy cancelled at updates
    cancelled_arrived: int = 0  # gradients of cancelled work that arrived anyway and were dropped
    unused_at_stop: int = 0  # gradients that arrived while the run was stopping
    staleness_counts: dict[int, int] = field(default_factory=dict)
    pushes_per_learner: list[int] = field(default_factory=list)
    used_per_learner: list[int] = field(default_factory=list)
    lost: dict[int, str] = field(default_factory=dict)  # learner -> why, for those lost now (a rejoin removes it)
    losses: int = 0  # learners lost, counting every loss of a learner that came back
    joins: int = 0  # learners that joined after the start (a restarted learner's process, or a late one)
    start_version: int = 0  # the version the server started at (a restarted server skips those its predecessor made after its checkpoint)
    events: list[dict] = field(default_factory=list)  # losses, joins and K changes in order: time_s, version, event, ...
    no_goodbye: list[int] = field(default_factory=list)  # learners that did not answer STOP
    # Per learner, over the gradients used: what each was computed on, as its PUSH said (the Lightning
    # strategy's learners say it, see .fresh; empty lists in the plain loop): gradients on a fresh batch,
    # on an echo, the fresh examples they brought, and the seconds the learner waited for its loader.
    fresh_gradients_per_learner: list[int] = field(default_factory=list)
    echoed_gradients_per_learner: list[int] = field(default_factory=list)
    fresh_samples_per_learner: list[int] = field(default_factory=list)
    data_wait_s_per_learner: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    bytes_sent: int = 0
    bytes_received: int = 0
    link_bytes_per_s: float = 0.0  # the raw link to the first learner, timed when it joined (0: not measured)

    @property
    def live(self) -> int:
        """Learners not lost now."""
        return self.learners - len(self.lost)

    @property
    def updates_per_s(self) -> float:
        """Updates per second of wall-clock time from the first START to the last update."""
        return self.updates / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def bytes_per_s(self) -> float:
        """Bytes the server sent and received per second of wall-clock time."""
        return (self.bytes_sent + self.bytes_received) / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def link_fraction(self) -> float:
        """:attr:`bytes_per_s` as a fraction of the raw link's (NaN when the link was not measured):
        near 1, the server's link, not its learners, limits the run."""
        return self.bytes_per_s / self.link_bytes_per_s if self.link_bytes_per_s > 0 else float("nan")

    @property
    def fresh_samples(self) -> int:
        """Fresh examples of the gradients used (0 where the learners do not say)."""
        return sum(self.fresh_samples_per_learner)

    @property
    def echoed_gradients(self) -> int:
        """Gradients used that were computed on an echoed batch."""
        return sum(self.echoed_gradients_per_learner)

    @property
    def mean_staleness(self) -> float:
        """Mean staleness of the gradients used."""
        used = sum(self.staleness_counts.values())
        return sum(s * n for s, n in self.staleness_counts.items()) / used if used else float("nan")


class ParameterServer:
    """Rank 0 of a parameter-server run.

    Args:
        transport: the server's channels (:func:`~lightning_echo.stragglers.processes.transport.connect` on rank 0).
        spec: the variant; ``spec.learners`` must equal the number of learner ranks.
        params: the initial flat parameters (copied into the server's buffer :attr:`params`).
        keep_stale_params: keep a copy of every version a learner still reads, so updates carry
            ``stale_params`` (the dutta step-size rule needs them; up to P copies).
        timeout: seconds a started learner may take to deliver its gradient before it counts as
            unresponsive, and to answer STOP.
        adaptive: chooses K before every update (``stale.k=auto``), fed with the arrivals' times
            and the losses :meth:`complete_update` is given.
        shrink_k: when learners are lost, K drops to the learners alive for the variants whose
            update needs K distinct learners (sync, k_sync, async, k_async), and grows back as they
            rejoin; off, sync, k_sync and k_batch_sync stop at the first lost learner and async,
            k_async when fewer than K are left.
        min_learners: the run stops when fewer learners than this are alive (and none joins
            within ``rejoin_wait``).
        start_wait: seconds :meth:`start` waits for every learner's first join (default
            ``timeout``); one that has not joined by then is lost until it joins.
        rejoin_wait: seconds the server waits for a learner to join when too few are left for the
            next update, before it stops (0: stop at once).

    Drive it with :meth:`run`, or step by step: :meth:`start`, then per update
    :meth:`next_update`, change :attr:`params`, :meth:`complete_update`; finally :meth:`stop`
    (or :meth:`abort` after an error).
    """

    def __init__(
        self,
        transport: Transport,
        spec: VariantSpec,
        params: torch.Tensor,
        *,
        keep_stale_params: bool = False,
        timeout: Optional[float] = None,
        adaptive: Optional[AdaptiveK] = None,
        shrink_k: bool = False,
        min_learners: int = 1,
        start_wait: Optional[float] = None,
        rejoin_wait: float = 0.0,
    ) -> None:
        slots = transport.learner_slots
        if slots is not None and slots != spec.learners:
            raise ConfigError("stale.learners", spec.learners, f"must equal the number of learner processes ({slots})")
        positive_int("ps.min_learners", min_learners)
        if min_learners > spec.learners:
            raise ConfigError("ps.min_learners", min_learners, f"must be at most the learners ({spec.learners})")
        if params.dim() != 1 or params.numel() != transport.numel or params.dtype != transport.dtype:
            raise ValueError(f"params must be a flat {transport.dtype} tensor of {transport.numel} elements")
        self.transport = transport
        self.spec = spec
        self.policy = ServerPolicy(spec, shrink_k=shrink_k)
        self.adaptive = adaptive
        self.timeout = transport.timeout if timeout is None else float(timeout)
        self.min_learners = min_learners
        self.start_wait = self.timeout if start_wait is None else float(start_wait)
        self.rejoin_wait = float(rejoin_wait)
        self._joined: dict[int, int] = {}  # learners that joined before start(): read version
        self._ended_early: dict[int, str] = {}  # learners that ended (ERROR, BYE) before start(): why
        self._started = False
        self._starved_since: Optional[float] = None
        self.keep_stale_params = keep_stale_params
        self._start_message = transport.new_message()
        self.params = self._start_message.payload  # START sends it without a copy
        self.params.copy_(params)
        # The first accepted gradient's receive buffer sums the update's others (no copy of it: at
        # 1e6+ parameters a memory pass is a sizeable share of a round trip); released after the update.
        self._held: Optional[Inbound] = None
        self._accepted_tickets: list[int] = []  # START tickets of the accepted gradients, in arrival order
        self._accepted_notes: list[bytes] = []  # and the notes their PUSHes carried
        self._tickets = [0] * spec.learners
        self._started_at = [0.0] * spec.learners
        self._snapshots: dict[int, torch.Tensor] = {}
        self._spare: list[torch.Tensor] = []
        self._pending_update: Optional[PendingUpdate] = None
        self._t0 = 0.0
        self._closed = False
        self.report = ServerReport(spec.name, spec.learners, pushes_per_learner=[0] * spec.learners,
                                   used_per_learner=[0] * spec.learners)

    @property
    def version(self) -> int:
        """The version of :attr:`params` (updates applied so far)."""
        return self.policy.version

    # -- the loop ------------------------------------------------------------------------------
    def run(
        self,
        apply: ApplyUpdate,
        max_updates: Optional[int] = None,
        should_stop: Optional[Callable[[], bool]] = None,
        on_update: Optional[Callable[[UpdateRecord], None]] = None,
        version: int = 0,
    ) -> ServerReport:
        """Train until ``max_updates`` updates or until ``should_stop()`` (checked before each
        update) is true; ``apply(gradient, staleness, stale_params)`` changes :attr:`params` in
        place. ``version``: see :meth:`start`. Stops every learner before returning; on an error, sends ERROR to every learner
        still there and re-raises."""
        if max_updates is None and should_stop is None:
            raise ConfigError("max_updates", None, "give max_updates or should_stop, or the run never ends")
        if max_updates is not None:
            positive_int("max_updates", max_updates)
        try:
            self.start(version)
            while (max_updates is None or self.report.updates < max_updates) and not (should_stop and should_stop()):
                update = self.next_update()
                apply(update.gradient, update.staleness, update.stale_params)
                record = self.complete_update()
                if on_update is not None:
                    on_update(record)
        except BaseException as error:
            self.abort(error)
            raise
        return self.stop()

    def start(self, version: int = 0) -> None:
        """Wait up to ``start_wait`` for every learner to join, then send each its first START:
        :attr:`params` at ``version`` (0, or the version a resumed or restarted server continues
        from). A learner not there by then is lost until it joins. Raises ConfigError when a
        learner's parameters differ from the server's."""
        self._t0 = time.monotonic()
        self._wait_for_first_joins()
        self._started = True
        newest_read = max(self._joined.values(), default=-1)
        if newest_read >= version:  # learners of a server that died after its checkpoint: never reuse a version
            LOG.warning("parameter server: starts at version %d, after the newest a learner read (%d); versions "
                        "%d..%d of the previous server were lost with it", newest_read + 1, newest_read, version + 1, newest_read)
            self.report.events.append({"time_s": 0.0, "version": newest_read + 1, "event": "restarted",
                                       "checkpoint_version": version, "skipped_versions": newest_read - version + 1})
            version = newest_read + 1
        self.report.start_version = version
        self.policy.initial_starts(version)
        for learner in range(self.spec.learners):
            if learner not in self._joined:
                self._lose(learner, self._ended_early.get(learner, f"it did not join within {self.start_wait:g} s of the start"))
        self._adapt_k()
        for learner in sorted(self.policy.running()):
            self._start(learner)

    def _wait_for_first_joins(self) -> None:
        """Until every learner joined, or ended itself (its loader or step raised while it waited
        for its first START), or ``start_wait`` ran out."""
        deadline = self._t0 + self.start_wait
        while len(self._joined) + len(self._ended_early) < self.spec.learners:
            try:
                event = self.transport.recv_any(timeout=max(0.0, deadline - time.monotonic()))
            except PeerLost as lost:  # it joined and died before the start: a restarted process may come
                self._joined.pop(learner_index(lost.rank), None)
                continue
            if event is None:
                return
            if isinstance(event, Joined):
                self._joined[learner_index(event.src)] = event.read_version
                self._ended_early.pop(learner_index(event.src), None)
            elif isinstance(event, Refused):
                self._refused(event)
            else:
                self._ended_before_start(event)

    def _ended_before_start(self, inbound: Inbound) -> None:
        learner, kind = learner_index(inbound.src), inbound.header.kind
        self.transport.release(inbound)
        if kind not in (Kind.ERROR, Kind.BYE):
            raise ProtocolError(f"learner {learner} sent {kind.name} before its first START")
        self._joined.pop(learner, None)
        self._ended_early[learner] = _ENDED[kind]
        self._tell_to_stop(learner)

    def next_update(self) -> PendingUpdate:
        """Receive gradients until the policy makes an update due; return it (not yet applied)."""
        if self._pending_update is not None:
            raise RuntimeError("complete_update() must follow next_update()")
        while not self.policy.update_due:
            self._check_progress_possible()
            try:
                event = self.transport.recv_any(timeout=self._time_to_next_deadline())
            except PeerLost as lost:
                self._lose(learner_index(lost.rank), lost.reason)
                continue
            if event is None:
                self._expire_overdue()
            elif isinstance(event, Joined):
                self._on_join(learner_index(event.src))
            elif isinstance(event, Refused):
                self._refused(event)
            else:
                self._handle(event)
        return self._prepare_update()

    def complete_update(self, loss: Optional[float] = None) -> UpdateRecord:
        """After :attr:`params` took the update: start the learners the policy starts now;
        ``loss`` is the update's mean training loss, for the adaptive K (None: not known)."""
        update = self._pending_update
        if update is None:
            raise RuntimeError("next_update() must come first")
        self._pending_update = None
        self._release_held()
        report = self.report
        report.updates += 1
        report.gradients_used += len(update.gradients)
        report.computations_cancelled += len(update.cancelled)
        for gradient in update.gradients:
            report.staleness_counts[gradient.staleness] = report.staleness_counts.get(gradient.staleness, 0) + 1
            report.used_per_learner[gradient.learner] += 1
        report.wall_s = time.monotonic() - self._t0
        self._count_bytes()
        if self.adaptive is not None:
            self.adaptive.observe_update(loss)
            self._adapt_k()
        self._release_unread_snapshots()
        for learner in self.policy.start_ready():
            self._start(learner)
        return UpdateRecord(
            version=update.version,
            learners=tuple(g.learner for g in update.gradients),
            read_versions=tuple(g.read_version for g in update.gradients),
            staleness=tuple(update.staleness),
            start_tickets=update.start_tickets,
            cancelled=update.cancelled,
            time_s=report.wall_s,
        )

    # -- joins ---------------------------------------------------------------------------------
    def _on_join(self, learner: int) -> None:
        """A learner's new process joined: a lost learner comes back, a live one's earlier
        process is replaced (its running work dropped); either starts at the current version."""
        report = self.report
        if learner not in report.lost:  # its earlier process still held the slot (hung, or a duplicate)
            self.policy.retire(learner)
            self._event("replaced", learner, reason="a new process joined in its place")
        else:
            del report.lost[learner]
        report.joins += 1
        k_before = self.policy.k
        starts = self.policy.rejoin(learner)
        LOG.warning("parameter server: learner %d (rank %d) joined at version %d; %d of %d learners alive",
                    learner, learner_rank(learner), self.policy.version, report.live, self.spec.learners)
        self._event("joined", learner)
        self._k_changed(k_before)
        if self.adaptive is not None:
            self.adaptive.rejoin(learner)
        self._starved_since = None
        for other in starts:
            self._start(other)

    def _refused(self, refused: Refused) -> None:
        if refused.mismatch and not self._started:
            raise ConfigError("parameters", f"{self.transport.numel} x {self.transport.dtype} on the server", refused.reason)
        LOG.warning("parameter server: refused a learner that asked to join as %d: %s", refused.learner, refused.reason)
        self._event("refused", refused.learner, reason=refused.reason)

    def _event(self, event: str, learner: Optional[int] = None, **detail: object) -> None:
        """Append ``event`` (with ``learner``, when it concerns one) to the report's events."""
        about = {} if learner is None else {"learner": learner}
        self.report.events.append({"time_s": round(time.monotonic() - self._t0, 6) if self._t0 else 0.0,
                                   "version": self.policy.version, "event": event, **about,
                                   "live": self.report.live, **detail})

    def _k_changed(self, k_before: int) -> None:
        if self.policy.k != k_before:
            LOG.warning("parameter server: %s now averages K=%d gradients per update (was %d): %d learners alive",
                        self.spec.name, self.policy.k, k_before, self.report.live)
            self._event("k", k=self.policy.k)

    # -- arrivals ------------------------------------------------------------------------------
    def _handle(self, inbound: Inbound) -> None:
        learner, header = learner_index(inbound.src), inbound.header
        try:
            if learner in self.report.lost:
                return  # a message it sent before it was dropped
            if header.kind == Kind.PUSH:
                self._arrival(learner, inbound)
            elif header.kind in _ENDED:  # its final message; told in return, so its receiver thread ends
                self._lose(learner, _ENDED[header.kind], tell_it=True)
            else:
                raise ProtocolError(f"learner {learner} (rank {inbound.src}) sent {header.kind.name}, which only the server sends")
        finally:
            if inbound is not self._held:
                self.transport.release(inbound)

    def _arrival(self, learner: int, inbound: Inbound) -> None:
        header = inbound.header
        self.report.pushes_per_learner[learner] += 1
        if header.ticket != self._tickets[learner]:
            self.report.cancelled_arrived += 1  # its work was cancelled; the new START is already queued there
            return
        if learner not in self.policy.running():
            raise ProtocolError(f"learner {learner} pushed a second gradient for its START {header.ticket}")
        decision = self.policy.on_arrival(learner)
        if self.adaptive is not None:
            self.adaptive.observe_time(learner, max(0.0, time.monotonic() - self._started_at[learner]))
        if decision.read_version != header.version:
            raise ProtocolError(f"learner {learner} pushed a gradient for version {header.version}, "
                                f"but was started at version {decision.read_version}")
        if decision.accepted:
            if self._held is None:
                self._held = inbound
            else:
                self._held.payload.add_(inbound.payload)
            self._accepted_tickets.append(header.ticket)
            self._accepted_notes.append(inbound.message.note())
        else:
            self.report.gradients_discarded += 1
        for other in decision.starts:
            self._start(other)

    def _prepare_update(self) -> PendingUpdate:
        previous = self.policy.version
        decision = self.policy.apply_update(defer_start=True)
        count = len(decision.gradients)
        assert self._held is not None
        gradient = self._held.payload if count == 1 else self._held.payload.div_(count)
        tickets, self._accepted_tickets = tuple(self._accepted_tickets), []
        notes, self._accepted_notes = tuple(self._accepted_notes), []
        stale = None
        if self.keep_stale_params:
            stale = [self.params if g.read_version == previous else self._snapshots[g.read_version] for g in decision.gradients]
            if previous in self._read_versions():
                self._snapshot(previous)  # a learner still computes at the version this update overwrites
        update = PendingUpdate(decision.version, gradient, [g.staleness for g in decision.gradients], stale,
                               decision.gradients, tickets, decision.cancelled, notes)
        self._pending_update = update
        return update

    def _adapt_k(self) -> None:
        """The policy takes the rule's K for the next update (no update is due when this runs)."""
        if self.adaptive is not None and self.adaptive.k != self.policy.k:
            self.policy.set_k(self.adaptive.k)

    # -- starting learners ---------------------------------------------------------------------
    def _start(self, learner: int) -> None:
        self._tickets[learner] += 1
        self._started_at[learner] = time.monotonic()
        try:
            self.transport.send(learner_rank(learner), self._start_message, Kind.START, learner,
                                version=self.policy.version, ticket=self._tickets[learner])
        except PeerLost as lost:
            self._lose(learner, lost.reason)

    # -- stale parameters ----------------------------------------------------------------------
    def _read_versions(self) -> set[int]:
        return set(self.policy.running().values())

    def _snapshot(self, version: int) -> None:
        copy = self._spare.pop() if self._spare else torch.empty_like(self.params)
        self._snapshots[version] = copy.copy_(self.params)

    def _release_unread_snapshots(self) -> None:
        read = self._read_versions()
        for version in [v for v in self._snapshots if v not in read]:
            self._spare.append(self._snapshots.pop(version))

    # -- lost learners -------------------------------------------------------------------------
    def _time_to_next_deadline(self) -> float:
        running = self.policy.running()
        deadline = time.monotonic() + self.timeout
        if running:
            deadline = min(deadline, min(self._started_at[learner] for learner in running) + self.timeout)
        if self._starved_since is not None:
            deadline = min(deadline, self._starved_since + self.rejoin_wait)
        return max(0.0, deadline - time.monotonic())

    def _expire_overdue(self) -> None:
        now = time.monotonic()
        for learner in sorted(self.policy.running()):
            if now - self._started_at[learner] >= self.timeout:
                # Named to the launcher first, so that it can end the process as early as possible.
                self.transport.report_unresponsive(learner_rank(learner))
                self._lose(learner, f"it delivered no gradient within ps.timeout={self.timeout:g} s of its start",
                           tell_it=True)

    def _lose(self, learner: int, reason: str, tell_it: bool = False) -> None:
        if learner in self.report.lost:
            return
        self.report.lost[learner] = reason
        self.report.losses += 1
        self._event("lost", learner, reason=reason)
        LOG.warning("parameter server: learner %d (rank %d) is lost: %s", learner, learner_rank(learner), reason)
        if tell_it:
            self._tell_to_stop(learner)
        if self.policy.rules.at_update == "cancel_all" and not self.policy.shrink_k and self._started:
            raise ParameterServerError(
                f"learner {learner} (rank {learner_rank(learner)}) is lost: {reason}; "
                f"{self.spec.name} needs a fresh gradient from its learners at every update and cannot go on "
                f"(ps.shrink_k=true carries on with the learners left)"
            )
        k_before = self.policy.k
        self.policy.retire(learner)
        self._k_changed(k_before)
        if self.adaptive is not None:
            self.adaptive.retire(learner)
            if not self.policy.update_due:
                self._adapt_k()
        self._check_progress_possible()

    def _tell_to_stop(self, learner: int) -> None:
        """A process that is still alive: tell it to end (the server sends it nothing more)."""
        try:
            self.transport.send(learner_rank(learner), self._start_message, Kind.STOP, learner,
                                version=self.policy.version, ticket=int(StopReason.RETIRED))
        except PeerLost:
            pass

    def _check_progress_possible(self) -> None:
        """Raise when too few learners are left for the next update (or fewer than
        ``min_learners``) and none joined within ``rejoin_wait``."""
        if not self._started:
            return
        policy = self.policy
        # Without restart at once, each running learner delivers at most one gradient before the update.
        needed = 1 if policy.rules.restart_at_once else policy.rules.k - len(policy.pending())
        live = self.report.live
        if policy.update_due or (len(policy.running()) >= needed and live >= self.min_learners):
            self._starved_since = None
            return
        now = time.monotonic()
        if self._starved_since is None:
            self._starved_since = now
            if self.rejoin_wait > 0:
                LOG.warning("parameter server: %d of %d learners alive, too few to go on; waiting up to %g s for one to join",
                            live, self.spec.learners, self.rejoin_wait)
        if now - self._starved_since < self.rejoin_wait:
            return
        lost = "; ".join(f"learner {l}: {why}" for l, why in sorted(self.report.lost.items()))
        too_few = (f"fewer than ps.min_learners={self.min_learners}" if live < self.min_learners
                   else f"too few for the next {self.spec.name} update (k={policy.k})")
        waited = f" and none joined within {self.rejoin_wait:g} s" if self.rejoin_wait > 0 else ""
        raise ParameterServerError(f"{live} of {self.spec.learners} learners are left, {too_few}{waited}; lost {lost}")

    # -- the end -------------------------------------------------------------------------------
    def stop(self) -> ServerReport:
        """Send STOP to every learner still there, wait up to ``timeout`` for their goodbyes."""
        report = self.report
        report.wall_s = time.monotonic() - self._t0 if self._t0 else 0.0
        self._end_every_learner(Kind.STOP)
        if report.no_goodbye:
            LOG.warning("parameter server: learners %s did not answer STOP within %g s", report.no_goodbye, self.timeout)
        self._close()
        return report

    def abort(self, error: BaseException) -> None:
        """Tell every learner still there that the run failed, wait up to ``timeout`` for their
        goodbyes (best effort), then close."""
        LOG.error("parameter server: the run failed: %s", error)
        self._end_every_learner(Kind.ERROR)
        self._close()

    def _end_every_learner(self, kind: Kind) -> None:
        """Send ``kind`` (STOP or ERROR) to every learner still there and wait up to ``timeout``
        for their final messages, so that every receiver thread ends; ``report.no_goodbye``
        lists those that did not answer."""
        report = self.report
        waiting = set()
        for learner in range(self.spec.learners):
            if learner in report.lost:
                continue
            try:
                self.transport.send(learner_rank(learner), self._start_message, kind, learner,
                                    version=self.policy.version, ticket=int(StopReason.DONE))
                waiting.add(learner)
            except PeerLost as lost:
                report.lost[learner] = lost.reason
        deadline = time.monotonic() + self.timeout
        while waiting:
            try:
                inbound = self.transport.recv_any(timeout=max(0.0, deadline - time.monotonic()))
            except PeerLost as lost:
                waiting.discard(learner_index(lost.rank))
                continue
            if inbound is None:
                break
            if isinstance(inbound, Joined):  # joined as the run ends: told at once
                learner = learner_index(inbound.src)
                try:
                    self.transport.send(inbound.src, self._start_message, kind, learner,
                                        version=self.policy.version, ticket=int(StopReason.DONE))
                    waiting.add(learner)
                    report.lost.pop(learner, None)
                except PeerLost:
                    pass
                continue
            if isinstance(inbound, Refused):
                continue
            learner, header = learner_index(inbound.src), inbound.header
            arrived = header.kind
            self.transport.release(inbound)
            if arrived == Kind.PUSH and learner in waiting:
                report.pushes_per_learner[learner] += 1
                if header.ticket != self._tickets[learner]:
                    report.cancelled_arrived += 1
                else:
                    report.unused_at_stop += 1
            elif arrived in (Kind.BYE, Kind.ERROR):
                waiting.discard(learner)
        report.no_goodbye = sorted(waiting)

    def _release_held(self) -> None:
        if self._held is not None:
            self.transport.release(self._held)
            self._held = None

    def _count_bytes(self) -> None:
        report, transport = self.report, self.transport
        report.bytes_sent, report.bytes_received = transport.bytes_sent, transport.bytes_received
        if transport.link is not None:
            report.link_bytes_per_s = transport.link.bytes_per_s

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            self._release_held()
            self._count_bytes()
            self.transport.close(wait=1.0)


def plain_sgd(params: torch.Tensor, lr: float) -> ApplyUpdate:
    """An ``apply`` that takes a plain SGD step on the server's flat ``params``."""

    def apply(gradient: torch.Tensor, staleness: Sequence[int], stale_params: Optional[list[torch.Tensor]]) -> None:
        params.add_(gradient, alpha=-lr)

    return apply
