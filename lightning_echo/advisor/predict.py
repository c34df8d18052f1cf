"""What each straggler remedy, and echoing, would gain on a recorded run (pure: no Lightning).

For every variant over a grid of K (Rennala's B, Ringmaster's R), :func:`predict` gives the time
per update (updates per second), gradients per update, mean and p99 staleness of the gradients
used, and the wasted work (the fraction of the learners' compute time that was cancelled or
discarded). Each number says how it was obtained (``Prediction.methods``):

- **closed form** (:mod:`lightning_echo.core.runtimes`, Dutta et al. 2018), where it is exact:
  K-batch-async, async, K-async with K = 1 and Ringmaster without threshold for any distribution
  and any speeds (Lemma 4, renewal: ``K / sum_i 1 / E[X_i]``); sync, K-sync (Lemma 3) and
  K-async with K = P for i.i.d. times, i.e. equal speeds and a fitted family the KS test accepts
  (``E[X_{K:P}]`` of that fit); K-async with 1 < K < P and K-batch-sync (``K E[X] / P``) for an
  exponential fit with equal speeds; K-sync's wasted work from the order statistics
  (``(P-K) E[X_{K:P}] / (sum_{i<=K} E[X_{i:P}] + (P-K) E[X_{K:P}])``);
- **exact**: no staleness where only fresh gradients are used (sync, K-sync, K-batch-sync,
  Rennala, Ringmaster with R = 1); no waste where nothing is cancelled or discarded;
- **replay** otherwise: the recorded times (:class:`~lightning_echo.core.delays.TraceComputeTimes`,
  each learner its rank's times in order, from the start again when they run out) or the fitted
  model (``source="fit"``) through :class:`~lightning_echo.core.schedule.ScheduleSimulation`.
  Every row is replayed (``Prediction.replayed``), so a closed form can be checked against it.

Which configuration to recommend (:meth:`PredictionTable.shortlist`): each row's *gain* is its
speed-up per update over p_sync times ``min(1, K / P)`` (an update of fewer gradients than
p_sync's counts for that fraction of one: the speed-up at equal gradients, up to p_sync's batch).
Only rows that average at least half of p_sync's gradients per update (so p_sync's step size
roughly carries over) with a mean staleness of at most 2 updates are shortlisted; among gains
within 3% of the best, the least stale, then the least wasteful, then the largest K wins. When no
gain reaches 1.2, sync is enough.

Real steps cost more than their compute (:class:`Overhead`): the predictions above are compute
alone; :func:`calibrate_overhead` measures the rest on the recorded run itself (a synchronous one:
one device, DDP, or a parameter server's p_sync, where every recorded step is one update) as
``recorded time per update - compute-only p_sync prediction`` and splits it into a part per
gradient (each learner's recorded data wait: the loop's own work and the data fetch between its
steps) and a part per update (the rest: the all-reduce, or the server's update, its STARTs and
the round trip). ``predict(..., overhead=...)`` then adds them where each variant pays them (a
learner that waits for the update pays the per-update part; see :meth:`Overhead.extra`), and
``Prediction.compute_only`` keeps the time from compute alone. On a parameter server's real processes
this turned updates-per-second predictions 9-22% optimistic into ones within 7% of the measured rates
for every shortlisted variant (BENCHMARKS.md, issue 22; ``bench/advisor_accuracy.py``).

Echo (Choi et al. 2019, DESIGN 4.1): with ``time(e) = max(t_upstream, e t_downstream)`` per fresh
batch, a rank that waits for data a fraction ``f`` of its step has ``t_upstream / t_downstream =
1 / (1 - f)``: ``auto`` echoes about that many times per fresh batch (at most ``max_factor``) and
steps at most that many times faster (:func:`echo_prediction`; per fresh sample an echoed step is
worth at most a fresh one, so this bounds the gain). :func:`combined` replays each shortlisted
variant with every learner's own data stream (:class:`~lightning_echo.core.learner_data.LearnerDataStreams`):
a rank that waited for data at least 5% of its time gets its recorded step times (compute, data
wait, sync wait) as its loader's time per fresh batch: a loader that prefetches in the background
(DataLoader workers, the throttled loaders here) and still kept the rank waiting produced one batch
per step; the others get data that is always ready (their loaders kept up, or their waits were the
loop's own work between steps: how much faster the loaders could go is not in the trace). A loader
that fetches in the step's own thread is overestimated this way (its time is the data wait alone).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Optional, Sequence

from lightning_echo.advisor.fit import TraceFit
from lightning_echo.advisor.trace import StepTrace
from lightning_echo.core.delays import ComputeTimeSource, DelayDistribution, TraceComputeTimes
from lightning_echo.core.learner_data import LearnerDataStreams, LearnerEcho
from lightning_echo.core.runtimes import expected_order_statistic, k_batch_sync_time_per_update
from lightning_echo.core.schedule import ScheduleSimulation, VariantSpec, variant_spec
from lightning_echo.errors import ConfigError
from lightning_echo.validation import positive_int

Source = Literal["trace", "fit"]
DEFAULT_GRADIENTS = 6000  # gradients computed per replayed row: about 2% sampling error per update time
MIN_UPDATES = 200
BATCH_MEANS = 20  # the replay's standard error from this many batches of updates
MIN_BATCH_FRACTION = 0.5
MAX_STALENESS = 2.0
TIE = 0.03
ENOUGH = 1.2  # a gain below this: sync is enough
# A rank waiting for data at least this fraction of its time is data-bound: its loader set its pace.
# Below it, echo adds little, and the waits are taken for the loop's own work between steps.
DATA_BOUND = 0.05
LITTLE_DATA_WAIT = DATA_BOUND
ECHO_WORTH = 1.1  # echo goes into the recommended command when it makes the choice this much faster
DEFAULT_MAX_FACTOR = 4
REPLAY_VARIANTS = 4  # shortlisted variants a --replay trains besides p_sync (advise)
_NO_DATA_TIME = 1e-12  # the loader time of a rank that never waited: data always ready


def label(spec: VariantSpec) -> str:
    """The command-line algorithm name with its K, B or R: ``p_sync``, ``k_sync K=4``, ``rennala B=8``,
    ``ringmaster R=4 (stops)``."""
    if spec.name == "sync":
        return "p_sync"
    if spec.name == "async":
        return "async"
    if spec.name == "rennala":
        return f"rennala B={spec.k}"
    if spec.name == "ringmaster":
        return f"ringmaster R={spec.max_delay if spec.max_delay is not None else 'inf'}" + (" (stops)" if spec.stop_stale else "")
    return f"{spec.name} K={spec.k}"


def command_overrides(spec: VariantSpec) -> list[str]:
    """The ``lightning-echo`` overrides that run ``spec``."""
    overrides = [f"algorithm={'p_sync' if spec.name == 'sync' else spec.name}", f"stale.learners={spec.learners}"]
    if spec.name not in ("sync", "async", "ringmaster"):
        overrides.append(f"stale.k={spec.k}")
    if spec.name == "ringmaster" and spec.max_delay is not None:
        overrides.append(f"stale.max_delay={spec.max_delay}")
        if spec.stop_stale:
            overrides.append("stale.stop_stale=true")
    return overrides


def k_values(learners: int, max_k: Optional[int] = None) -> list[int]:
    """K from 1 to P (for P > 16: powers of two and P/4, P/2, 3P/4, P), at most ``max_k``."""
    if learners <= 16:
        values = set(range(1, learners + 1))
    else:
        values = {2**i for i in range(learners.bit_length()) if 2**i <= learners}
        values |= {max(1, learners // 4), max(1, learners // 2), max(1, 3 * learners // 4), learners, 3}
    return sorted(k for k in values if max_k is None or k <= max_k)


def variant_grid(learners: int, max_k: Optional[int] = None) -> list[VariantSpec]:
    """Every variant over K in :func:`k_values` (the batch variants also 2P and 4P), Ringmaster over
    R in 1, 2, 4, ... 2P with and without stops; rows that are another row's variant are left out
    (K-sync and K-async with K = P are p_sync; K-async and K-batch-async with K = 1, Ringmaster
    with R = infinity are async). One learner: p_sync alone."""
    positive_int("learners", learners)
    specs = [variant_spec("sync", learners)]
    if learners == 1:
        return specs
    ks = k_values(learners, max_k)
    batch = sorted(set(ks) | {k for k in (2 * learners, 4 * learners) if max_k is None or k <= max_k})
    specs += [variant_spec("k_sync", learners, k) for k in ks if k < learners]
    specs += [variant_spec("k_async", learners, k) for k in ks if 1 < k < learners]
    specs += [variant_spec("k_batch_sync", learners, k) for k in batch]
    specs += [variant_spec("k_batch_async", learners, k) for k in batch if k > 1]
    specs.append(variant_spec("async", learners))
    specs += [variant_spec("rennala", learners, k) for k in batch]
    delays = sorted({2**i for i in range((2 * learners).bit_length()) if 2**i <= 2 * learners} | {learners})
    specs += [variant_spec("ringmaster", learners, max_delay=r, stop_stale=stops) for r in delays for stops in (False, True)]
    return specs


@dataclass(frozen=True)
class Replay:
    """One configuration replayed: time per update (after a warm-up of a tenth of the updates) and its
    standard error (batch means), the staleness of the gradients used, wasted work, utilisation;
    with data streams, the share of computations on echoed batches and of time waiting for data."""

    time_per_update: float
    standard_error: float
    mean_staleness: float
    p99_staleness: float
    wasted_fraction: float
    utilisation: float
    updates: int
    echoed_fraction: float = 0.0
    data_wait_fraction: float = 0.0


def replay(spec: VariantSpec, compute_times: ComputeTimeSource, gradients: int = DEFAULT_GRADIENTS, seed: int = 0,
           data: Optional[LearnerDataStreams] = None) -> Replay:
    """Run ``spec`` on ``compute_times`` through the schedule core for about ``gradients`` used gradients."""
    positive_int("gradients", gradients)
    simulation = ScheduleSimulation(spec, compute_times, seed=seed, data=data)
    updates = max(MIN_UPDATES, math.ceil(gradients / spec.k))
    clocks = [simulation.next_update().time for _ in range(updates)]
    warm = updates // 10
    steady = updates - warm
    start = clocks[warm - 1] if warm else 0.0
    size = steady // BATCH_MEANS
    means = [(clocks[warm + (b + 1) * size - 1] - (clocks[warm + b * size - 1] if warm + b * size else 0.0)) / size
             for b in range(BATCH_MEANS)]
    average = math.fsum(means) / BATCH_MEANS
    error = math.sqrt(math.fsum((m - average) ** 2 for m in means) / (BATCH_MEANS - 1) / BATCH_MEANS)
    stats = simulation.statistics()
    counts: dict[int, int] = stats["staleness_counts"]
    used = sum(counts.values())
    busy = stats["busy_time"]
    echoed = data_wait = 0.0
    if data is not None:
        fresh, echoes = sum(stats["fresh_batches_per_learner"]), sum(stats["echoes_per_learner"])
        echoed = echoes / (fresh + echoes) if fresh + echoes else 0.0
        data_wait = sum(stats["data_wait_per_learner"]) / (spec.learners * simulation.clock)
    return Replay(
        time_per_update=(clocks[-1] - start) / steady,
        standard_error=error,
        mean_staleness=stats["mean_staleness"],
        p99_staleness=float(_quantile(counts, used, 0.99)),
        wasted_fraction=stats["wasted_time"] / busy if busy > 0 else 0.0,
        utilisation=stats["utilization"],
        updates=updates,
        echoed_fraction=echoed,
        data_wait_fraction=data_wait,
    )


def _quantile(counts: Mapping[int, int], total: int, q: float) -> int:
    """The smallest staleness with at least ``q`` of the ``total`` gradients at or below it."""
    seen = 0
    for staleness in sorted(counts):
        seen += counts[staleness]
        if seen >= q * total:
            return staleness
    return max(counts, default=0)


@dataclass(frozen=True)
class Prediction:
    """One configuration's predicted numbers; ``methods`` says for ``time``, ``staleness`` and
    ``wasted`` how each was obtained; ``replayed`` is the replay of this row (always run)."""

    spec: VariantSpec
    time_per_update: float
    mean_staleness: float
    p99_staleness: float
    wasted_fraction: float
    methods: Mapping[str, str]
    replayed: Replay
    compute_only: Optional[float] = None  # the time per update from compute alone, where an overhead was added

    @property
    def label(self) -> str:
        return label(self.spec)

    @property
    def compute_time_per_update(self) -> float:
        """The time per update from the compute times alone (without the overhead model)."""
        return self.compute_only if self.compute_only is not None else self.time_per_update

    @property
    def updates_per_s(self) -> float:
        return 1.0 / self.time_per_update

    @property
    def gradients_per_update(self) -> int:
        return self.spec.k

    @property
    def gradients_per_s(self) -> float:
        return self.spec.k / self.time_per_update


@dataclass(frozen=True)
class PredictionTable:
    """Every row of the grid for ``learners`` learners; ``source`` is what the replays replayed."""

    learners: int
    rows: tuple[Prediction, ...]
    source: Source
    notes: tuple[str, ...] = ()
    overhead: Optional["Overhead"] = None  # added to every row's time per update, when given

    @property
    def baseline(self) -> Prediction:
        """The p_sync row."""
        return next(r for r in self.rows if r.spec.name == "sync")

    def speedup(self, row: Prediction) -> float:
        """``row``'s updates per second over p_sync's."""
        return self.baseline.time_per_update / row.time_per_update

    def gain(self, row: Prediction) -> float:
        """The speed-up per update times ``min(1, K / P)``: the speed-up at equal gradients, up to p_sync's batch."""
        return self.speedup(row) * min(1.0, row.spec.k / self.learners)

    def eligible(self, row: Prediction, max_staleness: float = MAX_STALENESS,
                 min_batch_fraction: float = MIN_BATCH_FRACTION) -> bool:
        """At least ``min_batch_fraction`` of p_sync's gradients per update, mean staleness at most ``max_staleness``."""
        return row.spec.k >= min_batch_fraction * self.learners and row.mean_staleness <= max_staleness

    def shortlist(self, max_staleness: float = MAX_STALENESS, min_batch_fraction: float = MIN_BATCH_FRACTION) -> list[Prediction]:
        """The best eligible row of each variant (p_sync included), best gain first (ties as the module says)."""
        best: dict[str, Prediction] = {}
        for row in self.rows:
            if self.eligible(row, max_staleness, min_batch_fraction):
                held = best.get(row.spec.name)
                best[row.spec.name] = row if held is None else self._better(held, row)
        ordered = sorted(best.values(), key=self.gain, reverse=True)
        if ordered:  # among near-ties of the best gain, the least stale first
            top = self.gain(ordered[0])
            near = [r for r in ordered if self.gain(r) >= (1 - TIE) * top]
            near.sort(key=self._preference)
            ordered = near + [r for r in ordered if r not in near]
        return ordered

    def _preference(self, row: Prediction) -> tuple[float, float, int]:
        return (row.mean_staleness, row.wasted_fraction, -row.spec.k)

    def _better(self, a: Prediction, b: Prediction) -> Prediction:
        ga, gb = self.gain(a), self.gain(b)
        if abs(ga - gb) <= TIE * max(ga, gb):
            return min((a, b), key=self._preference)
        return a if ga > gb else b

    def row(self, name: str, k: Optional[int] = None, max_delay: Optional[int] = None, stop_stale: bool = False) -> Prediction:
        """The row of variant ``name`` (with its K, or R and stops)."""
        for r in self.rows:
            if r.spec.name == name and (k is None or r.spec.k == k) and r.spec.max_delay == max_delay and r.spec.stop_stale == stop_stale:
                return r
        raise KeyError(f"no row {name} k={k} max_delay={max_delay} stop_stale={stop_stale}")


