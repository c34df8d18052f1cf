"""What each job of a multirun did, kept in the process that launches them (Hydra's basic
launcher runs the jobs one after another in this process), for the per-job status lines, the
final summary, and ``<sweep dir>/sweep.json``: every planned job with its overrides and status,
rewritten as jobs end, so that ``lightning-echo resume`` can finish a sweep that was stopped."""

from __future__ import annotations

import json
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from hydra._internal.config_loader_impl import get_overrides_dirname
from omegaconf import DictConfig

from lightning_echo.app.divergence import RunDiverged
from lightning_echo.app.interrupt import RunInterrupted
from lightning_echo.app.job import RunSummary, run_training
from lightning_echo.app.overrides import parse_overrides
from lightning_echo.app.resume import ResumePoint
from lightning_echo.errors import ConfigError, describe_error
from lightning_echo.records import COMPLETED, DIVERGED, DIVERGED_EXIT_CODE, FAILED, INTERRUPTED, read_json
from lightning_echo.report.build import report_after_sweep

SWEEP_FILE = "sweep.json"
PENDING = "pending"  # a planned job that has not run (yet)


@dataclass
class PlannedJob:
    """A job the sweep will launch: its number, its command-line overrides and its label."""

    number: int
    overrides: list[str]
    name: Optional[str] = None


@dataclass
class JobOutcome:
    """One finished job: ``status`` is ``completed``, ``failed`` or ``interrupted``; ``detail``
    the result or error line."""

    number: int
    overrides: str
    output_dir: Path
    status: str
    detail: str

    def status_line(self) -> str:
        """``[job 3] FAILED algorithm=echo echo.factor=8: <error>``."""
        label = self.overrides or "(no overrides)"
        shown = self.status if self.status == COMPLETED else self.status.upper()
        return f"[job {self.number}] {shown} {label}: {self.detail}"


