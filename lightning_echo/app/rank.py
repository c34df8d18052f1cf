"""One rank process of a multi-device run: :func:`main` with ``FOLDER`` as its argument.

Started by the job that supervises the run (:mod:`lightning_echo.app.launch`), never by hand:
``FOLDER`` holds the run's spec; the environment says which rank this is. The rank trains the run
(no Hydra, no checks of the command line, no directories made), writes how it ended into
``FOLDER/rank<N>.json`` and exits with the status a run in one process would have (0, 1, 3 when
diverged, 128 + the signal when interrupted).
"""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from omegaconf import OmegaConf
from typing_extensions import override

from lightning_echo.app.divergence import RunDiverged
from lightning_echo.app.interrupt import RunInterrupted
from lightning_echo.app.job import run_training
from lightning_echo.app.launch import RESUME_ENV, RankRun, RankSpec, SPEC_FILE, outcome_path, watch_launcher
from lightning_echo.app.resume import ResumePoint, resume_point
from lightning_echo.errors import describe_error
from lightning_echo.lightning_namespace import import_lightning, pl
from lightning_echo.records import COMPLETED, DIVERGED, FAILED, INTERRUPTED, write_json

SIGTERMException = import_lightning("utilities.exceptions").SIGTERMException


class RankAgreement(pl.Callback):
    """After every training step the ranks agree whether to stop, with one all-reduce: when the job
    asked any rank to (``stop`` is set), all stop as SIGTERM stops a run (``SIGTERMException``: the
    checkpoint is saved, the run is ``interrupted``); when a callback of any rank set
    ``trainer.should_stop`` (a diverged loss, a data budget), all stop after that step. Either way
    every rank stops after the same step: a rank that went on alone would wait for the others forever."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        flags = torch.tensor([float(self.stop.is_set()), float(trainer.should_stop)], device=pl_module.device)
        asked, should_stop = (bool(flag > 0) for flag in trainer.strategy.reduce(flags, reduce_op="sum"))
        if asked:
            raise SIGTERMException()
        trainer.should_stop = should_stop


def run_rank(folder: Path, global_rank: int, stop: threading.Event) -> tuple[int, dict[str, Any]]:
    """Train this rank's part of the run in ``folder``'s spec; the exit status and the outcome."""
    spec = RankSpec.read(folder / SPEC_FILE)
    cfg = OmegaConf.create(spec.config)
    resume = ResumePoint(Path(spec.checkpoint), spec.step, spec.record_details) if spec.checkpoint else None
    details = spec.record_details
    if os.environ.get(RESUME_ENV) == "1":  # a server started again: from the run's last checkpoint, if any
        resume = resume_point(Path(spec.run_dir))
        details = resume.record()
    rank = RankRun(global_rank, details, callbacks=(RankAgreement(stop),))
    try:
        summary = run_training(cfg, Path(spec.run_dir), group=spec.group, name=spec.name, resume=resume, rank=rank)
    except RunDiverged as error:
        return error.exit_code, {"status": DIVERGED, "divergence": error.described, "hint": error.hint}
    except RunInterrupted as interruption:
        return interruption.exit_code, {"status": INTERRUPTED, "detail": interruption.detail,
                                        "checkpoint": str(interruption.checkpoint) if interruption.checkpoint else None}
    except BaseException as error:  # noqa: BLE001 - reported to the supervising job, which says it in one line
        return 1, {"status": FAILED, "error": describe_error(error), "traceback": traceback.format_exc()}
    return 0, {"status": COMPLETED, "optimizer_steps": summary.optimizer_steps, "fresh_samples": summary.fresh_samples}


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Entry point of a rank process."""
    args = list(sys.argv[1:] if argv is None else argv)
    folder = Path(args[0])
    global_rank = int(os.environ["LOCAL_RANK"])  # one machine: the local rank is the global rank
    stop = threading.Event()
    threading.Thread(target=watch_launcher, args=(sys.stdin.fileno(), stop), daemon=True,
                     name="rank-launcher-watch").start()
    status, outcome = run_rank(folder, global_rank, stop)
    write_json(outcome_path(folder, global_rank), {"rank": global_rank, "at": time.time(), **outcome})
    sys.stdout.flush()
    sys.exit(status)
