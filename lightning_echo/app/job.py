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
    build_strategy,
    build_trainer,
    run_clock,
)
from lightning_echo.app.checkpoint import build_last_checkpoint, last_checkpoint_path
from lightning_echo.app.divergence import RunDiverged, divergence_hint
from lightning_echo.app.interrupt import SIGNALS, RunInterrupted, interruption_signal
from lightning_echo.app.launch import ProcessPlan, RankFailed, RankRun, RankSpec, process_plan, run_ranks
from lightning_echo.app.resume import ResumePoint, keep_csv_history
from lightning_echo.callbacks.divergence import DEFAULT_MAX_GROWTH, DivergenceGuard
from lightning_echo.callbacks.progress import TrainingProgress
from lightning_echo.lightning_namespace import pl
from lightning_echo.metric_names import Loss
from lightning_echo.protocols import AssignsRankRoles, ReportsTrainLoss
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


@dataclass
class _Run:
    """The objects one training run is made of (built by :func:`_build_run`)."""

    datamodule: Any
    model: Any
    callbacks: list[Any]
    guard: DivergenceGuard
    trainer: Any
    last_checkpoint: Optional[Any]

    @property
    def progress(self) -> TrainingProgress:
        return next(c for c in self.callbacks if isinstance(c, TrainingProgress))


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

    A run on several devices (``trainer.devices=2``, or a parameter server and its learners) is
    trained by one process per device, which this process starts and supervises
    (:mod:`lightning_echo.app.launch`): a rank that fails raises
    :class:`~lightning_echo.app.launch.RankFailed`. ``rank`` is given in those processes: only
    rank 0 writes ``run.json`` and ``summary.json``, and no rank makes directories.
    """
    if rank is None:
        plan = process_plan(cfg)
        if plan.processes > 1:
            return _run_in_ranks(cfg, output_dir, group, name, resume, plan)
    lightning_internals.seed_everything_quietly(cfg.seed)
    group = group or output_dir.name
    record = _RunRecord.open(cfg, output_dir, group, name, resume, rank)
    resumed = resume is not None and resume.checkpoint is not None
    run: Optional[_Run] = None
    try:
        run = _build_run(cfg, output_dir, record, name, resume if resumed else None, rank)
        initial_val_loss = _starting_loss(cfg, run, resume if resumed else None)
        record.note(RUNNING, initial_val_loss=initial_val_loss)
        run.trainer.fit(run.model, datamodule=run.datamodule, ckpt_path=resume.checkpoint if resumed else None)
        SIGNALS.raise_if_received()
        final_train_loss, final_val_loss = _final_losses(run, initial_val_loss)
    except BaseException as error:
        ended = _ended_early(error, record, output_dir, run)
        if ended is error:
            raise
        raise ended from None
    return _summarise(cfg, run, record, output_dir, initial_val_loss, final_train_loss, final_val_loss)


@dataclass
class _RunRecord:
    """``run.json`` of a run in this process; only the process that writes records writes it."""

    file: RunRecordFile
    writes: bool

    @classmethod
    def open(cls, cfg: DictConfig, output_dir: Path, group: str, name: Optional[str],
             resume: Optional[ResumePoint], rank: Optional[RankRun]) -> "_RunRecord":
        """The record of the run; a run in this process alone makes its directory and says it is running."""
        flat = flat_run_config(cfg, group)
        if rank is not None:  # what the supervising job recorded: its pid and host, the resumes
            details = dict(rank.record_details)
        else:
            details = resume.record() if resume is not None else {}
        record = cls(RunRecordFile(output_dir / RUN_FILE, group=group, name=name or str(flat["algorithm"]),
                                   config=flat, details=details),
                     writes=rank is None or rank.writes_records)
        if rank is None:
            output_dir.mkdir(parents=True, exist_ok=True)
            record.note(RUNNING, pid=os.getpid(), host=socket.gethostname())
        return record

    def note(self, status: str, **fields: Any) -> None:
        if self.writes:
            self.file.write(status=status, **fields)


def _build_run(cfg: DictConfig, output_dir: Path, record: _RunRecord, name: Optional[str],
               resume: Optional[ResumePoint], rank: Optional[RankRun]) -> _Run:
    """Data, model, callbacks, loggers (with the run's flat settings, and the history a resume
    keeps) and the Trainer."""
    datamodule = build_datamodule(cfg)
    model = build_model(cfg, datamodule.spec)
    guard = DivergenceGuard(max_growth=cfg.get("divergence_growth", DEFAULT_MAX_GROWTH))
    callbacks = [*build_callbacks(cfg), guard, *(rank.callbacks if rank is not None else ())]
    strategy = build_strategy(cfg)
    # A process whose strategy gives the checkpoints to another rank (a parameter server's learner) saves none.
    saves = rank is None or not isinstance(strategy, AssignsRankRoles) or strategy.saves_checkpoints(rank.global_rank)
    last_checkpoint = build_last_checkpoint(cfg, output_dir) if saves else None
    if last_checkpoint is not None:
        callbacks.append(last_checkpoint)
    loggers = build_loggers(cfg, output_dir, group=record.file.group, name=name)
    replay_history = keep_csv_history(loggers, up_to_step=resume.step) if resume is not None and record.writes else None
    for logger in loggers:
        logger.log_hyperparams(record.file.config)
    if replay_history is not None:
        replay_history()
    trainer = build_trainer(cfg, output_dir, callbacks, loggers, strategy=strategy)
    return _Run(datamodule, model, callbacks, guard, trainer, last_checkpoint)


def _starting_loss(cfg: DictConfig, run: _Run, resume: Optional[ResumePoint]) -> Optional[float]:
    """Where the run started: the validation loss before training (as recorded, when resumed)."""
    if resume is not None:
        return resume.initial_val_loss
    if not cfg.get("validate_before_training", True):
        return None
    loss = _validation_loss(run.trainer, run.model, run.datamodule)
    SIGNALS.raise_if_received()
    return loss


def _final_losses(run: _Run, initial_val_loss: Optional[float]) -> tuple[Optional[float], Optional[float]]:
    """The last training loss and the validation loss after training (none for a diverged model);
    a final validation loss above the guard's growth bound over ``initial_val_loss`` is a divergence."""
    # The final validation replaces the callback metrics: read the training loss first.
    train_loss = _metric(run.trainer.callback_metrics, Loss.TRAIN)
    if train_loss is None and isinstance(run.trainer.strategy, ReportsTrainLoss):
        train_loss = run.trainer.strategy.train_loss  # a parameter server trains no step itself
    if run.guard.divergence is not None:  # a diverged model's validation loss says nothing more
        return train_loss, None
    val_loss = _validation_loss(run.trainer, run.model, run.datamodule)
    if val_loss is not None:
        run.guard.observe(run.trainer, Loss.VAL, val_loss, limit=run.guard.growth_limit(initial_val_loss))
    return train_loss, val_loss


