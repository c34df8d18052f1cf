"""Continue interrupted runs from their last checkpoint, with the config they were started with.

A run directory holds ``.hydra/config.yaml`` (the composed config), ``run.json`` and
``checkpoints/last.ckpt`` (:mod:`lightning_echo.app.checkpoint`). Resuming it trains on from that
checkpoint into the same directory: ``metrics.csv`` keeps the rows logged up to the checkpoint,
``run.json`` lists the resumes. A sweep directory's ``sweep.json`` lists every planned job:
resuming it continues each job that did not complete, starting the ones that never ran.
"""

from __future__ import annotations

import csv
import os
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from hydra.core.override_parser.types import Override
from omegaconf import DictConfig, OmegaConf

from lightning_echo.app.checkpoint import last_checkpoint_path
from lightning_echo.errors import ConfigError, one_line
from lightning_echo.lightning_namespace import pl
from lightning_echo.records import COMPLETED, RUN_FILE, RUNNING, read_run_record

CSVLogger, Logger = pl.loggers.CSVLogger, pl.loggers.Logger

SAVED_CONFIG = Path(".hydra") / "config.yaml"
CHECKPOINT_KEYS = ("ckpt_path", "trainer.ckpt_path", "resume_from_checkpoint", "trainer.resume_from_checkpoint")
# run.json fields that describe one segment of a run; everything else is carried across resumes.
_SEGMENT_FIELDS = ("status", "group", "name", "config", "error", "traceback", "updated_at", "pid", "host")
# Statuses a resume does not continue: done, or bound to end the same way again.
FINAL_STATUSES = (COMPLETED, "diverged")


def refuse_checkpoint_overrides(overrides: Sequence[Override]) -> None:
    """A ``ckpt_path=...`` override would be ignored by the app: refuse it, naming the command that resumes."""
    for override in overrides:
        if override.key_or_group in CHECKPOINT_KEYS:
            value = override.input_line.split("=", 1)[-1] if override.input_line else None
            raise ConfigError(override.key_or_group, value,
                              "runs do not start from a checkpoint given on the command line; "
                              "continue an interrupted run or sweep with: lightning-echo resume DIR")


@dataclass
class ResumePoint:
    """Where a resumed run starts: ``checkpoint`` at optimizer step ``step`` (None and 0: nothing
    was saved, the run starts over), and what ``run.json`` held beyond one segment's fields."""

    checkpoint: Optional[Path]
    step: int
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def initial_val_loss(self) -> Optional[float]:
        """The validation loss the run measured before training, if it got that far."""
        value = self.details.get("initial_val_loss")
        return None if value is None else float(value)

    def record(self) -> dict[str, Any]:
        """``run.json`` details for this resume: the earlier ones plus this one."""
        resumes = list(self.details.get("resumes") or [])
        resumes.append({"checkpoint": str(self.checkpoint) if self.checkpoint else None, "step": self.step, "at": time.time()})
        return {**self.details, "resumes": resumes}