class _ClosedForms:
    """The closed forms that are exact for this cluster (see the module docstring)."""

    def __init__(self, fit: TraceFit, learners: int, times: ComputeTimeSource) -> None:
        self.learners = learners
        best = fit.best
        self.iid: Optional[DelayDistribution] = best.distribution if fit.homogeneous and best.acceptable else None
        self.family = best.family
        self.means = [times.mean(i) for i in range(learners)]

    @staticmethod
    def _renewal(spec: VariantSpec) -> bool:
        name = spec.name
        return (name in ("k_batch_async", "async") or (name == "ringmaster" and spec.max_delay is None)
                or (name == "k_async" and spec.k == 1))

    def time(self, spec: VariantSpec) -> tuple[Optional[float], str]:
        name, k, p = spec.name, spec.k, self.learners
        if self._renewal(spec):
            return k / math.fsum(1.0 / m for m in self.means), "closed form K / sum_i 1/E[X_i] (renewal, Lemma 4: any distribution, any speeds)"
        iid = self.iid
        if iid is None:
            return None, ""
        where = f"of the {self.family} fit (equal speeds)"
        if name in ("sync", "k_sync") or (name == "k_async" and k == p):
            return expected_order_statistic(iid, k, p), f"closed form E[X_(K:P)] (Lemma 3) {where}"
        if name == "k_async" and iid.name == "exponential":
            return expected_order_statistic(iid, k, p), f"closed form E[X_(K:P)] (Lemma 5, exact for exponential) {where}"
        if name == "k_batch_sync" and (iid.name == "exponential" or k == 1):
            return k_batch_sync_time_per_update(iid, k, p), f"closed form K E[X] / P (Sec. 4.1) {where}"
        return None, ""

    def shifted(self, spec: VariantSpec, extra: float) -> Optional[float]:
        """The closed-form time per update when every compute time is ``extra`` seconds longer, where
        the form stays exact: the renewal form (a shifted time is still a time of any distribution)
        and Lemma 3's order statistics (``E[(X + c)_(K:P)] = E[X_(K:P)] + c``); else None."""
        name, k, p = spec.name, spec.k, self.learners
        if self._renewal(spec):
            return k / math.fsum(1.0 / (m + extra) for m in self.means)
        if self.iid is not None and (name in ("sync", "k_sync") or (name == "k_async" and k == p)):
            return expected_order_statistic(self.iid, k, p) + extra
        return None

    def wasted(self, spec: VariantSpec) -> tuple[Optional[float], str]:
        name, k, p = spec.name, spec.k, self.learners
        if name in ("async", "k_async", "k_batch_async") or (name == "ringmaster" and spec.max_delay is None):
            return 0.0, "exact: nothing is cancelled or discarded"
        if name == "sync" or (name == "k_sync" and k == p):
            return 0.0, "exact: nothing is cancelled"
        if name == "k_sync" and self.iid is not None:
            order = [expected_order_statistic(self.iid, i, p) for i in range(1, k + 1)]
            cancelled = (p - k) * order[-1]
            return cancelled / (math.fsum(order) + cancelled), f"closed form from E[X_(i:P)] of the {self.family} fit"
        return None, ""

    @staticmethod
    def staleness(spec: VariantSpec) -> Optional[str]:
        if spec.name in ("sync", "k_sync", "k_batch_sync", "rennala") or (spec.name == "ringmaster" and spec.max_delay == 1):
            return "exact: only gradients computed at the current parameters are used"
        if spec.name == "k_async" and spec.k == spec.learners:
            return "exact: K = P is p_sync"
        return None


