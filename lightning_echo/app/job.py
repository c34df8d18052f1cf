"""One training run from a composed config: build, validate-before, fit, summarise."""

from __future__ import annotations

import functools
import json
import os
import socket
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

from omegaconf import DictConfig, OmegaConf

from lightning_echo import lightning_internals
from lightning_echo.app.builders import (
    algorithm_is_baseline,
    algorithm_keys,
    algorithm_label,
    build_callbacks,
    build_datamodule,
    build_loggers,
    build_model,
    build_trainer,
    run_clock,
    uses_parameter_server,
)
from lightning_echo.app.checkpoint import build_last_checkpoint, last_checkpoint_path
from lightning_echo.app.divergence import RunDiverged, divergence_hint
from lightning_echo.app.interrupt import SIGNALS, RunInterrupted, interruption_signal
from lightning_echo.app.launch import RankFailed, RankRun, RankSpec, processes_for, run_ranks
from lightning_echo.app.resume import ResumePoint, keep_csv_history
from lightning_echo.callbacks.divergence import DivergenceGuard
from lightning_echo.callbacks.progress import TrainingProgress
from lightning_echo.lightning_namespace import pl
from lightning_echo.records import (
    ALGORITHM_KEYS,
    BASELINE,
    CLOCK,
    COMPLETED,
    DIVERGED,
    DIVERGED_EXIT_CODE,
    FAILED,
    INTERRUPTED,
    LABEL,
    RUN_FILE,
    RUNNING,
    RunRecordFile,
    read_run_record,
    write_json,
)


@dataclass
class RunSummary:
    """What a run reports when it ends (also written to ``summary.json`` in its output dir)."""

    algorithm: str
    data: str
    model: str
    seed: int
    optimizer_steps: int
    fresh_samples: int
    elapsed_s: float
    initial_val_loss: Optional[float]
    final_val_loss: Optional[float]
    final_train_loss: Optional[float]
    output_dir: str
    clock: str = "wall_clock"
    simulated_s: Optional[float] = None
    status: str = COMPLETED

    def describe(self) -> str:
        """One line for the terminal."""

        def fmt(value: Optional[float]) -> str:
            return "n/a" if value is None else f"{value:.4f}"

        return (
            f"{self.algorithm} | {self.data} | {self.model} | seed {self.seed}: "
            f"val/loss {fmt(self.initial_val_loss)} -> {fmt(self.final_val_loss)} "
            f"after {self.optimizer_steps} steps, {self.fresh_samples} fresh samples, {self.elapsed_s:.1f} s"
            + (f" ({self.simulated_s:.1f} s simulated)" if self.simulated_s is not None else "")
        )


_F = TypeVar("_F", bound=Callable[..., Any])


def _watching_signals(function: _F) -> _F:
    @functools.wraps(function)
    def watched(*args: Any, **kwargs: Any) -> Any:
        with SIGNALS:
            return function(*args, **kwargs)

    return watched  # type: ignore[return-value]


