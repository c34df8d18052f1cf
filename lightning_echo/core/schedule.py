"""Which gradients a parameter server (PS) applies, and when, under random straggler delays.

Dutta et al. (2018) Sec. 2.3 (K-sync, K-batch-sync, K-async, K-batch-async SGD), Rennala SGD
(Tyurin and Richtarik 2023) and Ringmaster ASGD (Maranjyan, Tyurin and Richtarik 2025) are
configurations of one :class:`ServerPolicy`: how many gradients an update averages (K), whether
a learner that pushed restarts at once or waits for the update, which gradients are accepted
(any, only fresh ones, staleness below a threshold) and what happens to running work at an
update (kept, all cancelled, stale ones stopped). The policy knows no clock: a real parameter
server drives it with real arrivals, :class:`ScheduleSimulation` with seeded compute times on a
virtual clock.

Versions: the PS starts at version 0 and each update adds 1. A learner reads the current
version when it starts a computation; a gradient's staleness is the PS version when it is used
(or discarded) minus the version it was computed at.
"""

from __future__ import annotations

import heapq
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal, Optional, get_args

from lightning_echo.core.delays import ComputeTimeSource
from lightning_echo.core.learner_data import LearnerDataStreams
from lightning_echo.errors import ConfigError
from lightning_echo.validation import one_of, positive_int

Variant = Literal["sync", "k_sync", "k_batch_sync", "async", "k_async", "k_batch_async", "rennala", "ringmaster"]
VARIANTS: tuple[Variant, ...] = get_args(Variant)
# Variants whose K may exceed the number of learners (a learner contributes several mini-batches).
BATCH_VARIANTS: tuple[Variant, ...] = ("k_batch_sync", "k_batch_async", "rennala")
# Variants whose learners keep computing across updates, so a gradient may be stale.
STALE_VARIANTS: tuple[Variant, ...] = ("async", "k_async", "k_batch_async", "ringmaster")


# -- the variant -----------------------------------------------------------------------------
@dataclass(frozen=True)
class VariantSpec:
    """One SGD variant: ``k`` gradients per update; ``max_delay`` (R) and ``stop_stale`` are
    Ringmaster's (``None``: no threshold). Build it with :func:`variant_spec`, which fills in K
    for sync / async / ringmaster."""

    name: Variant
    learners: int
    k: int
    max_delay: Optional[int] = None
    stop_stale: bool = False

    def __post_init__(self) -> None:
        one_of("algorithm", self.name, VARIANTS)
        positive_int("stale.learners", self.learners)
        _check_k(self.name, self.learners, self.k)
        if self.name != "ringmaster":
            if self.max_delay is not None:
                unused = f"is only used by ringmaster, not {self.name}: leave it unset"
                raise ConfigError("stale.max_delay", self.max_delay, unused)
            if self.stop_stale:
                unused = f"is only used by ringmaster, not {self.name}: leave it false"
                raise ConfigError("stale.stop_stale", self.stop_stale, unused)
        elif self.max_delay is not None:
            positive_int("stale.max_delay", self.max_delay)
        if not isinstance(self.stop_stale, bool):
            raise ConfigError("stale.stop_stale", self.stop_stale, "must be true or false")


def _check_k(name: str, learners: int, k: Any) -> None:
    if isinstance(k, bool) or not isinstance(k, int):
        raise ConfigError("stale.k", k, f"must be an integer ({_k_rule(name, learners)})")
    if name == "sync" and k != learners:
        raise ConfigError("stale.k", k, f"{_k_rule(name, learners)}")
    if name in ("async", "ringmaster") and k != 1:
        raise ConfigError("stale.k", k, f"{_k_rule(name, learners)}")
    if name in ("k_sync", "k_async") and not 1 <= k <= learners:
        raise ConfigError("stale.k", k, f"{_k_rule(name, learners)}")
    if name in BATCH_VARIANTS and k < 1:
        raise ConfigError("stale.k", k, f"{_k_rule(name, learners)}")


