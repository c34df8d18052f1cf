"""What each job of a multirun did, kept in the process that launches them (Hydra's basic
launcher runs the jobs one after another in this process), for the per-job status lines and the
final summary of failed jobs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional


@dataclass
class JobOutcome:
    """One finished job: ``status`` is ``completed`` or ``failed``; ``detail`` the result or error line."""

    number: int
    overrides: str
    output_dir: Path
    status: str
    detail: str

    def status_line(self) -> str:
        """``[job 3] FAILED algorithm=echo echo.factor=8: <error>``."""
        label = self.overrides or "(no overrides)"
        return f"[job {self.number}] {self.status.upper() if self.status == 'failed' else self.status} {label}: {self.detail}"


@dataclass
class SweepLedger:
    """The outcomes of the current multirun, plus the sweep directory and its report settings."""

    outcomes: list[JobOutcome] = field(default_factory=list)
    sweep_dir: Optional[Path] = None
    report_settings: dict[str, Any] = field(default_factory=dict)

    def record(self, outcome: JobOutcome) -> None:
        self.outcomes.append(outcome)

    @property
    def failed(self) -> list[JobOutcome]:
        return [o for o in self.outcomes if o.status != "completed"]

    def summary_lines(self) -> list[str]:
        """A closing summary: counts, then one line per failed job with where its traceback is."""
        done = len(self.outcomes) - len(self.failed)
        lines = [f"sweep: {len(self.outcomes)} jobs, {done} completed, {len(self.failed)} failed"
                 + (f" ({self.sweep_dir})" if self.sweep_dir else "")]
        for outcome in self.failed:
            lines.append(f"  failed: job {outcome.number} ({outcome.overrides or 'no overrides'}): {outcome.detail}"
                         f" [see {outcome.output_dir / 'run.json'}]")
        return lines


LEDGER = SweepLedger()
