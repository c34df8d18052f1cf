"""The metrics a parameter-server run logs per update beyond the ``stale/*`` ones both backends
log, from the server's own records, and the counters a resumed run carries over."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from lightning_echo.metric_names import LearnerData, ParameterServer
from lightning_echo.stragglers.processes.fresh import PER_LEARNER
from lightning_echo.stragglers.processes.server import ServerReport, UpdateRecord

COUNTERS = ("gradients_used", "gradients_discarded", "computations_cancelled", "cancelled_arrived")
# Each per-learner list of ServerReport (fresh.PER_LEARNER) and its metric name.
LEARNER_METRICS = dict(zip(PER_LEARNER, (ParameterServer.LEARNER_FRESH_GRADIENTS, LearnerData.LEARNER_ECHOED_GRADIENTS,
                                         LearnerData.LEARNER_FRESH_SAMPLES, LearnerData.LEARNER_DATA_WAIT_S)))


@dataclass
class CarriedCounts:
    """Counters of the run's earlier segments (before a resume), added to this segment's: the
    run's totals in ``counts``, and per learner (``per_learner``: one list per name of
    :data:`~lightning_echo.stragglers.processes.fresh.PER_LEARNER`)."""

    counts: dict[str, int] = field(default_factory=lambda: {name: 0 for name in COUNTERS})
    per_learner: dict[str, list[float]] = field(default_factory=lambda: {name: [] for name in PER_LEARNER})

    def total(self, report: ServerReport, name: str) -> int:
        """``report``'s counter ``name`` plus what earlier segments counted."""
        return self.counts.get(name, 0) + int(getattr(report, name))

    def learner_totals(self, report: ServerReport, name: str) -> list[float]:
        """``report``'s per-learner list ``name`` plus what earlier segments counted (as long as
        the longer of the two)."""
        now, before = list(getattr(report, name)), self.per_learner.get(name, [])
        width = max(len(now), len(before))
        now += [0] * (width - len(now))
        return [value + (before[i] if i < len(before) else 0) for i, value in enumerate(now)]

    def totals(self, report: ServerReport) -> dict[str, Any]:
        """Every counter, this segment's plus the earlier ones' (what a checkpoint stores)."""
        return {**{name: self.total(report, name) for name in COUNTERS},
                **{name: self.learner_totals(report, name) for name in PER_LEARNER}}

    @classmethod
    def from_totals(cls, totals: Mapping[str, Any]) -> "CarriedCounts":
        """The counters a checkpoint stored (one written before the per-learner counters: zeros)."""
        return cls({name: int(totals.get(name, 0)) for name in COUNTERS},
                   {name: list(totals.get(name, [])) for name in PER_LEARNER})


def process_metrics(record: UpdateRecord, report: ServerReport, carried: CarriedCounts, *, loss: float) -> dict[str, float]:
    """What one applied update logs beyond the ``stale/*`` metrics both backends log
    (:meth:`~lightning_echo.stragglers.base.StragglerStrategy._record_update`).

    ``ps/updates_per_s`` and each learner's ``ps/learner_<i>/gradients_per_s`` (gradients it
    delivered, used or not) are rates over this segment's wall-clock time since the first START;
    ``ps/lost_learners`` and ``ps/live_learners`` are the learners lost and alive now, ``ps/joins``
    the learners that joined since the start (restarted ones; ``stale/k`` is K, lowered while
    learners are lost with ``shrink_k``), ``ps/version`` the server's version (a restarted server
    skips the versions its predecessor made after its checkpoint, so it never goes back),
    ``ps/bytes_per_s`` the server's traffic and, once the first learner's join timed the raw link
    (``ps/link_bytes_per_s``), ``ps/link_fraction``: near 1, the server's link limits the run;
    ``ps/cancelled_arrived`` counts the whole run (gradients of cancelled computations that
    arrived anyway); ``ps/loss`` is the mean training loss of the update's gradients, each at the
    parameters its learner read. Over the gradients used in the whole run (across resumes):
    ``ps/fresh_gradients`` and ``stale/echoed_gradients`` (computed on a fresh batch, on an echo),
    ``stale/data_wait_s`` (seconds the learners waited for their loaders, summed), and per learner
    ``ps/learner_<i>/fresh_gradients``, ``stale/learner_<i>/echoed_gradients``, ``.../fresh_samples``
    and ``.../data_wait_s``; the cluster's fresh samples are ``progress/fresh_samples``.
    """
    seconds = report.wall_s
    metrics = {
        ParameterServer.UPDATES_PER_S: report.updates / seconds if seconds > 0 else 0.0,
        ParameterServer.LOSS: float(loss),
        ParameterServer.GRADIENTS: float(len(record.staleness)),
        ParameterServer.LOST_LEARNERS: float(len(report.lost)),
        ParameterServer.LIVE_LEARNERS: float(report.live),
        ParameterServer.JOINS: float(report.joins),
        ParameterServer.VERSION: float(record.version),
        ParameterServer.BYTES_PER_S: report.bytes_per_s,
        ParameterServer.CANCELLED_ARRIVED: float(carried.total(report, "cancelled_arrived")),
    }
    if report.link_bytes_per_s > 0:
        metrics[ParameterServer.LINK_BYTES_PER_S] = report.link_bytes_per_s
        metrics[ParameterServer.LINK_FRACTION] = report.link_fraction
    for learner, pushed in enumerate(report.pushes_per_learner):
        metrics[ParameterServer.LEARNER_GRADIENTS_PER_S.format(learner=learner)] = pushed / seconds if seconds > 0 else 0.0
    if not report.fresh_gradients_per_learner:
        return metrics  # the learners did not say what their gradients were computed on
    totals = {name: carried.learner_totals(report, name) for name in PER_LEARNER}
    metrics[ParameterServer.FRESH_GRADIENTS] = float(sum(totals["fresh_gradients_per_learner"]))
    metrics[LearnerData.ECHOED_GRADIENTS] = float(sum(totals["echoed_gradients_per_learner"]))
    metrics[LearnerData.DATA_WAIT_S] = float(sum(totals["data_wait_s_per_learner"]))
    for name, pattern in LEARNER_METRICS.items():
        for learner, value in enumerate(totals[name]):
            metrics[pattern.format(learner=learner)] = float(value)
    return metrics