def predict(fit: TraceFit, learners: Optional[int] = None, source: Source = "trace", gradients: int = DEFAULT_GRADIENTS,
            max_k: Optional[int] = None, closed_forms: bool = True, seed: int = 0,
            specs: Optional[Sequence[VariantSpec]] = None, overhead: Optional[Overhead] = None) -> PredictionTable:
    """Predict every configuration of :func:`variant_grid` (or ``specs``) for ``learners`` learners
    (default: the recorded ranks; more learners replay the ranks in turn). ``source``: replay the
    recorded times or the fitted model; ``closed_forms=False`` uses the replay for every number.
    ``overhead`` (:func:`calibrate_overhead`): each row's time per update adds it where the row's
    variant pays it (:meth:`Overhead.extra`): by the closed form on the shifted times where that stays
    exact, else by replaying the shifted times; staleness and wasted work stay those of the compute
    times; ``Prediction.compute_only`` keeps the time from compute alone."""
    count = positive_int("learners", learners) if learners is not None else fit.learners
    if source not in ("trace", "fit"):
        raise ConfigError("source", source, "must be trace or fit")
    if max_k is not None:
        positive_int("max_k", max_k)
    times = fit.trace_source(count) if source == "trace" else fit.model(count)
    exact = _ClosedForms(fit, count, times)
    rows = []
    for spec in specs if specs is not None else variant_grid(count, max_k):
        replayed = replay(spec, times, gradients, seed)
        how = "replay (recorded trace)" if source == "trace" else f"replay ({fit.best.family} fit)"
        time, time_how = exact.time(spec) if closed_forms else (None, "")
        wasted, wasted_how = exact.wasted(spec) if closed_forms else (None, "")
        staleness_how = exact.staleness(spec) if closed_forms else None
        compute_time = time if time is not None else replayed.time_per_update
        methods = {"time": time_how or how, "staleness": staleness_how or how, "wasted": wasted_how or how}
        compute_only: Optional[float] = None
        if overhead is not None:
            per_gradient, per_update = overhead.extra(spec)
            shifted = exact.shifted(spec, per_gradient) if closed_forms and time is not None else None
            if shifted is None:
                shifted = replay(spec, ShiftedTimes(times, per_gradient), gradients, seed).time_per_update
            compute_only, compute_time = compute_time, shifted + per_update
            methods["overhead"] = overhead.how(spec)
        rows.append(Prediction(
            spec=spec,
            time_per_update=compute_time,
            mean_staleness=0.0 if staleness_how else replayed.mean_staleness,
            p99_staleness=0.0 if staleness_how else replayed.p99_staleness,
            wasted_fraction=wasted if wasted is not None else replayed.wasted_fraction,
            methods=methods,
            replayed=replayed,
            compute_only=compute_only,
        ))
    notes = []
    if count != fit.learners:
        notes.append(f"{count} learners replay the {fit.learners} recorded ranks in turn")
        if overhead is not None:
            notes.append(f"the overhead was calibrated on the {overhead.learners} recorded ranks and is applied as it is "
                         f"to {count} learners (a server's work per update may grow with them)")
    return PredictionTable(count, tuple(rows), source, tuple(notes), overhead)