@dataclass
class SweepLedger:
    """The outcomes of the current multirun, its plan, the sweep directory and its report settings."""

    outcomes: list[JobOutcome] = field(default_factory=list)
    sweep_dir: Optional[Path] = None
    report_settings: dict[str, Any] = field(default_factory=dict)
    plan: list[PlannedJob] = field(default_factory=list)
    interrupted_by: Optional[int] = None  # the signal that stopped the sweep (SIGINT, SIGTERM)

    def reset(self, plan: Optional[list[PlannedJob]] = None) -> None:
        """Forget the previous multirun of this process; ``plan`` is the next one's jobs."""
        self.outcomes.clear()
        self.sweep_dir = None
        self.report_settings = {}
        self.plan = list(plan or [])
        self.interrupted_by = None

    def record(self, outcome: JobOutcome) -> None:
        """Add a finished job and rewrite ``sweep.json`` (a disk that is full is reported and the
        sweep goes on: the summary is printed at the end all the same)."""
        self.outcomes.append(outcome)
        self.write_or_warn()

    def write_or_warn(self) -> None:
        """:meth:`write`, saying in one line when the disk refuses it."""
        try:
            self.write()
        except OSError as error:
            print(f"lightning-echo: warning: cannot write {SWEEP_FILE}: {describe_error(error)}", file=sys.stderr, flush=True)

    @property
    def failed(self) -> list[JobOutcome]:
        """Jobs that ended without completing, other than by an interruption."""
        return [o for o in self.outcomes if o.status not in (COMPLETED, INTERRUPTED)]

    @property
    def interrupted(self) -> list[JobOutcome]:
        return [o for o in self.outcomes if o.status == INTERRUPTED]

    @property
    def not_run(self) -> list[PlannedJob]:
        """Planned jobs that have not run (all that follow an interruption)."""
        ran = {o.number for o in self.outcomes}
        return [job for job in self.plan if job.number not in ran]

    def job_dir(self, number: int) -> Optional[Path]:
        """Where job ``number`` writes (Hydra's default ``<sweep dir>/<job number>``)."""
        return self.sweep_dir / str(number) if self.sweep_dir is not None else None

    def write(self) -> None:
        """Write ``<sweep dir>/sweep.json`` (atomically): every planned job with its status."""
        if self.sweep_dir is None:
            return
        outcomes = {o.number: o for o in self.outcomes}
        jobs = []
        for job in self.plan or [PlannedJob(o.number, [], None) for o in self.outcomes]:
            outcome = outcomes.get(job.number)
            jobs.append({
                "number": job.number, "overrides": job.overrides, "name": job.name,
                "status": outcome.status if outcome else PENDING,
                "output_dir": _relative_to(outcome.output_dir if outcome else self.job_dir(job.number), self.sweep_dir),
                "detail": outcome.detail if outcome else None,
            })
        status = INTERRUPTED if self.interrupted_by is not None else ("running" if self.not_run else "finished")
        content = {"status": status, "interrupted_by": self.signal_name, "jobs": jobs, "updated_at": time.time()}
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        partial = self.sweep_dir / (SWEEP_FILE + ".tmp")
        partial.write_text(json.dumps(content, indent=2, default=str) + "\n")
        partial.replace(self.sweep_dir / SWEEP_FILE)

    @property
    def signal_name(self) -> Optional[str]:
        """``SIGINT`` or ``SIGTERM`` when a signal stopped the sweep."""
        return signal.Signals(self.interrupted_by).name if self.interrupted_by is not None else None

    def summary_lines(self) -> list[str]:
        """A closing summary: counts, then one line per job that failed, was interrupted or did not run."""
        done = sum(o.status == COMPLETED for o in self.outcomes)
        counts = [f"{len(self.plan) or len(self.outcomes)} jobs", f"{done} completed", f"{len(self.failed)} failed"]
        if self.interrupted or self.not_run:
            counts += [f"{len(self.interrupted)} interrupted", f"{len(self.not_run)} not run"]
        lines = [(f"sweep interrupted by {self.signal_name}: " if self.interrupted_by is not None else "sweep: ")
                 + ", ".join(counts) + (f" ({self.sweep_dir})" if self.sweep_dir else "")]
        for outcome in self.failed + self.interrupted:
            lines.append(f"  {outcome.status}: job {outcome.number} ({outcome.overrides or 'no overrides'}): {outcome.detail}"
                         f" [see {outcome.output_dir / 'run.json'}]")
        for job in self.not_run:
            lines.append(f"  not run: job {job.number} ({job.name or ' '.join(job.overrides) or 'no overrides'})")
        if (self.interrupted or self.not_run) and self.sweep_dir is not None:
            lines.append(f"  continue it with: lightning-echo resume {self.sweep_dir}")
        return lines


def job_label(overrides: Sequence[str], exclude_keys: Sequence[str] = (), item_sep: str = ",", kv_sep: str = "=") -> str:
    """A job's label as Hydra makes it (``hydra.job.override_dirname``): its overrides but the
    hydra ones and ``exclude_keys``, sorted."""
    parsed = [o for o in parse_overrides(list(overrides)) if not o.is_hydra_override()]
    return get_overrides_dirname(parsed, list(exclude_keys), item_sep, kv_sep)


def run_sweep_job(cfg: DictConfig, number: int, output_dir: Path, label: str,
                  resume: Optional[ResumePoint] = None) -> tuple[JobOutcome, Optional[RunSummary]]:
    """Run job ``number`` of the sweep in ``LEDGER``, record its outcome and print its status line.

    A job that fails or diverges is recorded and the sweep goes on, so one failure does not hide
    the other jobs' results; an interrupted job is recorded and its RunInterrupted stops the sweep.
    """
    assert LEDGER.sweep_dir is not None
    summary = None
    try:
        summary = run_training(cfg, output_dir, group=LEDGER.sweep_dir.name, name=label or None, resume=resume)
        status, detail = COMPLETED, summary.describe()
    except RunInterrupted as interruption:
        LEDGER.interrupted_by = interruption.signum
        outcome = JobOutcome(number, label, output_dir, INTERRUPTED, interruption.detail)
        LEDGER.record(outcome)
        print(outcome.status_line(), flush=True)
        raise
    except RunDiverged as error:  # recorded like a failure; the next job runs
        status, detail = DIVERGED, str(error)
    except Exception as error:  # noqa: BLE001 - reported per job and in the sweep summary
        status, detail = FAILED, describe_error(error)
    outcome = JobOutcome(number, label, output_dir, status, detail)
    LEDGER.record(outcome)
    print(outcome.status_line(), flush=True)
    return outcome, summary