def checkpoint_step(path: Path) -> int:
    """The optimizer step a Lightning checkpoint was saved at. Read weights-only: a checkpoint
    from a shared run directory runs no pickled code (Lightning's own load is weights-only too);
    an unreadable or truncated file is refused in one line."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        return int(checkpoint["global_step"])
    except Exception as error:  # truncated, not a checkpoint, or not loadable without running its pickled code
        raise ConfigError("resume", str(path), f"cannot read the checkpoint's step safely (weights-only): "
                          f"{one_line(error, max_lines=1)}; move the file away to start the run over") from None


def resume_point(run_dir: Path) -> ResumePoint:
    """Where the run in ``run_dir`` resumes: its last checkpoint, else from the start."""
    record = read_run_record(run_dir)
    details = {k: v for k, v in record.items() if k not in _SEGMENT_FIELDS}
    path = last_checkpoint_path(run_dir)
    if path.is_file():
        return ResumePoint(path, checkpoint_step(path), details)
    return ResumePoint(None, 0, details)


def saved_config(run_dir: Path) -> DictConfig:
    """The config a run was started with (``.hydra/config.yaml``)."""
    path = Path(run_dir) / SAVED_CONFIG
    if not path.is_file():
        raise ConfigError("resume", str(run_dir), f"no saved config {SAVED_CONFIG} in it (not a lightning-echo run directory?)")
    cfg = OmegaConf.load(path)
    assert isinstance(cfg, DictConfig)
    return cfg


def save_config(cfg: DictConfig, run_dir: Path, overrides: Sequence[str]) -> None:
    """Write ``.hydra/config.yaml`` and ``overrides.yaml`` as Hydra does, for a job started by a resume."""
    folder = Path(run_dir) / SAVED_CONFIG.parent
    folder.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, folder / "config.yaml")
    OmegaConf.save(OmegaConf.create(list(overrides)), folder / "overrides.yaml")


def check_not_running_elsewhere(run_dir: Path) -> None:
    """Refuse a run whose ``run.json`` says it is running in a live process of this machine."""
    record = read_run_record(run_dir)
    pid, host = record.get("pid"), record.get("host")
    if record.get("status") != RUNNING or not isinstance(pid, int) or host != socket.gethostname() or pid == os.getpid():
        return
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return
    raise ConfigError("resume", str(run_dir), f"its run.json says it is still running (process {pid}); stop that process first")


CLAIM_FILE = ".resume.lock"
_CLAIMS: dict[Path, Any] = {}  # the open lock files this process holds, kept open until it ends


def claim_directory(directory: Path) -> None:
    """Claim ``directory`` for this process (an exclusive ``flock`` on ``<dir>/.resume.lock``, held
    until the process ends), so that two resumes of one run or sweep, however close together,
    cannot both train in it; the second is refused in one line. Locks are advisory and per
    machine (a shared filesystem may not honour them across hosts)."""
    import fcntl

    key = Path(directory).resolve()
    if key in _CLAIMS:
        return
    handle = open(key / CLAIM_FILE, "a+")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise ConfigError("resume", str(directory), "another process is resuming it right now; wait for it to end") from None
    _CLAIMS[key] = handle


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` is a run directory (holds ``run.json``)."""
    return (Path(path) / RUN_FILE).is_file()


def keep_csv_history(loggers: Sequence[Logger], up_to_step: int) -> Callable[[], None]:
    """Read what earlier segments of a run logged to CSV up to ``up_to_step``, the checkpoint's step
    (the resumed run logs what comes after), and return a function that logs those rows again.

    Call it before a CSVLogger starts (it deletes its ``metrics.csv`` when it does), and the function
    it returns once the loggers have started. A checkpoint saved by SIGTERM after a step continues
    the log exactly; one saved periodically (at the end of a training batch) can leave that step's
    training loss logged twice (with the same value), and one saved during a validation has that
    validation run and logged again.
    """
    kept: list[tuple[CSVLogger, list[dict[str, str]]]] = []
    for logger in loggers:
        if not isinstance(logger, CSVLogger):
            continue
        path = Path(logger.log_dir) / "metrics.csv"
        if path.is_file():
            with path.open(newline="") as stream:
                rows = [row for row in csv.DictReader(stream) if _step(row) is not None and _step(row) <= up_to_step]
            kept.append((logger, rows))
            with warnings.catch_warnings():  # the rows are kept: the file is written again, not lost
                warnings.filterwarnings("ignore", message="Experiment logs directory .* exists")
                logger.experiment  # noqa: B018 - starts the logger, which deletes the old file

    def replay() -> None:
        for logger, rows in kept:
            for row in rows:
                values = {k: float(v) for k, v in row.items() if k != "step" and k is not None and v not in ("", None)}
                logger.log_metrics(values, step=_step(row))
            logger.save()

    return replay


def _step(row: dict[str, str]) -> Optional[int]:
    try:
        return int(float(row.get("step") or ""))
    except ValueError:
        return None