# -- overhead -------------------------------------------------------------------------------------
class ShiftedTimes(ComputeTimeSource):
    """``base``'s compute times, each ``extra`` seconds longer (the per-gradient overhead)."""

    def __init__(self, base: ComputeTimeSource, extra: float) -> None:
        if not (math.isfinite(extra) and extra >= 0):
            raise ConfigError("extra", extra, "must be a finite number of seconds >= 0")
        self.base, self.extra = base, float(extra)
        self.learners = base.learners

    def sample(self, learner: int) -> float:
        return self.base.sample(learner) + self.extra

    def mean(self, learner: int) -> float:
        return self.base.mean(learner) + self.extra

    def seeded(self, seed: int) -> "ShiftedTimes":
        return ShiftedTimes(self.base.seeded(seed), self.extra)

    def state_dict(self) -> dict[str, Any]:
        return self.base.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base.load_state_dict(state)

    def check_learners(self, learners: int) -> None:
        self.base.check_learners(learners)


def recorded_time_per_update(trace: StepTrace, synchronous: bool = False) -> Optional[float]:
    """The recorded run's mean step time (compute, data wait and sync wait; over every rank's steps)
    where each step is one update: a single-device or DDP run, or a parameter server's learners under
    p_sync (``synchronous``); else None."""
    if trace.kind not in ("single", "ddp") and not (trace.kind == "parameter_server" and synchronous):
        return None
    return math.fsum(s.compute_s + s.data_wait_s + s.sync_wait_s for s in trace.records) / len(trace.records)


