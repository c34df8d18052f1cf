"""The ``lightning-echo`` command: Hydra app for training runs and sweeps.

    lightning-echo                                 # default job: synchronous vs echoed training
                                                   # on throttled synthetic data, table + report
    lightning-echo experiment=mnist_logreg data.root=~/data   # one run of a preset
    lightning-echo -m algorithm=sync,echo echo.factor=2,4 seed=0,1   # a sweep, then its report
    lightning-echo experiment=single trainer=ddp   # on 2 devices: one process each (app/launch.py)
    lightning-echo report DIR [DIR ...]            # HTML/PNG comparison report of finished runs
    lightning-echo resume DIR [DIR ...]            # continue interrupted runs or sweeps
    lightning-echo advise RUN_DIR|TRACE            # what each straggler remedy and echo would gain on a recorded run
    lightning-echo --help                          # Hydra's help: groups and options
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Iterator, NoReturn, Optional, Sequence

import hydra
from hydra._internal.utils import get_args_parser
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from lightning_echo.advisor.cli import advise_main
from lightning_echo.app.config import CONFIG_NAME, CONFIG_PATH, VERSION_BASE
from lightning_echo.app.divergence import RunDiverged
from lightning_echo.app.interrupt import SIGNALS, RunInterrupted
from lightning_echo.app.job import run_training
from lightning_echo.app.launch import RankFailed
from lightning_echo.app.preflight import preflight
from lightning_echo.app.resume_command import resume_main
from lightning_echo.app.sweep import LEDGER, PlannedJob, finish_sweep, interrupted_command, job_label, run_sweep_job
from lightning_echo.errors import LightningEchoError, describe_error
from lightning_echo.records import RUN_FILE, is_storage_full
from lightning_echo.report.cli import report_main

PROG = "lightning-echo"
log = logging.getLogger(PROG)


def _error_exit(error: Exception) -> NoReturn:
    print(f"{PROG}: error: {error}", file=sys.stderr)
    sys.exit(2)


@hydra.main(config_path=CONFIG_PATH, config_name=CONFIG_NAME, version_base=VERSION_BASE)
def _hydra_job(cfg: DictConfig) -> Optional[float]:
    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    if hydra_cfg.mode != RunMode.MULTIRUN:
        try:
            summary = run_training(cfg, output_dir, group=output_dir.name)
        except RunDiverged as error:
            print(f"{PROG}: {error}", file=sys.stderr)
            print(f"outputs: {output_dir}")
            sys.exit(error.exit_code)
        except RankFailed as error:  # one process of a multi-device run failed; run.json has its traceback
            print(f"{PROG}: {error} [see {output_dir / RUN_FILE}]", file=sys.stderr)
            sys.exit(1)
        except LightningEchoError as error:
            _error_exit(error)
        except OSError as error:
            if not is_storage_full(error):
                raise
            print(f"{PROG}: error: cannot write the run's outputs in {output_dir}: {describe_error(error)}; "
                  f"{RUN_FILE} says failed where it could be written", file=sys.stderr)
            sys.exit(1)
        print(summary.describe())
        print(f"outputs: {output_dir}")
        return summary.final_val_loss
    # A multirun: every job shares the sweep's group id; each job's outcome is recorded in the
    # ledger (and <sweep dir>/sweep.json), a failing job does not stop the others.
    number = int(hydra_cfg.job.num)
    if LEDGER.sweep_dir is None:  # the first job: the sweep's directory, settings and job labels
        LEDGER.sweep_dir = Path(hydra_cfg.sweep.dir)
        LEDGER.report_settings = OmegaConf.to_container(cfg.get("report") or {}, resolve=True)
        naming = hydra_cfg.job.config.override_dirname
        for job in LEDGER.plan:
            job.name = job_label(job.overrides, naming.exclude_keys, naming.item_sep, naming.kv_sep)
    planned = next((job for job in LEDGER.plan if job.number == number), None)
    if planned is None:
        LEDGER.plan.append(planned := PlannedJob(number, []))
    planned.overrides = list(hydra_cfg.overrides.task)  # what Hydra ran, for a resume
    planned.name = hydra_cfg.job.override_dirname
    _, summary = run_sweep_job(cfg, number, output_dir, planned.name)
    return summary.final_val_loss if summary is not None else None


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Entry point of the ``lightning-echo`` console script and ``python -m lightning_echo``."""
    args = list(sys.argv[1:] if argv is None else argv)
    commands = {"report": report_main, "resume": resume_main, "advise": advise_main}
    if args[:1] and args[0] in commands:
        status = commands[args[0]](args[1:])
        if status:
            sys.exit(status)
        return
    with SIGNALS:
        try:
            status = _train(args)
        except RunInterrupted as interruption:
            status = interrupted_command(interruption)
    if status:
        sys.exit(status)


def _train(args: list[str]) -> int:
    """Check the command line, run its jobs with Hydra; the exit status."""
    LEDGER.reset()
    parsed = get_args_parser().parse_args(args)
    hydra_only = parsed.help or parsed.hydra_help or parsed.cfg or parsed.info or parsed.shell_completion
    if not hydra_only:
        try:
            jobs = preflight(parsed.overrides, multirun=parsed.multirun)
        except LightningEchoError as error:
            _error_exit(error)
        LEDGER.reset(plan=[PlannedJob(number, job) for number, job in enumerate(jobs)])
    sys.argv = [PROG] + args
    try:
        with _hydra_raises():
            _hydra_job()
    except OSError as error:  # Hydra's own writes (a job's .hydra/ files) on a full disk
        if not is_storage_full(error):
            raise
        status = finish_sweep()  # the jobs that ran, summarised; sweep.json where it can be written
        print(f"{PROG}: error: cannot write the run's files: {describe_error(error)}", file=sys.stderr)
        return status or 1
    return finish_sweep()


@contextlib.contextmanager
def _hydra_raises() -> Iterator[None]:
    """Let an error that escapes Hydra's launcher reach this process (Hydra would print it as a
    traceback and exit), so that a full disk ends the command with its summary and one line."""
    saved = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved


if __name__ == "__main__":
    main()
