"""The ``lightning-echo`` command: Hydra app for training runs and sweeps.

    lightning-echo                                 # default job: synchronous vs echoed training
                                                   # on throttled synthetic data, table + report
    lightning-echo experiment=mnist_logreg data.root=~/data   # one run of a preset
    lightning-echo -m algorithm=sync,echo echo.factor=2,4 seed=0,1   # a sweep, then its report
    lightning-echo report DIR [DIR ...]            # HTML/PNG comparison report of finished runs
    lightning-echo --help                          # Hydra's help: groups and options
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import NoReturn, Optional, Sequence

import hydra
from hydra._internal.utils import get_args_parser
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from lightning_echo.app.config import CONFIG_NAME, CONFIG_PATH, VERSION_BASE
from lightning_echo.app.job import run_training
from lightning_echo.app.preflight import preflight
from lightning_echo.app.sweep import LEDGER, JobOutcome
from lightning_echo.errors import LightningEchoError, describe_error
from lightning_echo.report.build import report_after_sweep
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
        except LightningEchoError as error:
            _error_exit(error)
        print(summary.describe())
        print(f"outputs: {output_dir}")
        return summary.final_val_loss
    # A multirun: every job shares the sweep's group id; a failing job is recorded and the
    # sweep goes on, so one failure does not hide the other jobs' results.
    sweep_dir = Path(hydra_cfg.sweep.dir)
    overrides = hydra_cfg.job.override_dirname
    LEDGER.sweep_dir = sweep_dir
    LEDGER.report_settings = OmegaConf.to_container(cfg.get("report") or {}, resolve=True)
    summary = None
    try:
        summary = run_training(cfg, output_dir, group=sweep_dir.name, name=overrides or None)
        status, detail = "completed", summary.describe()
    except Exception as error:  # noqa: BLE001 - reported per job and in the sweep summary
        status, detail = "failed", describe_error(error)
    outcome = JobOutcome(int(hydra_cfg.job.num), overrides, output_dir, status, detail)
    LEDGER.record(outcome)
    print(outcome.status_line(), flush=True)
    return summary.final_val_loss if summary is not None else None


def _finish_sweep() -> int:
    """After a multirun: the per-sweep summary, the comparison report; the exit status."""
    if not LEDGER.outcomes:
        return 0
    settings = LEDGER.report_settings
    if settings.get("after_sweep", True) and LEDGER.sweep_dir is not None:
        report_after_sweep(LEDGER.sweep_dir, settings)
    for line in LEDGER.summary_lines():
        print(line)
    return 1 if LEDGER.failed else 0


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Entry point of the ``lightning-echo`` console script and ``python -m lightning_echo``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["report"]:
        status = report_main(args[1:])
        if status:
            sys.exit(status)
        return
    LEDGER.outcomes.clear()
    LEDGER.sweep_dir = None
    parsed = get_args_parser().parse_args(args)
    hydra_only = parsed.help or parsed.hydra_help or parsed.cfg or parsed.info or parsed.shell_completion
    if not hydra_only:
        try:
            preflight(parsed.overrides, multirun=parsed.multirun)
        except LightningEchoError as error:
            _error_exit(error)
    sys.argv = [PROG] + args
    _hydra_job()
    status = _finish_sweep()
    if status:
        sys.exit(status)


if __name__ == "__main__":
    main()