@_watching_signals
def run_training(cfg: DictConfig, output_dir: Path, group: Optional[str] = None, name: Optional[str] = None,
                 resume: Optional[ResumePoint] = None, rank: Optional[RankRun] = None) -> RunSummary:
    """Train as ``cfg`` says, writing logs, ``run.json`` and ``summary.json`` into ``output_dir``.

    ``group`` is the id shared by the runs of one sweep (wandb group, ``group`` config key) and
    ``name`` the run's label in it. ``run.json`` says ``running`` until the run ends, then
    ``completed`` or ``failed`` (with the error): a run killed half-way stays ``running``.
    A run whose training loss stops being finite is stopped, recorded as ``diverged`` (with
    ``summary.json``) and raises :class:`RunDiverged`. SIGINT or SIGTERM stops it as
    ``interrupted`` and raises :class:`RunInterrupted` (SIGTERM after saving the checkpoint
    ``checkpoint`` settings ask for). ``resume`` continues the run in ``output_dir`` from its checkpoint.

    A run on several devices (``trainer.devices=2``) is trained by one process per device, which
    this process starts and supervises (:mod:`lightning_echo.app.launch`): a rank that fails
    raises :class:`~lightning_echo.app.launch.RankFailed`. ``rank`` is given in those processes:
    only rank 0 writes ``run.json`` and ``summary.json``, and no rank makes directories.
    """
    if rank is None:
        processes = processes_for(cfg)
        if processes > 1:
            return _run_in_ranks(cfg, output_dir, group, name, resume, processes)
    lightning_internals.seed_everything_quietly(cfg.seed)
    group = group or output_dir.name
    flat = flat_run_config(cfg, group)
    writes = rank is None or rank.writes_records
    if rank is not None:  # what the supervising job recorded: its pid and host, the resumes
        details = dict(rank.record_details)
    else:
        details = resume.record() if resume is not None else {}
    record = RunRecordFile(output_dir / RUN_FILE, group=group, name=name or str(flat["algorithm"]), config=flat,
                           details=details)

    def note(status: str, **fields: Any) -> None:
        if writes:
            record.write(status=status, **fields)

    if rank is None:
        output_dir.mkdir(parents=True, exist_ok=True)
        note(RUNNING, pid=os.getpid(), host=socket.gethostname())
    resumed = resume is not None and resume.checkpoint is not None
    trainer = last_checkpoint = None
    try:
        datamodule = build_datamodule(cfg)
        model = build_model(cfg, datamodule.spec)
        guard = DivergenceGuard()
        callbacks = [*build_callbacks(cfg), guard, *(rank.callbacks if rank is not None else ())]
        # A parameter server's learners save nothing: the server's state is the run's.
        learner = rank is not None and not rank.writes_records and uses_parameter_server(cfg)
        last_checkpoint = None if learner else build_last_checkpoint(cfg, output_dir)
        if last_checkpoint is not None:
            callbacks.append(last_checkpoint)
        loggers = build_loggers(cfg, output_dir, group=group, name=name)
        replay_history = keep_csv_history(loggers, up_to_step=resume.step) if resumed and writes else None
        for logger in loggers:
            logger.log_hyperparams(flat)
        if replay_history is not None:
            replay_history()
        trainer = build_trainer(cfg, output_dir, callbacks, loggers)
        initial_val_loss = final_val_loss = None
        if resumed:
            initial_val_loss = resume.initial_val_loss
        elif cfg.get("validate_before_training", True):
            initial_val_loss = _validation_loss(trainer, model, datamodule)
            SIGNALS.raise_if_received()
        note(RUNNING, initial_val_loss=initial_val_loss)
        trainer.fit(model, datamodule=datamodule, ckpt_path=resume.checkpoint if resumed else None)
        SIGNALS.raise_if_received()
        # The final validation replaces the callback metrics: read the training loss first.
        final_train_loss = _metric(trainer.callback_metrics, "train/loss")
        if final_train_loss is None:  # a parameter server trains no step itself: its learners' last losses
            final_train_loss = getattr(trainer.strategy, "train_loss", None)
        if guard.divergence is None:  # a diverged model's validation loss says nothing more
            final_val_loss = _validation_loss(trainer, model, datamodule)
    except BaseException as error:
        signum = interruption_signal(error)
        if signum is None:
            finish_wandb(exit_code=1)
            note(FAILED, error=f"{type(error).__name__}: {error}", traceback=traceback.format_exc())
            raise
        interrupted = _interruption(signum, output_dir, trainer, last_checkpoint)
        finish_wandb(exit_code=interrupted.exit_code)
        note(INTERRUPTED, error=str(interrupted),
             checkpoint=str(interrupted.checkpoint) if interrupted.checkpoint else None)
        raise interrupted from None
    finish_wandb(exit_code=0 if guard.divergence is None else DIVERGED_EXIT_CODE)
    progress = next(c for c in callbacks if isinstance(c, TrainingProgress))
    summary = RunSummary(
        algorithm=str(cfg.algorithm.name),
        data=datamodule.spec.name,
        model=type(model).__name__,
        seed=int(cfg.seed),
        optimizer_steps=int(trainer.global_step),
        fresh_samples=progress.fresh_samples,
        elapsed_s=progress.elapsed_s,
        initial_val_loss=initial_val_loss,
        final_val_loss=final_val_loss,
        final_train_loss=final_train_loss,
        output_dir=str(output_dir),
        clock=progress.clock,
        simulated_s=progress.ledger.clock_s,
        status=COMPLETED if guard.divergence is None else DIVERGED,
    )
    diverged = RunDiverged(guard.divergence, divergence_hint(cfg)) if guard.divergence is not None else None
    if trainer.is_global_zero:
        write_json(output_dir / "summary.json", asdict(summary))
        note(summary.status, error=str(diverged) if diverged else None)
    if diverged is not None:
        raise diverged
    return summary


