"""The metrics a parameter-server run logs per update, from the server's own records.

Names shared with the simulated learners (``stale/*``) mean the same thing there, so reports
compare real and simulated runs on them; ``ps/*`` exist only on real processes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from lightning_echo.ps.server import ServerReport, UpdateRecord

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


def update_metrics(
    record: UpdateRecord,
    report: ServerReport,
    carried: CarriedCounts,
    *,
    loss: float,
    step_factor: float,
    lr: float,
) -> dict[str, float]:
    """What one applied update logs.

    ``ps/updates_per_s`` and each learner's ``ps/learner_<i>/gradients_per_s`` (gradients it
    delivered, used or not) are rates over this segment's wall-clock time since the first START;
    ``stale/staleness_mean`` / ``stale/staleness_max`` are over the update's gradients;
    ``stale/discarded``, ``stale/cancelled`` (computations cancelled at updates) and
    ``ps/cancelled_arrived`` (their gradients that arrived anyway) count the whole run;
    ``ps/loss`` is the mean training loss of the update's gradients, each at the parameters its
    learner read.
    """
    seconds = report.wall_s
    staleness = record.staleness
    metrics = {
        "ps/updates_per_s": report.updates / seconds if seconds > 0 else 0.0,
        "ps/loss": float(loss),
        "ps/gradients": float(len(staleness)),
        "ps/lost_learners": float(len(report.lost)),
        "stale/staleness_mean": sum(staleness) / len(staleness) if staleness else 0.0,
        "stale/staleness_max": float(max(staleness)) if staleness else 0.0,
        "stale/step_factor": float(step_factor),
        "stale/lr": float(lr),
        "stale/discarded": float(carried.total(report, "gradients_discarded")),
        "stale/cancelled": float(carried.total(report, "computations_cancelled")),
        "ps/cancelled_arrived": float(carried.total(report, "cancelled_arrived")),
    }
    for learner, pushed in enumerate(report.pushes_per_learner):
        metrics[f"ps/learner_{learner}/gradients_per_s"] = pushed / seconds if seconds > 0 else 0.0
    return metrics
