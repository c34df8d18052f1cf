"""The ``lightning-echo`` command: Hydra app for training runs and sweeps.

    lightning-echo                                 # default job on the embedded synthetic data
    lightning-echo data=mnist data.root=~/data model=cnn trainer.max_steps=500
    lightning-echo -m model=logreg,mlp seed=0,1    # 4 jobs, each in its own output directory
    lightning-echo --help                          # Hydra's help: groups and options
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import NoReturn, Optional, Sequence

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from lightning_echo.app.config import CONFIG_NAME, CONFIG_PATH, VERSION_BASE
from lightning_echo.errors import LightningEchoError

PROG = "lightning-echo"
log = logging.getLogger(PROG)


def _error_exit(error: Exception) -> NoReturn:
    print(f"{PROG}: error: {error}", file=sys.stderr)
    sys.exit(2)


@hydra.main(config_path=CONFIG_PATH, config_name=CONFIG_NAME, version_base=VERSION_BASE)
def _hydra_job(cfg: DictConfig) -> Optional[float]:
    from lightning_echo.app.job import run_training

    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        summary = run_training(cfg, output_dir)
    except LightningEchoError as error:
        if not multirun:
            _error_exit(error)
        log.error("job %s failed: %s", hydra_cfg.job.num, error)
        raise
    print(summary.describe())
    print(f"outputs: {output_dir}")
    return summary.final_val_loss


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Entry point of the ``lightning-echo`` console script and ``python -m lightning_echo``."""
    args = list(sys.argv[1:] if argv is None else argv)
    from hydra._internal.utils import get_args_parser

    parsed = get_args_parser().parse_args(args)
    hydra_only = parsed.help or parsed.hydra_help or parsed.cfg or parsed.info or parsed.shell_completion
    if not hydra_only:
        from lightning_echo.app.preflight import preflight

        try:
            preflight(parsed.overrides, multirun=parsed.multirun)
        except LightningEchoError as error:
            _error_exit(error)
    sys.argv = [PROG] + args
    _hydra_job()


if __name__ == "__main__":
    main()