def _k_rule(name: str, learners: int) -> str:
    if name == "sync":
        return f"sync waits for every learner: must be stale.learners={learners} (or unset)"
    if name in ("async", "ringmaster"):
        return f"{name} applies one gradient per update: must be 1 (or unset)"
    if name in ("k_sync", "k_async"):
        return f"must be between 1 and stale.learners={learners} for {name}"
    return f"must be an integer >= 1 for {name}"


def default_k(variant: str, learners: int, k: Optional[int]) -> Optional[int]:
    """A K setting as :func:`variant_spec` takes it: unset means half the learners (at least 1) for
    the K-variants and Rennala; ``sync``, ``async`` and ``ringmaster`` fix K themselves (a K set
    for the other variants of a sweep is ignored there: None)."""
    if variant in ("sync", "async", "ringmaster"):
        return None
    return k if k is not None else max(1, learners // 2)


def variant_spec(
    name: str, learners: int, k: Optional[int] = None, max_delay: Optional[int] = None, stop_stale: bool = False
) -> VariantSpec:
    """Validated :class:`VariantSpec`: sync gets K = learners, async and ringmaster K = 1; the
    K-variants and rennala need ``k`` (at most ``learners`` for k_sync and k_async)."""
    one_of("algorithm", name, VARIANTS)
    positive_int("stale.learners", learners)
    if k is None:
        if name == "sync":
            k = learners
        elif name in ("async", "ringmaster"):
            k = 1
        else:
            raise ConfigError("stale.k", None, f"must be set: {_k_rule(name, learners)}")
    return VariantSpec(name, learners, k, max_delay, stop_stale)


@dataclass(frozen=True)
class ServerRules:
    """The variant as the policy's switches.

    - ``restart_at_once``: a learner that pushed starts again at once (else it waits for the update);
    - ``at_update``: running work at an update is ``keep``-t, all cancelled (``cancel_all``), or
      stopped where its delay reached ``max_delay`` (``stop_stale``);
    - ``accept``: ``any`` gradient, only ``fresh`` ones (staleness 0), or ``below_max_delay``.
    """

    k: int
    restart_at_once: bool
    at_update: str
    accept: str
    max_delay: Optional[int] = None


def server_rules(spec: VariantSpec) -> ServerRules:
    """The switches of ``spec``'s variant."""
    if spec.name in ("sync", "k_sync"):
        return ServerRules(spec.k, restart_at_once=False, at_update="cancel_all", accept="any")
    if spec.name == "k_batch_sync":
        return ServerRules(spec.k, restart_at_once=True, at_update="cancel_all", accept="any")
    if spec.name in ("async", "k_async"):
        return ServerRules(spec.k, restart_at_once=False, at_update="keep", accept="any")
    if spec.name == "k_batch_async":
        return ServerRules(spec.k, restart_at_once=True, at_update="keep", accept="any")
    if spec.name == "rennala":
        return ServerRules(spec.k, restart_at_once=True, at_update="keep", accept="fresh")
    threshold = spec.max_delay is not None
    return ServerRules(
        1,
        restart_at_once=True,
        at_update="stop_stale" if spec.stop_stale and threshold else "keep",
        accept="below_max_delay" if threshold else "any",
        max_delay=spec.max_delay,
    )


# -- the server's decisions, without a clock ------------------------------------------------------
@dataclass(frozen=True)
class GradientRecord:
    """An arrived gradient: ``ticket`` numbers arrivals 0, 1, ... (a real PS keys the tensor by it)."""

    ticket: int
    learner: int
    read_version: int
    staleness: int


@dataclass(frozen=True)
class ArrivalDecision:
    """What the PS does with one arrived gradient.

    ``starts`` are the learners to start now at ``version`` (the pushing learner, in variants
    that restart at once, unless its push makes an update due or its start was deferred).
    """

    gradient: GradientRecord
    accepted: bool
    update_due: bool
    starts: tuple[int, ...]
    version: int

    @property
    def read_version(self) -> int:
        """The version the gradient was computed at."""
        return self.gradient.read_version

    @property
    def staleness(self) -> int:
        """PS version now minus the read version."""
        return self.gradient.staleness


@dataclass(frozen=True)
class UpdateDecision:
    """One update: ``version`` is the new version (old + 1); ``gradients`` are averaged (in
    arrival order); the running computations of ``cancelled`` learners are dropped; ``starts``
    start now at ``version``."""

    version: int
    gradients: tuple[GradientRecord, ...]
    cancelled: tuple[int, ...]
    starts: tuple[int, ...]


class ServerPolicy:
    """Clock-agnostic decisions of the PS (reused by a real parameter server with a real clock).

    Drive it with :meth:`initial_starts`, then :meth:`on_arrival` for every gradient that
    arrives and :meth:`apply_update` whenever an arrival says ``update_due``. Learners that are
    free start at once, unless the caller passes ``defer_start=True`` (e.g. to handle several
    arrivals of one instant together): they then wait in :meth:`ready` until
    :meth:`start_ready` or the next update starts them, reading the version of that moment.
    """

    def __init__(self, spec: VariantSpec, shrink_k: bool = False) -> None:
        self.spec = spec
        self.rules = server_rules(spec)
        self.shrink_k = shrink_k
        self._requested_k = self.rules.k
        self.version = 0
        self._running: dict[int, int] = {}
        self._ready: set[int] = set()
        self._pending: list[GradientRecord] = []
        self._tickets = 0
        self._started = False
        self._retired: set[int] = set()

    @property
    def update_due(self) -> bool:
        """K accepted gradients are waiting: :meth:`apply_update` must come next."""
        return len(self._pending) >= self.rules.k

    @property
    def k(self) -> int:
        """The gradients the next update averages: the variant's K, unless :meth:`set_k` changed it."""
        return self.rules.k

    def set_k(self, k: int) -> None:
        """Average ``k`` gradients from the next update on (``stale.k=auto``), validated as the
        variant's K (sync, async and ringmaster fix theirs). Call it when no update is due: the
        gradients already accepted count towards the new K."""
        _check_k(self.spec.name, self.spec.learners, k)
        if self.update_due:
            raise RuntimeError("an update is due: call apply_update() before changing K")
        self._requested_k = k
        self._cap_k()

    @property
    def live(self) -> int:
        """Learners not retired."""
        return self.spec.learners - len(self._retired)

    @property
    def needs_distinct_learners(self) -> bool:
        """An update averages K gradients of K different learners (a learner waits for the
        update after pushing): sync, k_sync, async, k_async."""
        return not self.rules.restart_at_once

    def _cap_k(self) -> None:
        """K is the requested K, or with ``shrink_k`` at most the learners alive where an update
        needs distinct learners (at least 1)."""
        k = self._requested_k
        if self.shrink_k and self.needs_distinct_learners:
            k = max(1, min(k, self.live))
        if k != self.rules.k:
            self.rules = replace(self.rules, k=k)

    def initial_starts(self, version: int = 0) -> list[int]:
        """Every learner starts at ``version`` (0, or the version a resumed run continues from)."""
        if self._started:
            raise RuntimeError("initial_starts() was already called")
        if version < 0:
            raise ValueError(f"version must be >= 0, got {version}")
        self._started = True
        self.version = version
        self._running = {learner: version for learner in range(self.spec.learners)}
        return list(range(self.spec.learners))

    def running(self) -> dict[int, int]:
        """Learner -> read version of its running computation."""
        return dict(self._running)

    @property
    def has_ready(self) -> bool:
        """Some learner waits in :meth:`ready`."""
        return bool(self._ready)

    def ready(self) -> tuple[int, ...]:
        """Learners free to start whose start was deferred."""
        return tuple(sorted(self._ready))

    def pending(self) -> tuple[GradientRecord, ...]:
        """Accepted gradients waiting for the next update."""
        return tuple(self._pending)

    def retire(self, learner: int) -> None:
        """``learner`` left for good (a real learner process died or stopped answering): its
        running computation, if any, is dropped without counting as cancelled, and it is never
        started again. Gradients it delivered before stay pending."""
        if not 0 <= learner < self.spec.learners:
            raise ValueError(f"learner {learner} does not exist (learners 0..{self.spec.learners - 1})")
        self._retired.add(learner)
        self._running.pop(learner, None)
        self._ready.discard(learner)
        self._cap_k()

    def rejoin(self, learner: int) -> tuple[int, ...]:
        """Retired ``learner`` is back (a new process took its place): it starts at the current
        version, at once unless an update is due (then it waits in :meth:`ready` for the update);
        returns the learners to start now. With ``shrink_k``, K grows back towards the variant's."""
        if learner not in self._retired:
            raise ValueError(f"learner {learner} is not retired (retired: {sorted(self._retired)})")
        self._retired.discard(learner)
        self._cap_k()
        if self.update_due:
            self._ready.add(learner)
            return ()
        self._running[learner] = self.version
        return (learner,)

    def retired(self) -> tuple[int, ...]:
        """Learners that :meth:`retire` removed, in index order."""
        return tuple(sorted(self._retired))

    def on_arrival(self, learner: int, defer_start: bool = False) -> ArrivalDecision:
        """``learner``'s running computation delivered its gradient."""
        k = self.rules.k
        if len(self._pending) >= k:
            raise RuntimeError("an update is due: call apply_update() before the next arrival")
        read_version = self._running.pop(learner, None)
        if read_version is None:
            raise ValueError(f"learner {learner} has no running computation")
        gradient = GradientRecord(self._tickets, learner, read_version, self.version - read_version)
        self._tickets += 1
        accepted = self.rules.accept == "any" or self._accepts(gradient.staleness)
        if accepted:
            self._pending.append(gradient)
        due = len(self._pending) >= k
        starts: tuple[int, ...] = ()
        if self.rules.restart_at_once and not due:
            if defer_start:
                self._ready.add(learner)
            else:
                self._running[learner] = self.version
                starts = (learner,)
        return ArrivalDecision(gradient, accepted, due, starts, self.version)

    def _accepts(self, staleness: int) -> bool:
        if self.rules.accept == "fresh":
            return staleness == 0
        if self.rules.accept == "below_max_delay":
            return staleness < self.rules.max_delay  # type: ignore[operator]
        return True

    def apply_update(self, defer_start: bool = False) -> UpdateDecision:
        """Average the pending gradients into version + 1; cancel what the variant cancels;
        start every free learner at the new version (or mark it ready when deferred)."""
        if not self.update_due:
            raise RuntimeError(f"no update is due: {len(self._pending)} of {self.rules.k} gradients arrived")
        gradients, self._pending = tuple(self._pending), []
        self.version += 1
        cancelled = self._cancellations()
        for learner in cancelled:
            del self._running[learner]
        free = [l for l in range(self.spec.learners) if l not in self._running and l not in self._retired]
        self._ready.update(free)
        starts = () if defer_start else self.start_ready()
        return UpdateDecision(self.version, gradients, cancelled, starts)

    def _cancellations(self) -> tuple[int, ...]:
        if self.rules.at_update == "cancel_all":
            return tuple(sorted(self._running))
        if self.rules.at_update == "stop_stale":
            limit: int = self.rules.max_delay  # type: ignore[assignment]
            return tuple(sorted(l for l, read in self._running.items() if self.version - read >= limit))
        return ()

    def start_ready(self) -> tuple[int, ...]:
        """Start every ready learner at the current version; returns them in index order."""
        starts = tuple(sorted(self._ready))
        for learner in starts:
            self._running[learner] = self.version
        self._ready.clear()
        return starts

    def state_dict(self) -> dict[str, Any]:
        """Version, running and ready learners, pending gradients (plain python data)."""
        return {
            "spec": asdict(self.spec),
            "version": self.version,
            "running": dict(self._running),
            "ready": sorted(self._ready),
            "pending": [asdict(g) for g in self._pending],
            "tickets": self._tickets,
            "started": self._started,
            "retired": sorted(self._retired),
            "k": self._requested_k,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` of a policy of the same variant."""
        if state["spec"] != asdict(self.spec):
            raise ValueError(f"the state was saved for {state['spec']}, not {asdict(self.spec)}")
        self.version = int(state["version"])
        self._running = {int(l): int(v) for l, v in state["running"].items()}
        self._ready = set(state["ready"])
        self._pending = [GradientRecord(**g) for g in state["pending"]]
        self._tickets = int(state["tickets"])
        self._started = bool(state["started"])
        self._retired = set(state.get("retired", ()))  # absent in states saved before retire() existed
        k = int(state.get("k", self.spec.k))  # absent in states saved before set_k() existed
        _check_k(self.spec.name, self.spec.learners, k)
        self._requested_k = k
        self.rules = replace(self.rules, k=k)
        self._cap_k()


# -- the simulation --------------------------------------------------------------------------
@dataclass(frozen=True)
class GradientPlan:
    """One gradient: computed by ``learner`` at ``read_version`` from ``started_at`` to ``arrived_at``.

    With data streams: on the learner's fresh batch ``fresh_index``, served for the ``serve``-th
    time (0: fresh, > 0: an echo), after waiting ``data_wait`` for it (``started_at`` is when the
    computation began, after the wait). Without: ``fresh_index`` is -1 (each gradient its own batch).
    """

    learner: int
    read_version: int
    staleness: int
    started_at: float
    arrived_at: float
    fresh_index: int = -1
    serve: int = 0
    data_wait: float = 0.0

    @property
    def is_echo(self) -> bool:
        """Computed on a batch its learner had already computed on."""
        return self.serve > 0


@dataclass(frozen=True)
class RunTotals:
    """The counters of a simulated run so far: gradients used and discarded, computations
    cancelled, the compute time that discarded and cancelled work wasted, and all learners'
    compute time (``busy_time``; utilisation is ``busy_time / (P * clock)``)."""

    gradients_used: int = 0
    gradients_discarded: int = 0
    computations_cancelled: int = 0
    wasted_time: float = 0.0
    busy_time: float = 0.0
    data_wait_per_learner: tuple[float, ...] = ()

    @property
    def data_wait_time(self) -> float:
        """All learners' time waiting for data (0 without data streams)."""
        return sum(self.data_wait_per_learner)


@dataclass(frozen=True)
class UpdatePlan:
    """One PS update of a simulated schedule; every "since" counts from the previous update.

    ``version`` is the PS version before this update; ``gradients`` (``spec.k`` of them) are
    averaged into version + 1; ``discarded`` arrived since and were refused; ``cancelled`` counts
    computations dropped since (including at this update); ``wasted_time`` is the compute time
    of that discarded (whole) and cancelled (up to the cancel) work; ``busy_time`` the compute
    time of all learners since; ``held_versions`` the read versions (all <= ``version``) of
    computations started before this update and still running after it (learners that restart
    now read version + 1). ``totals`` are the run's counters up to and including this update
    (what a run logs at it: they continue across a resume, since the simulation's state is saved).
    """

    version: int
    time: float
    gradients: tuple[GradientPlan, ...]
    discarded: tuple[GradientPlan, ...]
    cancelled: int
    wasted_time: float
    busy_time: float
    held_versions: frozenset[int]
    totals: "RunTotals"


class ScheduleSimulation:
    """Event-driven simulation of the policy on a virtual clock with seeded compute times.

    Every learner computes each mini-batch in a time drawn from its compute-time source. With
    ``data`` (:class:`~lightning_echo.core.learner_data.LearnerDataStreams`), each learner also
    waits for its own loader's next fresh batch, or echoes its current one: a started learner reads
    the server's version at once and begins computing when its batch is there (busy and wasted
    time count computing only). Arrivals at the same simulated instant are handled in learner-index order, and learners
    freed at an instant start at its end, reading the version the PS holds then (so with equal
    constant times, Rennala with B = P and K-sync with K = P both give synchronous SGD).

    Example::

        from lightning_echo.core.delays import ComputeTimes, DelayDistribution

        sim = ScheduleSimulation(variant_spec("k_async", 8, k=2), ComputeTimes(DelayDistribution("exponential")))
        plan = sim.next_update()   # plan.gradients: which learners, at which versions
        assert len(plan.gradients) == 2 and plan.version == 0
    """

    def __init__(self, spec: VariantSpec, compute_times: ComputeTimeSource, seed: int = 0,
                 data: Optional[LearnerDataStreams] = None) -> None:
        compute_times.check_learners(spec.learners)
        if data is not None and data.learners != spec.learners:
            raise ValueError(f"the data streams are for {data.learners} learners, the variant has {spec.learners}")
        self.spec = spec
        self.data = data
        self._takes: dict[int, tuple[int, int, float]] = {}  # learner -> (fresh_index, serve, wait) with data
        self.seed = seed
        self.policy = ServerPolicy(spec)
        self.compute_times = compute_times.seeded(seed)
        self.clock = 0.0
        self.updates = 0
        self._now = 0.0
        self._inflight: dict[int, tuple[int, float, float, int]] = {}  # learner -> (read, start, finish, token)
        self._heap: list[tuple[float, int, int]] = []  # (finish, learner, token); stale tokens are skipped
        self._tokens = 0
        self._garbage = 0
        self._arrived: list[GradientPlan] = []  # accepted gradients awaiting an update, in arrival order
        self._discarded: list[GradientPlan] = []
        self._interval = {"cancelled": 0, "wasted_time": 0.0, "busy_time": 0.0}
        self._totals = {"started": 0, "used": 0, "discarded": 0, "cancelled": 0, "wasted_time": 0.0, "busy_time": 0.0}
        self._busy_per_learner = [0.0] * spec.learners
        self._staleness_counts: dict[int, int] = {}
        self._start(self.policy.initial_starts())

    @property
    def k(self) -> int:
        """The gradients the next update averages (see :meth:`set_k`)."""
        return self.policy.k

    def set_k(self, k: int) -> None:
        """Average ``k`` gradients from the next planned update on (``stale.k=auto``; validated
        as the variant's K); saved with the state."""
        self.policy.set_k(k)

    def _start(self, learners: tuple[int, ...] | list[int]) -> None:
        version, now, token, sample, data = self.policy.version, self._now, self._tokens, self.compute_times.sample, self.data
        for learner in learners:
            begin = now
            if data is not None:
                take = data.take(learner, now)
                begin = take.begin
                self._takes[learner] = (take.fresh_index, take.serve, take.wait)
            finish = begin + sample(learner)
            self._inflight[learner] = (version, begin, finish, token)
            heapq.heappush(self._heap, (finish, learner, token))
            token += 1
        self._tokens = token
        self._totals["started"] += len(learners)

    def _valid(self, entry: tuple[float, int, int]) -> bool:
        running = self._inflight.get(entry[1])
        return running is not None and running[3] == entry[2]

    def _pop_next(self) -> tuple[float, int]:
        heap, inflight = self._heap, self._inflight
        while heap:
            finish, learner, token = heapq.heappop(heap)
            running = inflight.get(learner)
            if running is not None and running[3] == token:
                return finish, learner
        raise RuntimeError("no computation is running")  # every variant keeps one running

    def _more_at(self, time: float) -> bool:
        while self._heap and not self._valid(self._heap[0]):
            heapq.heappop(self._heap)
        return bool(self._heap) and self._heap[0][0] == time

    def next_update(self) -> UpdatePlan:
        """Advance the event heap until the next PS update; return its plan."""
        policy, inflight, interval = self.policy, self._inflight, self._interval
        while True:
            finish, learner = self._pop_next()
            if self.data is None:
                interval["busy_time"] += (finish - self._now) * len(inflight)
            else:  # a learner waiting for its data is busy only from when its computation begins
                now = self._now
                waiting = [begin for _, begin, _, _ in inflight.values() if begin > now]
                interval["busy_time"] += (finish - now) * (len(inflight) - len(waiting))
                interval["busy_time"] += sum(finish - begin for begin in waiting if begin < finish)
            self._now = finish
            read_version, started, _, _ = inflight.pop(learner)
            self._busy_per_learner[learner] += finish - started
            decision = policy.on_arrival(learner, defer_start=True)
            if self.data is None:
                plan = GradientPlan(learner, read_version, decision.gradient.staleness, started, finish)
            else:
                fresh_index, serve, wait = self._takes.pop(learner)
                plan = GradientPlan(learner, read_version, decision.gradient.staleness, started, finish,
                                    fresh_index, serve, wait)
            if decision.accepted:
                self._arrived.append(plan)
            else:
                self._discarded.append(plan)
                interval["wasted_time"] += finish - started
            update = self._apply_update() if decision.update_due else None
            if policy.has_ready and not self._more_at(finish):
                self._start(policy.start_ready())
            if update is not None:
                return update

    def _apply_update(self) -> UpdatePlan:
        decision = self.policy.apply_update(defer_start=True)
        for learner in decision.cancelled:
            _, started, _, _ = self._inflight.pop(learner)
            if self.data is not None:
                self.data.cancel(learner, self._now, started)
                self._takes.pop(learner, None)
            spent = max(0.0, self._now - started)  # nothing when it was still waiting for its data
            self._busy_per_learner[learner] += spent
            self._interval["wasted_time"] += spent
        self._interval["cancelled"] += len(decision.cancelled)
        self._garbage += len(decision.cancelled)
        if self._garbage > len(self._inflight) + 64:
            self._rebuild_heap()
        # The policy averages its pending gradients in arrival order, as they were appended here.
        used = len(decision.gradients)
        gradients, self._arrived = tuple(self._arrived[:used]), self._arrived[used:]
        plan = UpdatePlan(
            version=decision.version - 1,
            time=self._now,
            gradients=gradients,
            discarded=tuple(self._discarded),
            cancelled=self._interval["cancelled"],
            wasted_time=self._interval["wasted_time"],
            busy_time=self._interval["busy_time"],
            held_versions=frozenset(read for read, _, _, _ in self._inflight.values()),
            totals=self._count(gradients),
        )
        self.clock = self._now
        self.updates += 1
        return plan

    def _count(self, gradients: tuple[GradientPlan, ...]) -> RunTotals:
        """Add the interval's counts (the update of ``gradients``) to the run's; start a new interval."""
        totals, interval = self._totals, self._interval
        totals["used"] += len(gradients)
        totals["discarded"] += len(self._discarded)
        totals["cancelled"] += interval["cancelled"]
        totals["wasted_time"] += interval["wasted_time"]
        totals["busy_time"] += interval["busy_time"]
        for gradient in gradients:
            self._staleness_counts[gradient.staleness] = self._staleness_counts.get(gradient.staleness, 0) + 1
        self._discarded = []
        interval.update(cancelled=0, wasted_time=0.0, busy_time=0.0)
        waits = tuple(self.data.waits()) if self.data is not None else ()
        return RunTotals(totals["used"], totals["discarded"], totals["cancelled"], totals["wasted_time"],
                         totals["busy_time"], waits)

    def _rebuild_heap(self) -> None:
        self._heap = [(finish, learner, token) for learner, (_, _, finish, token) in self._inflight.items()]
        heapq.heapify(self._heap)
        self._garbage = 0

    def statistics(self) -> dict[str, Any]:
        """Counters since the start, up to the last update (running work counted up to ``clock``)."""
        per_learner = list(self._busy_per_learner)
        for learner, (_, started, _, _) in self._inflight.items():
            per_learner[learner] += max(0.0, self._now - started)
        used = self._totals["used"]
        busy = sum(per_learner)
        return {
            "updates": self.updates,
            "clock": self.clock,
            "time_per_update": self.clock / self.updates if self.updates else float("nan"),
            "computations_started": self._totals["started"],
            "gradients_used": used,
            "gradients_discarded": self._totals["discarded"],
            "computations_cancelled": self._totals["cancelled"],
            "wasted_time": self._totals["wasted_time"],
            "busy_time": busy,
            "busy_time_per_learner": per_learner,
            "utilization": busy / (self.spec.learners * self.clock) if self.clock > 0 else float("nan"),
            "staleness_counts": dict(sorted(self._staleness_counts.items())),
            "mean_staleness": sum(s * n for s, n in self._staleness_counts.items()) / used if used else float("nan"),
            **(self.data.statistics() if self.data is not None else {}),
        }

    def state_dict(self) -> dict[str, Any]:
        """Everything the following plans depend on: clock, running computations, accepted
        gradients awaiting an update, policy, counters and the compute-time stream's state."""
        return {
            "spec": asdict(self.spec),
            "seed": self.seed,
            "clock": self.clock,
            "updates": self.updates,
            "now": self._now,
            "inflight": {learner: list(c) for learner, c in self._inflight.items()},
            "tokens": self._tokens,
            "arrived": [asdict(plan) for plan in self._arrived],
            "discarded": [asdict(plan) for plan in self._discarded],
            "interval": dict(self._interval),
            "totals": dict(self._totals),
            "busy_per_learner": list(self._busy_per_learner),
            "staleness_counts": dict(self._staleness_counts),
            "policy": self.policy.state_dict(),
            "compute_times": self.compute_times.state_dict(),
            "data": self.data.state_dict() if self.data is not None else None,
            "takes": {learner: list(take) for learner, take in self._takes.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where :meth:`state_dict` was taken (same variant)."""
        if state["spec"] != asdict(self.spec):
            raise ValueError(f"the state was saved for {state['spec']}, not {asdict(self.spec)}")
        self.policy.load_state_dict(state["policy"])
        self.compute_times.load_state_dict(state["compute_times"])
        self.seed = state["seed"]
        self.clock = float(state["clock"])
        self.updates = int(state["updates"])
        self._now = float(state["now"])
        self._inflight = {
            int(l): (int(c[0]), float(c[1]), float(c[2]), int(c[3])) for l, c in state["inflight"].items()
        }
        self._tokens = int(state["tokens"])
        self._arrived = [GradientPlan(**p) for p in state["arrived"]]
        self._discarded = [GradientPlan(**p) for p in state["discarded"]]
        self._interval = {key: state["interval"][key] for key in ("cancelled", "wasted_time", "busy_time")}
        self._totals = dict(state["totals"])
        self._busy_per_learner = [float(b) for b in state["busy_per_learner"]]
        self._staleness_counts = {int(s): int(n) for s, n in state["staleness_counts"].items()}
        if (state.get("data") is None) != (self.data is None):
            saved = "with" if state.get("data") is not None else "without"
            raise ValueError(f"the state was saved {saved} learner data streams; this simulation has "
                             f"{'none' if self.data is None else 'them'}")
        if self.data is not None:
            self.data.load_state_dict(state["data"])
        self._takes = {int(l): (int(t[0]), int(t[1]), float(t[2])) for l, t in state.get("takes", {}).items()}
        if "busy_time" not in self._totals:  # a state saved before it was counted: every learner's time so far
            running = sum(max(0.0, self._now - started) for _, started, _, _ in self._inflight.values())
            self._totals["busy_time"] = sum(self._busy_per_learner) + running - self._interval["busy_time"]
        self._rebuild_heap()


def simulate_runtime(spec: VariantSpec, compute_times: ComputeTimeSource, updates: int, seed: int = 0) -> float:
    """Mean simulated time per PS update over ``updates`` updates."""
    positive_int("updates", updates)
    simulation = ScheduleSimulation(spec, compute_times, seed)
    for _ in range(updates):
        simulation.next_update()
    return simulation.clock / updates