@dataclass(frozen=True)
class Overhead:
    """What a real update costs beyond the recorded compute times, measured on the recorded run itself
    (:func:`calibrate_overhead`): ``per_gradient`` seconds each gradient costs its learner outside its
    compute (the recorded data wait: fetching the next batch and the loop's own work between steps)
    and ``per_update`` seconds each update costs on its critical path (the rest: the all-reduce, or
    the server's update, its STARTs and the round trip, and the loop's work per step). Their sum is
    ``recorded - predicted``: the recorded time per update over the compute-only p_sync prediction
    for the recorded ranks.

    Who pays what (:meth:`extra`): every computation is ``per_gradient`` longer; a learner that waits
    for an update before it computes again pays ``per_update`` too. So p_sync, k_sync, k_batch_sync
    and Rennala (every learner restarts at the new parameters, or its work is stale) add
    ``per_update`` to each update; k_async (the K learners that pushed wait for the update) adds it
    to each of their computations; k_batch_async, async and Ringmaster (only the learner whose
    gradient completed the update waits) add ``per_update / K`` to every computation on average.
    Rare long pauses that the learners waited through (a parameter server's validation or
    checkpoint) are averaged into ``per_update``."""

    per_gradient: float
    per_update: float
    recorded: float
    predicted: float
    learners: int

    @property
    def total(self) -> float:
        """Seconds per update of the recorded run beyond its compute-only prediction (at least 0)."""
        return self.per_gradient + self.per_update

    def extra(self, spec: VariantSpec) -> tuple[float, float]:
        """(seconds added to every computation, seconds added to every update) under ``spec``."""
        g, u = self.per_gradient, self.per_update
        if spec.name == "k_async":
            return g + u, 0.0
        if spec.name in ("k_batch_async", "async", "ringmaster"):
            return g + u / spec.k, 0.0
        return g, u

    def how(self, spec: VariantSpec) -> str:
        """How the overhead enters ``spec``'s time per update."""
        per_gradient, per_update = self.extra(spec)
        text = f"+ {per_gradient:.3g} s per computation"
        return text + (f", + {per_update:.3g} s per update" if per_update else "")

    def describe(self) -> str:
        return (f"{self.per_gradient:.3g} s per gradient (the recorded data wait) + {self.per_update:.3g} s per update "
                f"(communication and the loop's own work)")