def finish_sweep() -> int:
    """After a multirun (or when one is interrupted): the comparison report (not after an
    interruption), the summary, ``sweep.json``; the exit status: 128 + the signal when
    interrupted, else 1 when a job failed, else 3 when a job diverged, else 0."""
    if not LEDGER.outcomes and LEDGER.interrupted_by is None:
        return 0
    LEDGER.write_or_warn()
    settings = LEDGER.report_settings
    if LEDGER.interrupted_by is None and settings.get("after_sweep", True) and LEDGER.sweep_dir is not None:
        try:
            report_after_sweep(LEDGER.sweep_dir, settings)
        except OSError as error:
            print(f"lightning-echo: warning: cannot write the sweep's report: {describe_error(error)}",
                  file=sys.stderr, flush=True)
    for line in LEDGER.summary_lines():
        print(line, flush=True)
    if LEDGER.interrupted_by is not None:
        return 128 + LEDGER.interrupted_by
    statuses = {outcome.status for outcome in LEDGER.failed}
    return DIVERGED_EXIT_CODE if statuses == {DIVERGED} else (1 if statuses else 0)


def interrupted_command(interruption: RunInterrupted) -> int:
    """What a command says when a signal stops it: the sweep's summary (what ran, what did not), or
    for a single run one line with where it stopped and how to continue it. Returns the exit
    status, 128 + the signal number."""
    if LEDGER.sweep_dir is not None:
        LEDGER.interrupted_by = interruption.signum
        finish_sweep()
    else:
        hint = f"; continue it with: lightning-echo resume {interruption.run_dir}" if interruption.run_dir else ""
        print(f"lightning-echo: {interruption}{hint}", file=sys.stderr, flush=True)
    return interruption.exit_code


def _relative_to(path: Optional[Path], sweep_dir: Path) -> Optional[str]:
    """``path`` relative to ``sweep_dir`` when inside it (so a copied sweep stays self-contained)."""
    if path is None:
        return None
    try:
        return str(Path(path).resolve().relative_to(Path(sweep_dir).resolve()))
    except ValueError:
        return str(path)


def job_directory(sweep_dir: Path, number: int, recorded: Any) -> Path:
    """Where job ``number`` of the sweep in ``sweep_dir`` lives, from its ``sweep.json`` entry: a
    path relative to the sweep (or, as older sweeps wrote it, an absolute one inside the sweep, or
    naming a job directory that a copy of the sweep holds); anything that leads outside the sweep
    is refused in one line (resume never trains outside the sweep it was given)."""
    sweep = Path(sweep_dir).resolve()
    path = Path(str(recorded))
    candidate = (path if path.is_absolute() else sweep / path).resolve()
    if path.is_absolute() and not candidate.is_relative_to(sweep) and (sweep / path.name).is_dir():
        candidate = (sweep / path.name).resolve()  # a copied sweep: its own job directory
    if not candidate.is_relative_to(sweep) or candidate == sweep:
        raise ConfigError("resume", str(sweep_dir), f"its {SWEEP_FILE} puts job {number} in {recorded}, outside the "
                          "sweep directory; resume only trains inside the sweep it is given")
    return candidate


def read_sweep_file(sweep_dir: Path) -> dict[str, Any]:
    """The parsed ``sweep.json`` of a sweep directory."""
    return read_json(Path(sweep_dir) / SWEEP_FILE)


LEDGER = SweepLedger()
