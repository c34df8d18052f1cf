"""The metrics a parameter-server run logs per update beyond the ``stale/*`` ones both backends
log, from the server's own records, and the counters a resumed run carries over."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from lightning_echo.metric_names import ParameterServer
from lightning_echo.stragglers.processes.server import ServerReport, UpdateRecord

COUNTERS = ("gradients_used", "gradients_discarded", "computations_cancelled", "cancelled_arrived")


@dataclass
class CarriedCounts:
    """Counters of the run's earlier segments (before a resume), added to this segment's."""

    counts: dict[str, int] = field(default_factory=lambda: {name: 0 for name in COUNTERS})

    def total(self, report: ServerReport, name: str) -> int:
        """``report``'s counter ``name`` plus what earlier segments counted."""
        return self.counts.get(name, 0) + int(getattr(report, name))

    def totals(self, report: ServerReport) -> dict[str, int]:
        """Every counter, this segment's plus the earlier ones' (what a checkpoint stores)."""
        return {name: self.total(report, name) for name in COUNTERS}

    @classmethod
    def from_totals(cls, totals: Mapping[str, int]) -> "CarriedCounts":
        return cls({name: int(totals.get(name, 0)) for name in COUNTERS})


def process_metrics(record: UpdateRecord, report: ServerReport, carried: CarriedCounts, *, loss: float) -> dict[str, float]:
    """What one applied update logs beyond the ``stale/*`` metrics both backends log
    (:meth:`~lightning_echo.stragglers.base.StragglerStrategy._record_update`).

    ``ps/updates_per_s`` and each learner's ``ps/learner_<i>/gradients_per_s`` (gradients it
    delivered, used or not) are rates over this segment's wall-clock time since the first START;
    ``ps/cancelled_arrived`` counts the whole run (gradients of cancelled computations that
    arrived anyway); ``ps/loss`` is the mean training loss of the update's gradients, each at the
    parameters its learner read.
    """
    seconds = report.wall_s
    metrics = {
        ParameterServer.UPDATES_PER_S: report.updates / seconds if seconds > 0 else 0.0,
        ParameterServer.LOSS: float(loss),
        ParameterServer.GRADIENTS: float(len(record.staleness)),
        ParameterServer.LOST_LEARNERS: float(len(report.lost)),
        ParameterServer.CANCELLED_ARRIVED: float(carried.total(report, "cancelled_arrived")),
    }
    for learner, pushed in enumerate(report.pushes_per_learner):
        metrics[ParameterServer.LEARNER_GRADIENTS_PER_S.format(learner=learner)] = pushed / seconds if seconds > 0 else 0.0
    return metrics