def calibrate_overhead(trace: StepTrace, fit: TraceFit, synchronous: bool = False, source: Source = "trace",
                       gradients: int = DEFAULT_GRADIENTS, seed: int = 0) -> Optional[Overhead]:
    """The overhead of the recorded run (:class:`Overhead`), or None where the trace does not tell the
    real time per update (a compute-time trace; a parameter server's run of another variant than
    p_sync). ``recorded - predicted`` (0 when negative) is split into the ranks' mean recorded data
    wait per step (``per_gradient``, at most the total) and the rest (``per_update``); ``predicted``
    is p_sync on the recorded ranks, as :func:`predict` gives it for ``source``."""
    recorded = recorded_time_per_update(trace, synchronous)
    if recorded is None:
        return None
    fitted = {r.rank for r in fit.ranks}
    steps = [s for s in trace.records if s.rank in fitted]
    if not steps:
        return None
    baseline = predict(fit, source=source, gradients=gradients, seed=seed,
                       specs=[variant_spec("sync", fit.learners)]).baseline.time_per_update
    total = max(0.0, recorded - baseline)
    per_gradient = min(total, math.fsum(s.data_wait_s for s in steps) / len(steps))
    return Overhead(per_gradient, total - per_gradient, recorded, baseline, fit.learners)