def _note_quietly(record: "_RunRecord", status: str, **fields: Any) -> None:
    """Record ``status`` if the disk lets us; the caller reports the error anyway."""
    try:
        record.note(status, **fields)
    except OSError:
        pass


def _fault_events(run: Optional[_Run]) -> dict[str, Any]:
    """``run.json``'s ``faults``: the parameter server's learner losses, joins, K changes and restarts
    (none for other strategies)."""
    events = getattr(run.trainer.strategy, "fault_events", None) if run is not None else None
    return {"faults": events} if events else {}


def _ended_early(error: BaseException, record: _RunRecord, output_dir: Path, run: Optional[_Run]) -> BaseException:
    """Record a run that failed or was interrupted; the exception to raise (a RunInterrupted for a signal)."""
    signum = interruption_signal(error)
    if signum is None:
        finish_wandb(exit_code=1)
        try:
            record.note(FAILED, error=f"{type(error).__name__}: {error}", traceback=traceback.format_exc(),
                        **_fault_events(run))
        except OSError:  # a full disk: the record without its traceback may still fit where the whole did not
            _note_quietly(record, FAILED, error=f"{type(error).__name__}: {error}")
        return error
    interrupted = _interruption(signum, output_dir, run.trainer if run else None, run.last_checkpoint if run else None)
    finish_wandb(exit_code=interrupted.exit_code)
    record.note(INTERRUPTED, error=str(interrupted),
                checkpoint=str(interrupted.checkpoint) if interrupted.checkpoint else None, **_fault_events(run))
    return interrupted


