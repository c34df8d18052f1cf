"""``lightning-echo resume DIR [DIR ...]``: continue interrupted runs and sweeps.

A run directory is continued from ``checkpoints/last.ckpt`` with its saved config (started over
when no checkpoint was saved); a sweep directory has each job that did not complete continued the
same way, and each job that never started run, then its summary and report as after any sweep.
Completed runs are left as they are. Every run and job is checked before any starts.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lightning_echo.app.config import compose_config
from lightning_echo.app.trust import TRUST_FLAG, check_trusted
from lightning_echo.app.divergence import RunDiverged
from lightning_echo.app.interrupt import SIGNALS, RunInterrupted
from lightning_echo.app.overrides import parse_overrides
from lightning_echo.app.job import run_training
from lightning_echo.app.launch import RankFailed
from lightning_echo.app.preflight import validate_config
from lightning_echo.app.resume import (
    FINAL_STATUSES,
    ResumePoint,
    check_not_running_elsewhere,
    claim_directory,
    is_run_dir,
    resume_point,
    save_config,
    saved_config,
)
from lightning_echo.app.sweep import (
    LEDGER,
    SWEEP_FILE,
    JobOutcome,
    PlannedJob,
    finish_sweep,
    interrupted_command,
    job_directory,
    read_sweep_file,
    run_sweep_job,
)
from lightning_echo.errors import ConfigError, LightningEchoError, one_line
from lightning_echo.records import RUN_FILE, read_run_record

PROG = "lightning-echo resume"


@dataclass
class RunToResume:
    """A run directory, what its run.json says, and (unless it is done) its config and resume point."""

    run_dir: Path
    status: str
    group: str
    name: Optional[str]
    error: Optional[str] = None
    cfg: Optional[DictConfig] = None
    point: Optional[ResumePoint] = None
    overrides: Sequence[str] = ()  # for a sweep job that never started

    @property
    def done(self) -> bool:
        return self.status in FINAL_STATUSES

    def describe_start(self) -> str:
        if self.point is None or self.point.checkpoint is None:
            return f"starting {self.run_dir} over (no checkpoint)" if self.status != "pending" else f"starting {self.run_dir}"
        return f"resuming {self.run_dir} from {self.point.checkpoint} (step {self.point.step})"


@dataclass
class SweepToResume:
    """A sweep directory and every job of its plan."""

    sweep_dir: Path
    jobs: list[tuple[PlannedJob, RunToResume]]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Continue interrupted runs (run directories) and sweeps "
                                "(sweep directories) from their last checkpoint, with the config they were started with.")
    p.add_argument("paths", nargs="+", type=Path, help="run or sweep directories")
    p.add_argument(TRUST_FLAG, action="store_true", dest="trust_config",
                   help="build also what the saved config names beyond the packaged configs' callables and "
                        "torch.optim (only for run directories you trust: a config's _target_ is imported and called)")
    return p


def plan_run(run_dir: Path, trust_config: bool = False) -> RunToResume:
    """Check a run directory and find where it resumes (raises ConfigError with one line).
    Without ``trust_config``, a saved config naming a callable the packaged configs do not is refused."""
    try:
        record = read_run_record(run_dir)
    except (OSError, ValueError) as error:
        raise ConfigError("resume", str(run_dir), f"cannot read its {RUN_FILE}: {one_line(error, max_lines=1)}") from None
    status = str(record.get("status"))
    run = RunToResume(run_dir, status, str(record.get("group") or run_dir.name), record.get("name"), record.get("error"))
    if run.done:
        return run
    check_not_running_elsewhere(run_dir)
    claim_directory(run_dir)
    run.cfg = saved_config(run_dir)
    if not trust_config:
        check_trusted(run.cfg, run_dir)
    validate_config(run.cfg)
    run.point = resume_point(run_dir)
    return run


def plan_sweep(sweep_dir: Path, trust_config: bool = False) -> SweepToResume:
    """Every job of a sweep directory: its plan from ``sweep.json`` (or, for a sweep without one,
    the job directories found in it)."""
    if (sweep_dir / SWEEP_FILE).is_file():
        claim_directory(sweep_dir)
        try:
            planned = [(PlannedJob(int(job["number"]), list(job["overrides"]), job.get("name")),
                        job_directory(sweep_dir, int(job["number"]), job["output_dir"]))
                       for job in read_sweep_file(sweep_dir)["jobs"]]
        except ConfigError:
            raise
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ConfigError("resume", str(sweep_dir), f"cannot read its {SWEEP_FILE}: {one_line(error, max_lines=1)}") from None
    else:
        numbered = sorted((int(p.name), p) for p in sweep_dir.iterdir() if p.name.isdigit() and is_run_dir(p))
        planned = [(PlannedJob(number, [], None), path) for number, path in numbered]
    if not planned:
        raise ConfigError("resume", str(sweep_dir), f"neither a run directory ({RUN_FILE}) nor a sweep directory "
                          f"({SWEEP_FILE} or numbered job directories)")
    jobs = []
    for job, output_dir in planned:
        if is_run_dir(output_dir):
            jobs.append((job, plan_run(output_dir, trust_config)))
            continue
        overrides = [o.input_line for o in parse_overrides(job.overrides) if not o.is_hydra_override()]
        try:
            cfg = compose_config(overrides)
        except (HydraException, OmegaConfBaseException) as error:
            raise ConfigError(f"job {job.number}", " ".join(overrides), one_line(error, max_lines=2)) from None
        if not trust_config:
            check_trusted(cfg, sweep_dir)
        validate_config(cfg)
        jobs.append((job, RunToResume(output_dir, "pending", sweep_dir.name, job.name, None, cfg, None, job.overrides)))
    return SweepToResume(sweep_dir, jobs)


def resume_run(run: RunToResume) -> int:
    """Continue one run; the exit status (0 completed, 3 diverged)."""
    if run.done:
        print(f"{run.run_dir}: {run.status}; nothing to resume")
        return 0
    assert run.cfg is not None
    print(run.describe_start(), flush=True)
    try:
        summary = run_training(run.cfg, run.run_dir, group=run.group, name=run.name, resume=run.point)
    except RunDiverged as error:
        print(f"lightning-echo: {error}", file=sys.stderr)
        return error.exit_code
    except RankFailed as error:  # one process of a multi-device run failed; run.json has its traceback
        print(f"lightning-echo: {error} [see {run.run_dir / RUN_FILE}]", file=sys.stderr)
        return 1
    print(summary.describe())
    print(f"outputs: {run.run_dir}")
    return 0


def resume_sweep(sweep: SweepToResume) -> int:
    """Continue every job of a sweep that did not complete, then summarise and report as a sweep does."""
    LEDGER.reset(plan=[job for job, _ in sweep.jobs])
    LEDGER.sweep_dir = sweep.sweep_dir
    configs = [run.cfg for _, run in sweep.jobs if run.cfg is not None]
    LEDGER.report_settings = OmegaConf.to_container(configs[0].get("report") or {}, resolve=True) if configs else {}
    for job, run in sweep.jobs:
        label = job.name or run.name or ""
        if run.done:
            LEDGER.record(JobOutcome(job.number, label, run.run_dir, run.status, run.error or f"{run.status} earlier"))
            continue
        assert run.cfg is not None
        print(run.describe_start(), flush=True)
        if run.status == "pending":
            save_config(run.cfg, run.run_dir, run.overrides)
        run_sweep_job(run.cfg, job.number, run.run_dir, label, resume=run.point)
    return finish_sweep()


def resume_main(argv: Sequence[str]) -> int:
    """Run the resume command; returns the exit status (2 for bad input, printed as one line)."""
    args = parser().parse_args(list(argv))
    with SIGNALS:
        try:
            plans: list[Union[RunToResume, SweepToResume]] = []
            for path in args.paths:
                if not path.is_dir():
                    raise ConfigError("resume", str(path), "must be a run or sweep directory")
                plans.append(plan_run(path, args.trust_config) if is_run_dir(path) else plan_sweep(path, args.trust_config))
        except LightningEchoError as error:
            print(f"lightning-echo: error: {error}", file=sys.stderr)
            return 2
        except RunInterrupted as interruption:
            return interruption.exit_code
        status = 0
        try:
            for plan in plans:
                LEDGER.reset()
                status = max(status, resume_run(plan) if isinstance(plan, RunToResume) else resume_sweep(plan))
        except RunInterrupted as interruption:
            return interrupted_command(interruption)
    return status