# -- echo ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EchoPrediction:
    """What the data waits say about echoing (Choi et al.'s cost model): per rank the fraction of its
    step spent waiting for data; for the run the most data-bound rank's (it sets a synchronous
    run's pace), the echo factor ``auto`` reaches and the bound on echo's speed-up in steps per second."""

    ranks: tuple[int, ...]
    data_wait_fractions: tuple[float, ...]
    max_factor: int = DEFAULT_MAX_FACTOR

    @property
    def data_wait_fraction(self) -> float:
        return max(self.data_wait_fractions, default=0.0)

    @property
    def upstream_over_downstream(self) -> float:
        """``t_upstream / t_downstream = 1 / (1 - f)`` for the run's data-wait fraction ``f``."""
        f = self.data_wait_fraction
        return math.inf if f >= 1 else 1.0 / (1.0 - f)

    def factor(self, fraction: float) -> float:
        """The serves per fresh batch ``auto`` reaches at data-wait ``fraction``: ``min(max_factor, 1 / (1 - f))``."""
        return float(self.max_factor) if fraction >= 1 else min(float(self.max_factor), 1.0 / (1.0 - fraction))

    @property
    def auto_factor(self) -> float:
        return self.factor(self.data_wait_fraction)

    @property
    def speedup_bound(self) -> float:
        """Steps per second with echo over without, at most: ``max(t_up, t_down) / max(t_up / e, t_down)`` at ``auto``'s e."""
        return self.auto_factor

    @property
    def data_bound_ranks(self) -> tuple[int, ...]:
        return tuple(r for r, f in zip(self.ranks, self.data_wait_fractions) if f >= DATA_BOUND)

    @property
    def adds_little(self) -> bool:
        return self.data_wait_fraction < LITTLE_DATA_WAIT