def _summarise(cfg: DictConfig, run: _Run, record: _RunRecord, output_dir: Path, initial_val_loss: Optional[float],
               final_train_loss: Optional[float], final_val_loss: Optional[float]) -> RunSummary:
    """Finish the run's records (``summary.json``, ``run.json``, wandb); raise RunDiverged if it diverged."""
    divergence = run.guard.divergence
    finish_wandb(exit_code=0 if divergence is None else DIVERGED_EXIT_CODE)
    progress = run.progress
    summary = RunSummary(
        algorithm=str(cfg.algorithm.name),
        data=run.datamodule.spec.name,
        model=type(run.model).__name__,
        seed=int(cfg.seed),
        optimizer_steps=int(run.trainer.global_step),
        fresh_samples=progress.fresh_samples,
        elapsed_s=progress.elapsed_s,
        initial_val_loss=initial_val_loss,
        final_val_loss=final_val_loss,
        final_train_loss=final_train_loss,
        output_dir=str(output_dir),
        clock=progress.clock,
        simulated_s=progress.ledger.clock_s,
        status=COMPLETED if divergence is None else DIVERGED,
    )
    diverged = RunDiverged(divergence, divergence_hint(cfg)) if divergence is not None else None
    if run.trainer.is_global_zero:
        write_json(output_dir / "summary.json", asdict(summary))
        record.note(summary.status, error=str(diverged) if diverged else None, **_fault_events(run))
    if diverged is not None:
        raise diverged
    return summary


def process_restarts(cfg: DictConfig) -> dict[str, int]:
    """How often the job starts a parameter server's learners and server again (``ps.restart_*``;
    none for other runs)."""
    if (cfg.get("backend") or {}).get("name") != "processes" or "ps" not in cfg:
        return {}
    return {"restart_learners": int(cfg.ps.get("restart_learners") or 0),
            "restart_server": int(cfg.ps.get("restart_server") or 0)}


def _run_in_ranks(cfg: DictConfig, output_dir: Path, group: Optional[str], name: Optional[str],
                  resume: Optional[ResumePoint], plan: ProcessPlan) -> RunSummary:
    """Train the run in ``processes`` rank processes and record how it ended (see :func:`run_training`)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    group = group or output_dir.name
    flat = flat_run_config(cfg, group)
    processes = plan.processes
    details = {**(resume.record() if resume is not None else {}), "pid": os.getpid(), "host": socket.gethostname(),
               "processes": processes}
    record = RunRecordFile(output_dir / RUN_FILE, group=group, name=name or str(flat["algorithm"]), config=flat,
                           details=details)
    record.write(status=RUNNING)
    resumed = resume is not None and resume.checkpoint is not None
    spec = RankSpec(config=OmegaConf.to_container(cfg, resolve=True), run_dir=str(output_dir), group=group, name=name,
                    world_size=processes, record_details=details,
                    checkpoint=str(resume.checkpoint) if resumed else None, step=resume.step if resumed else 0,
                    deciding_ranks=plan.deciding_ranks, deciders_outlive_s=plan.deciders_outlive_s,
                    **process_restarts(cfg))
    result = run_ranks(spec)
    written = read_run_record(output_dir)  # rank 0's record, with what it measured (initial_val_loss, ...)
    written.update(ranks=result.progress(), updated_at=time.time())
    if result.restarts:
        written.update(restarts=result.restarts)
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
    return _metric(results[0] if results else {}, Loss.VAL)


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