def _run_in_ranks(cfg: DictConfig, output_dir: Path, group: Optional[str], name: Optional[str],
                  resume: Optional[ResumePoint], processes: int) -> RunSummary:
    """Train the run in ``processes`` rank processes and record how it ended (see :func:`run_training`)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    group = group or output_dir.name
    flat = flat_run_config(cfg, group)
    details = {**(resume.record() if resume is not None else {}), "pid": os.getpid(), "host": socket.gethostname(),
               "processes": processes}
    record = RunRecordFile(output_dir / RUN_FILE, group=group, name=name or str(flat["algorithm"]), config=flat,
                           details=details)
    record.write(status=RUNNING)
    resumed = resume is not None and resume.checkpoint is not None
    spec = RankSpec(config=OmegaConf.to_container(cfg, resolve=True), run_dir=str(output_dir), group=group, name=name,
                    world_size=processes, record_details=details,
                    checkpoint=str(resume.checkpoint) if resumed else None, step=resume.step if resumed else 0,
                    # a parameter server decides alone whether its run goes on without a learner
                    deciding_ranks=[0] if uses_parameter_server(cfg) else None)
    result = run_ranks(spec)
    written = read_run_record(output_dir)  # rank 0's record, with what it measured (initial_val_loss, ...)
    written.update(ranks=result.progress(), updated_at=time.time())
    zero = result.rank_zero or {}
    if result.interrupted_by is not None:
        checkpoint = last_checkpoint_path(output_dir)
        where = zero.get("detail") if zero.get("status") == INTERRUPTED else (
            "stopped outside a training step; " + (f"checkpoint {checkpoint}" if checkpoint.is_file()
                                                   else "no checkpoint: a resume starts the run over"))
        interrupted = RunInterrupted(result.interrupted_by, str(where), run_dir=output_dir,
                                     checkpoint=checkpoint if checkpoint.is_file() else None)
        written.update(status=INTERRUPTED, error=str(interrupted),
                       checkpoint=str(interrupted.checkpoint) if interrupted.checkpoint else None)
        write_json(output_dir / RUN_FILE, written)
        raise interrupted
    failure = result.first_failure()
    if failure is not None:
        line = failure.describe(processes)
        written.update(status=FAILED, error=line, traceback=(failure.outcome or {}).get("traceback"))
        write_json(output_dir / RUN_FILE, written)
        raise RankFailed(line)
    summary = RunSummary(**json.loads((output_dir / "summary.json").read_text()))
    divergence = result.divergence()
    if divergence is not None:  # rank 0's loss may have stayed finite at the step another rank's did not
        diverged = RunDiverged(str(divergence.get("divergence")), str(divergence.get("hint")))
        summary.status = DIVERGED
        write_json(output_dir / "summary.json", asdict(summary))
        written.update(status=DIVERGED, error=str(diverged))
        write_json(output_dir / RUN_FILE, written)
        raise diverged
    write_json(output_dir / RUN_FILE, written)
    return summary


def _interruption(signum: int, output_dir: Path, trainer: Optional[pl.Trainer],
                  last_checkpoint: Optional[Any]) -> RunInterrupted:
    """The RunInterrupted a run raises: where it stopped and what a resume starts from."""
    saved = last_checkpoint.path if last_checkpoint is not None and last_checkpoint.path.is_file() else None
    where = f"at step {trainer.global_step if trainer is not None else 0}; "
    if saved is None:
        where += "no checkpoint: a resume starts the run over"
    else:
        step = last_checkpoint.saved_step
        where += f"checkpoint {saved}" + (f" (step {step})" if step is not None else "")
    return RunInterrupted(signum, where, run_dir=output_dir, checkpoint=saved)


def finish_wandb(exit_code: int) -> None:
    """Finish the process's wandb run, if any, with ``exit_code`` (a no-op without wandb runs)."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=exit_code)


def _validation_loss(trainer: pl.Trainer, model: pl.LightningModule, datamodule: pl.LightningDataModule) -> Optional[float]:
    results = trainer.validate(model, datamodule=datamodule, verbose=False)
    return _metric(results[0] if results else {}, "val/loss")


def flat_run_config(cfg: DictConfig, group: Optional[str] = None) -> dict[str, object]:
    """The settings people group and filter runs by, as flat keys (logged as hyperparameters),
    plus the whole resolved config under ``config``.

    Every run has the common keys (data, model, optimizer, loader, seed, ...); the algorithm adds
    its own (``algorithm.keys``), names them in ``algorithm_keys``, and gives its report ``label``,
    whether it is a comparison's synchronous ``baseline``, and the ``clock`` its time is measured in.
    """
    own = algorithm_keys(cfg)
    flat: dict[str, object] = {
        "group": group,
        "algorithm": cfg.algorithm.name,
        LABEL: algorithm_label(cfg),
        BASELINE: algorithm_is_baseline(cfg),
        CLOCK: run_clock(cfg),
        "data": str(cfg.data.get("_target_", "")).rsplit(".", 1)[-1],
        "model": str(cfg.model.get("_target_", "")).rsplit(".", 1)[-1],
        "optimizer": str(cfg.optimizer.get("_target_", "")).rsplit(".", 1)[-1],
        "lr": cfg.optimizer.get("lr"),
        "batch_size": cfg.data.get("batch_size"),
        "loader": cfg.loader.get("name"),
        "slowdown": cfg.loader.get("slowdown"),
        "seconds_per_batch": cfg.loader.get("seconds_per_batch"),
    }
    flat.update(own)
    flat.update({
        ALGORITHM_KEYS: sorted(own),
        "seed": cfg.seed,
        "max_steps": cfg.trainer.get("max_steps"),
        "config": OmegaConf.to_container(cfg, resolve=True),
    })
    return flat


def _metric(metrics: dict, key: str) -> Optional[float]:
    value = metrics.get(key)
    return None if value is None else float(value)