def data_wait_fractions(trace: StepTrace, ranks: Optional[Sequence[int]] = None) -> tuple[float, ...]:
    """Each rank's data wait over its whole step time (compute, data wait, sync wait)."""
    fractions = []
    for rank in ranks if ranks is not None else trace.ranks:
        steps = trace.of_rank(rank)
        total = math.fsum(s.compute_s + s.data_wait_s + s.sync_wait_s for s in steps)
        fractions.append(math.fsum(s.data_wait_s for s in steps) / total if total > 0 else 0.0)
    return tuple(fractions)


def echo_prediction(trace: StepTrace, ranks: Optional[Sequence[int]] = None, max_factor: int = DEFAULT_MAX_FACTOR) -> EchoPrediction:
    """The echo prediction from the recorded data waits of ``ranks`` (default: every rank)."""
    positive_int("max_factor", max_factor)
    chosen = tuple(ranks if ranks is not None else trace.ranks)
    return EchoPrediction(chosen, data_wait_fractions(trace, chosen), max_factor)


def learner_data_time_lists(trace: StepTrace, ranks: Sequence[int], learners: int) -> Optional[list[list[float]]]:
    """Each learner's loader time per fresh batch, from its rank (learners > ranks: the ranks in turn):
    the recorded step times (compute + data wait + sync wait) of a data-bound rank, whose loader set its
    pace; for the others data is always ready (a time of 1e-12 s). None when no rank is data-bound."""
    fractions = data_wait_fractions(trace, ranks)
    if not any(f >= DATA_BOUND for f in fractions):
        return None
    per_rank = []
    for rank, fraction in zip(ranks, fractions):
        if fraction >= DATA_BOUND:
            per_rank.append([max(_NO_DATA_TIME, s.compute_s + s.data_wait_s + s.sync_wait_s) for s in trace.of_rank(rank)])
        else:
            per_rank.append([_NO_DATA_TIME])
    return [per_rank[i % len(ranks)] for i in range(learners)]


def learner_data_times(trace: StepTrace, ranks: Sequence[int], learners: int) -> Optional[TraceComputeTimes]:
    """:func:`learner_data_time_lists` as the data-time source of :class:`LearnerDataStreams`."""
    lists = learner_data_time_lists(trace, ranks, learners)
    return TraceComputeTimes(per_learner=lists, source="recorded data waits") if lists is not None else None


@dataclass(frozen=True)
class CombinedPrediction:
    """A configuration with every learner's recorded data times: without echo and with ``auto`` echo."""

    spec: VariantSpec
    compute_only: float  # the time per update of the prediction table from compute alone (data always ready)
    with_data: Replay
    with_echo: Replay

    @property
    def label(self) -> str:
        return label(self.spec)


def combined(fit: TraceFit, trace: StepTrace, specs: Sequence[VariantSpec], table: Optional[PredictionTable] = None,
             source: Source = "trace", gradients: int = DEFAULT_GRADIENTS, max_factor: int = DEFAULT_MAX_FACTOR,
             seed: int = 0) -> list[CombinedPrediction]:
    """Replay ``specs`` (p_sync is added first when missing) with the learners' data times derived
    from the recorded data waits, without and with ``auto`` echo (issue 24's combined gain); an empty
    list when no rank waited for data."""
    ranks = [r.rank for r in fit.ranks]
    learners = specs[0].learners if specs else table.learners if table is not None else fit.learners
    data_times = learner_data_times(trace, ranks, learners)
    if data_times is None:
        return []
    times = fit.trace_source(learners) if source == "trace" else fit.model(learners)
    if not any(s.name == "sync" for s in specs):
        specs = [variant_spec("sync", learners), *specs]
    results = []
    for spec in specs:
        plain = LearnerDataStreams(learners, data_times, None, seed=seed)
        echoing = LearnerDataStreams(learners, data_times, LearnerEcho("auto", max_factor, seed), seed=seed)
        compute_only = table.row(spec.name, spec.k if spec.name not in ("sync", "async", "ringmaster") else None,
                                 spec.max_delay, spec.stop_stale).compute_time_per_update if table is not None else math.nan
        results.append(CombinedPrediction(spec, compute_only, replay(spec, times, gradients, seed, plain),
                                          replay(spec, times, gradients, seed, echoing)))
    return results
