"""``StepTimeRecorder``: each rank's compute, data-wait and sync-wait time per optimizer step,
written into the run directory as the advisor's trace (:mod:`lightning_echo.advisor.trace`)."""

from __future__ import annotations

import abc

import csv
import math
import os
import time
import uuid
import warnings
from collections import deque
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import Any, Callable, Deque, Dict, Iterable, List, Literal, Optional, Sequence, Tuple, Union

import torch
from typing_extensions import override

from lightning_echo.advisor.trace import (
    COLUMNS,
    RunKind,
    StepRecord,
    StepTrace,
    read_step_trace,
    summarise,
    write_step_trace,
)
from lightning_echo.combinations import find_progress_source
from lightning_echo.core.batches import find_batch_size
from lightning_echo.core.progress import WALL_CLOCK
from lightning_echo.errors import ConfigError
from lightning_echo.lightning_namespace import pl, require_same_lightning, warn_if_other_lightning_imported
from lightning_echo.metric_names import StepTimes
from lightning_echo.validation import boolean, positive_float, writable_directory

Role = Literal["single", "ddp", "learner", "server"]
PARTS_DIR = "step_times.parts"  # a parameter server's learners leave their rows here for rank 0
DEFAULT_GATHER_TIMEOUT_S = 60.0
POLL_S = 0.05
READ_EVERY = 1024  # ended batches kept raw on the host: turned into steps in bulk, off the step's path


class StepTimeRecorder(pl.Callback):
    """Record, per rank and optimizer step, the compute time, the time waiting for data, the time
    waiting for the other ranks or the server, and the batch size; write them as a trace at the
    end of ``fit`` and log them. Works on any LightningModule, on one device, under DDP, and on
    the learners of a :class:`~lightning_echo.stragglers.processes.strategy.ParameterServerStrategy`.

    A step runs from the end of the previous one (the recorder's ``on_train_batch_end``; the
    epoch's start; a validation's end) to its own end, and is cut into three parts that add up to
    its wall-clock time:

    - ``data_wait_s``: until the batch is on the device (``on_train_batch_start``): fetching,
      collating, the copy, and the loop's own work between steps (a train loader without a
      length is fetched one batch ahead by Lightning: there a slow fetch shows one step early);
    - ``sync_wait_s``: waiting for others. Under DDP it is (a) the time from the batch being ready
      to the user's ``training_step`` starting (DDP's pre-forward: its buffer broadcast waits for
      every rank) plus (b), per backward, the time from the rank's last gradient being
      accumulated (a post-accumulate-grad hook on every trainable parameter) to ``backward``
      returning. DDP launches each bucket's all-reduce while the backward pass goes on; once the
      rank's own gradients are done, what is left of the backward call is waiting for the
      slowest rank and the all-reduce's tail. A fast rank thus shows waiting, a slow one
      compute. On a parameter server's learner it is the time from the batch being ready to the
      user's ``training_step`` starting: the wait for the server's START and its parameters. On
      one device it is 0;
    - ``compute_s``: the rest: forward, backward and, under DDP and on one device, the optimizer
      step; on a learner, the injected delay and the PUSH (the server steps).

    Gradient accumulation sums the batches of an optimizer step. On CUDA the points are CUDA
    events on the current stream, read a step later (no synchronisation: times are on the
    device's own timeline, and a step's data wait is the time the device sat idle for its batch);
    elsewhere ``time.perf_counter`` on the host.

    The trace: ``dirpath`` (default: the Trainer's ``default_root_dir``, the run directory of the
    ``lightning-echo`` command) gets ``step_times.csv``, ``compute_times.csv`` and
    ``step_times.json`` (:func:`~lightning_echo.advisor.trace.write_step_trace`), every rank's rows
    in one file, written by rank 0. Under DDP the ranks' rows are gathered at ``on_train_end`` (an
    all-gather of one small tensor). A parameter server's processes may not synchronise while
    ``fit`` trains, so each learner writes its rows into ``<dirpath>/step_times.parts/`` when its
    training ends, and rank 0, once the server has stopped every learner (``on_fit_end``), waits up
    to ``gather_timeout_s`` for those of the learners it did not lose, merges them and removes
    them (the directory must be one all ranks see: one machine or a shared file system). The parts
    carry a token rank 0 broadcasts in ``setup``, so parts of another fit are never merged. The
    learners are ranks 1..P (learner ``i`` is rank ``i + 1``; in ``compute_times.csv`` learner ``i``).
    A fit resumed from a checkpoint keeps the rows of the earlier fit that the directory's trace
    holds (up to the step it resumed from).

    Logged (rank 0's loggers, every ``log_every_n_steps``): ``time/step_compute_s``,
    ``time/step_data_wait_s``, ``time/step_sync_wait_s`` of rank 0's last step; on a parameter
    server each learner logs its previous step's values from ``training_step`` and the server logs
    their mean over each update. After ``fit``: :attr:`trace` and :attr:`summary` (per rank:
    median, p90, p99 of the compute time, the data and sync-wait fractions; the slowest rank's
    median over the median rank's), also in ``step_times.json``.

    Cost (``bench/record_overhead.py``): a step keeps only its raw points in time (turned into rows
    in bulk, every 1024 steps and at the end); on a CPU about 25 us per step, two thirds of it what
    Lightning's loop spends on any callback; under DDP about 1 us more per parameter tensor per
    backward; about 200 bytes per step and rank.

    Limits: a ``training_step(dataloader_iter)`` fetches its own batches (that wait counts as
    compute); other data-parallel strategies than DDP are timed as DDP is where the
    post-accumulate-grad hooks fire on the module's parameters; on accelerators other than CUDA
    the host's clock times asynchronous launches.

    Args:
        dirpath: where the trace is written (None: the Trainer's ``default_root_dir``).
        log_metrics: log the per-step metrics above.
        gather_timeout_s: on a parameter server, how long rank 0 waits for its learners' rows.

    Example::

        import tempfile
        from pytorch_lightning.demos.boring_classes import BoringModel

        recorder = StepTimeRecorder(dirpath=tempfile.mkdtemp())  # default: the Trainer's default_root_dir
        trainer = pl.Trainer(max_steps=20, callbacks=[recorder], logger=False, enable_checkpointing=False)
        trainer.fit(BoringModel())
        assert len(recorder.trace.records) == trainer.global_step
        print(recorder.summary["ranks"]["0"]["compute_median_s"], recorder.written)  # .../step_times.csv
    """

    def __init__(self, dirpath: Optional[Union[str, os.PathLike]] = None, log_metrics: bool = True,
                 gather_timeout_s: float = DEFAULT_GATHER_TIMEOUT_S) -> None:
        warn_if_other_lightning_imported(self)
        if dirpath is not None:
            if not isinstance(dirpath, (str, os.PathLike)) or not str(dirpath).strip():
                raise ConfigError("dirpath", dirpath, "must be a directory path (or None: the Trainer's default_root_dir)")
            dirpath = writable_directory("dirpath", dirpath, Path(dirpath))
        self.dirpath: Optional[Path] = dirpath
        self.log_metrics = boolean("log_metrics", log_metrics)
        self.gather_timeout_s = positive_float("gather_timeout_s", gather_timeout_s)
        self.trace: Optional[StepTrace] = None
        self.summary: Optional[Dict[str, Any]] = None
        self.written: Optional[Path] = None
        self._reset()

    def _reset(self) -> None:
        self.records: List[StepRecord] = []  # this rank's, this fit
        self._role: Optional[Role] = None
        self._rank = 0
        self._token = ""
        self._directory: Optional[Path] = None
        self._clock: _Clock = _HostClock()
        self._undo: List[Callable[[], None]] = []
        self._last_end: Any = None  # the previous step's end (or the epoch's start, a validation's end)
        self._in_batch = False
        self._start: Any = None  # the current batch's points in time
        self._step_start: Any = None
        self._backwards: Optional[List[tuple]] = None
        self._ended: Deque[_Ended] = deque()  # ended batches not yet turned into steps
        self._open = _OpenStep()
        self._next_step = 0
        self._first_step = 0
        self._global_step = 0
        self._grads_seen = 0
        self._grads_threshold = 0  # CUDA: stamp only from this many accumulated gradients on
        self._grads_done: Any = None
        self._kind: RunKind = "single"
        self._clock_name = WALL_CLOCK
        self._meta: Dict[str, Any] = {}

    # -- Lightning hooks: setup --------------------------------------------------------------------
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        require_same_lightning(trainer, self)
        if stage != "fit":
            return
        self._reset()
        self.trace = self.summary = self.written = None
        directory = str(self.dirpath if self.dirpath is not None else trainer.default_root_dir)
        # Every rank writes into rank 0's directory; a token tells this fit's parts from another's.
        directory, self._token = trainer.strategy.broadcast((directory, uuid.uuid4().hex), src=0)
        self._directory = Path(directory)
        self._role = _role_of(trainer)
        self._rank = trainer.global_rank
        self._kind = {"single": "single", "ddp": "ddp"}.get(self._role, "parameter_server")  # type: ignore[assignment]

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._role is None:
            self.setup(trainer, pl_module, "fit")
        source = find_progress_source(trainer)
        self._clock_name = source.clock if source is not None else WALL_CLOCK
        self._meta = {"model": type(pl_module).__name__, "strategy": type(trainer.strategy).__name__,
                      "world_size": trainer.num_devices * trainer.num_nodes, "device": pl_module.device.type}
        self._first_step = self._next_step = 0 if self._role == "learner" else trainer.global_step
        self._global_step = trainer.global_step  # at the last batch's end
        if self._role == "server":
            return
        if pl_module.device.type == "cuda":
            self._clock = _CudaClock(pl_module.device)
        if self._role in ("ddp", "learner"):  # one device waits for nobody: no step start needed
            self._undo.append(_wrap_training_step(pl_module, self._step_begins))
        if self._role == "ddp":
            self._undo.append(_hook_gradients(pl_module, self._gradient_accumulated))

    # -- one step -----------------------------------------------------------------------------------
    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._recording:
            self._last_end = self._clock.stamp()

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if not self._recording:
            return
        if self._last_end is None:
            self._last_end = self._clock.stamp()
        self._start = self._clock.stamp()
        self._step_start = self._backwards = None
        self._in_batch = True

    def _step_begins(self, pl_module: pl.LightningModule) -> None:
        """The user's ``training_step`` begins (called by its wrapper)."""
        if self._in_batch and self._step_start is None:
            self._step_start = self._clock.stamp()
            if self._role == "learner" and self.log_metrics:
                self._read_ended(everything=not self._clock.device_events)
                if self.records:
                    _log_through_module(pl_module, self.records[-1])

    @override
    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        self._grads_seen, self._grads_done = 0, None

    def _gradient_accumulated(self) -> None:
        self._grads_seen += 1
        if self._grads_seen >= self._grads_threshold:
            self._grads_done = self._clock.stamp()

    @override
    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._in_batch or self._role != "ddp":
            return
        if self._grads_done is not None:
            if self._backwards is None:
                self._backwards = []
            self._backwards.append((self._grads_done, self._clock.stamp()))
        if self._clock.device_events:
            self._grads_threshold = self._grads_seen
        self._grads_done = None

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not self._in_batch:
            return
        self._in_batch = False
        end = self._clock.stamp()
        global_step = trainer.global_step
        if self._role == "learner":
            closes = self._step_start is not None  # no training_step ran: the server's STOP
        else:
            closes = global_step > self._global_step
        self._global_step = global_step
        # Raw points only: the host's steps are worked out when needed, the device's once complete.
        self._ended.append((self._last_end, self._start, self._step_start, self._backwards, end, _batch_size(batch), closes))
        self._last_end = end
        device = self._clock.device_events
        if device or len(self._ended) >= READ_EVERY:
            self._read_ended(everything=not device)
        if (closes and global_step % trainer.log_every_n_steps == 0 and self.log_metrics and trainer.is_global_zero
                and trainer.loggers):
            self._read_ended(everything=not device)
            if self.records:
                metrics = _metrics_of(self.records[-1])
                for logger in trainer.loggers:
                    logger.log_metrics(metrics, step=global_step)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._recording and self._last_end is not None:
            self._last_end = self._clock.stamp()  # validation is nobody's wait

    # -- the end ---------------------------------------------------------------------------------
    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._role is None:
            return
        self._stop_recording()
        if self._role == "single":
            self._finish(self.records)
        elif self._role == "ddp":
            self._finish(_gather_ddp(trainer, self.records), write=trainer.is_global_zero)
        elif self._role == "learner":
            self._write_part()
            self._finish(self.records, write=False)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._role == "server":
            self._finish(self._collect_parts(trainer))

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self._role is None:
            return
        self._stop_recording()
        try:  # what was recorded up to the failure, where no other rank is needed for it
            if self._role == "single":
                self._finish(self.records)
            elif self._role == "learner":
                self._write_part()
        except OSError as error:
            warnings.warn(f"StepTimeRecorder could not write its trace: {error}", stacklevel=2)
        self._role = None

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._undo_all()

    # -- internals -------------------------------------------------------------------------------
    @property
    def _recording(self) -> bool:
        return self._role in ("single", "ddp", "learner")

    def _undo_all(self) -> None:
        while self._undo:
            self._undo.pop()()

    def _stop_recording(self) -> None:
        self._undo_all()
        self._in_batch = False
        self._read_ended(everything=True)

    def _read_ended(self, everything: bool) -> None:
        """Turn ended batches into steps: all of them, or (device events) those whose events have
        completed, at most two batches behind."""
        clock, ended = self._clock, self._ended
        while ended:
            if not (everything or len(ended) > 2 or clock.done(ended[0][4])):
                return
            batch = ended.popleft()
            self._add(batch)
            previous_end, start, step_start, backwards, _, _, _ = batch
            clock.release(previous_end, start, step_start, *(t for pair in backwards or () for t in pair))

    def _add(self, batch: _Ended) -> None:
        previous_end, start, step_start, backwards, end, batch_size, closes = batch
        seconds = self._clock.seconds
        data_wait = seconds(previous_end, start)
        total = seconds(start, end)
        sync = 0.0
        if self._role in ("ddp", "learner") and step_start is not None:
            sync += seconds(start, step_start)
        for grads_done, returned in backwards or ():
            sync += seconds(grads_done, returned)
        sync = min(max(0.0, sync), max(0.0, total))
        if self._role == "learner" and step_start is None:
            return  # no gradient was computed: not a step
        step = self._open
        step.data_wait += max(0.0, data_wait)
        step.sync_wait += sync
        step.compute += max(0.0, total) - sync
        step.batch_size += batch_size
        if closes:
            self.records.append(StepRecord(self._rank, self._next_step, step.compute, step.data_wait, step.sync_wait,
                                           step.batch_size))
            self._next_step += 1
            self._open = _OpenStep()

    def _finish(self, records: List[StepRecord], write: bool = True) -> None:
        records = list(records)
        directory = self._directory
        if write and directory is not None and self._first_step > 0:
            records = _continued(_earlier_rows(directory, self._kind), records, append=self._kind == "parameter_server")
        meta = dict(self._meta)
        sizes = sorted(r.batch_size for r in records)
        if sizes:
            meta["batch_size"] = sizes[len(sizes) // 2]
        meta["recorder"] = ("ddp: sync = pre-forward + backward after the rank's last gradient"
                            if self._kind == "ddp" else "parameter_server: sync = wait for the server's START"
                            if self._kind == "parameter_server" else "single: no sync")
        self.trace = StepTrace(records, kind=self._kind, clock=self._clock_name, source=str(directory), meta=meta)
        self.summary = summarise(self.trace) if records else None
        if write and directory is not None and records:
            self.written = write_step_trace(directory, self.trace)
        elif write and not records:
            warnings.warn("StepTimeRecorder recorded no step: no trace written", stacklevel=2)

    def _part_path(self, rank: int) -> Path:
        assert self._directory is not None
        return self._directory / PARTS_DIR / f"rank{rank}.{self._token}.csv"

    def _write_part(self) -> None:
        """A learner's rows, for rank 0 to merge (written whole under another name, then renamed)."""
        path = self._part_path(self._rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        with temporary.open("w", newline="") as stream:
            writer = csv.writer(stream)
            writer.writerow(COLUMNS)
            for r in self.records:
                writer.writerow([r.rank, r.step, repr(r.compute_s), repr(r.data_wait_s), repr(r.sync_wait_s), r.batch_size])
        os.replace(temporary, path)

    def _collect_parts(self, trainer: pl.Trainer) -> List[StepRecord]:
        """Rank 0 of a parameter server: every learner's rows, waiting for those not lost."""
        report = getattr(trainer.strategy, "server_report", None)
        lost = {learner + 1 for learner in getattr(report, "lost", {})}
        expected = [rank for rank in range(1, trainer.num_devices * trainer.num_nodes) if rank not in lost]
        deadline = time.monotonic() + self.gather_timeout_s
        while not all(self._part_path(rank).is_file() for rank in expected) and time.monotonic() < deadline:
            time.sleep(POLL_S)
        records: List[StepRecord] = []
        found = []
        for rank in range(1, trainer.num_devices * trainer.num_nodes):
            path = self._part_path(rank)
            if not path.is_file():
                continue
            try:
                records += [r for r in read_step_trace(path, min_steps=1).records if r.rank == rank]
            except ConfigError:
                pass  # a learner that computed nothing
            found.append(rank)
            path.unlink()
        try:
            self._part_path(0).parent.rmdir()
        except OSError:
            pass  # parts of another fit are still there
        missing = sorted(set(expected) - set(found))
        if missing:
            warnings.warn(f"StepTimeRecorder: no step times from rank(s) {', '.join(map(str, missing))} within "
                          f"{self.gather_timeout_s:g} s: the trace holds the other learners", stacklevel=2)
        return records


# An ended batch's points in time (floats, or CUDA events): the previous step's end, its start, the
# user's training_step's start, (last gradient accumulated, backward returned) per backward, its end;
# then its examples and whether an optimizer step ended with it.
_Ended = Tuple[Any, Any, Any, Optional[List[tuple]], Any, int, bool]


@dataclass(slots=True)
class _OpenStep:
    """The optimizer step being recorded (several batches under gradient accumulation)."""

    compute: float = 0.0
    data_wait: float = 0.0
    sync_wait: float = 0.0
    batch_size: int = 0


class _Clock(abc.ABC):
    """Where a step's points in time come from: the host's clock, or CUDA events."""

    device_events = False

    @abc.abstractmethod
    def stamp(self) -> Any:
        """A point in time now."""

    @abc.abstractmethod
    def seconds(self, start: Any, end: Any) -> float:
        """Seconds from ``start`` to ``end``."""

    def done(self, stamp: Any) -> bool:
        return True

    def release(self, *stamps: Any) -> None:
        pass


class _HostClock(_Clock):
    def stamp(self) -> float:
        return time.perf_counter()

    def seconds(self, start: float, end: float) -> float:
        return end - start


class _CudaClock(_Clock):
    """CUDA events on the current stream: the device's own timeline, read once completed."""

    device_events = True

    def __init__(self, device: torch.device) -> None:
        self._device = device
        self._free: List[Any] = []

    def stamp(self) -> Any:
        event = self._free.pop() if self._free else torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(self._device))
        return event

    def seconds(self, start: Any, end: Any) -> float:
        start.synchronize()  # the gradient hooks may record on the autograd thread's stream
        end.synchronize()
        return start.elapsed_time(end) / 1000.0

    def done(self, stamp: Any) -> bool:
        return bool(stamp.query())

    def release(self, *stamps: Any) -> None:
        self._free.extend(s for s in stamps if s is not None)


def _batch_size(batch: Any) -> int:
    """The examples in a batch (0 where that cannot be told); a tensor or a list or tuple that
    starts with one is answered at once, every step."""
    first = batch[0] if isinstance(batch, (list, tuple)) and batch else batch
    if isinstance(first, torch.Tensor) and first.dim() > 0:
        return int(first.shape[0])
    return find_batch_size(batch) or 0


def _role_of(trainer: pl.Trainer) -> Role:
    from lightning_echo.stragglers.processes.strategy import ParameterServerStrategy
    from lightning_echo.stragglers.processes.transport import SERVER_RANK

    if isinstance(trainer.strategy, ParameterServerStrategy):
        return "server" if trainer.global_rank == SERVER_RANK else "learner"
    return "ddp" if trainer.world_size > 1 else "single"


def _wrap_training_step(pl_module: pl.LightningModule, begins: Callable[[pl.LightningModule], None]) -> Callable[[], None]:
    """Have ``begins(pl_module)`` called as the module's ``training_step`` starts (on the instance;
    undone after ``fit``)."""
    had = "training_step" in vars(pl_module)
    original = pl_module.training_step

    @wraps(original)
    def training_step(*args: Any, **kwargs: Any) -> Any:
        begins(pl_module)
        return original(*args, **kwargs)

    pl_module.training_step = training_step  # type: ignore[method-assign]

    def undo() -> None:
        if vars(pl_module).get("training_step") is training_step:
            if had:
                pl_module.training_step = original  # type: ignore[method-assign]
            else:
                del pl_module.training_step

    return undo


def _hook_gradients(pl_module: pl.LightningModule, accumulated: Callable[[], None]) -> Callable[[], None]:
    """Call ``accumulated()`` each time a trainable parameter's gradient has been accumulated."""
    handles = []
    for param in pl_module.parameters():
        if param.requires_grad and hasattr(param, "register_post_accumulate_grad_hook"):
            try:
                handles.append(param.register_post_accumulate_grad_hook(lambda _: accumulated()))
            except RuntimeError:  # not a leaf (a sharded strategy's view): backward then counts as compute
                pass

    def undo() -> None:
        for handle in handles:
            handle.remove()

    return undo


def _gather_ddp(trainer: pl.Trainer, records: Sequence[StepRecord]) -> List[StepRecord]:
    """Every rank's rows on every rank: one all-gather of the row counts, one of the padded rows."""
    device = trainer.strategy.root_device
    rows = torch.tensor([[r.rank, r.step, r.compute_s, r.data_wait_s, r.sync_wait_s, r.batch_size] for r in records],
                        dtype=torch.float64).reshape(-1, 6)
    counts = trainer.strategy.all_gather(torch.tensor([len(records)], device=device))
    longest = max(1, int(counts.max()))
    padded = torch.full((longest, 6), -1.0, dtype=torch.float64)
    padded[: len(records)] = rows
    gathered = trainer.strategy.all_gather(padded.to(device)).cpu().reshape(-1, 6)
    return [StepRecord(int(row[0]), int(row[1]), float(row[2]), float(row[3]), float(row[4]), int(row[5]))
            for row in gathered.tolist() if row[0] >= 0]


def _metrics_of(record: StepRecord) -> Dict[str, float]:
    return {StepTimes.COMPUTE_S: record.compute_s, StepTimes.DATA_WAIT_S: record.data_wait_s,
            StepTimes.SYNC_WAIT_S: record.sync_wait_s}


def _log_through_module(pl_module: pl.LightningModule, record: StepRecord) -> None:
    """A learner's previous step, logged from its ``training_step``: it travels to the server."""
    for name, value in _metrics_of(record).items():
        pl_module.log(name, value, on_step=True, on_epoch=False, batch_size=1)


def _earlier_rows(directory: Path, kind: RunKind) -> List[StepRecord]:
    """The rows of the directory's trace from an earlier fit of the same kind (none if absent or unreadable)."""
    try:
        earlier = read_step_trace(directory, min_steps=0)
    except ConfigError:
        return []
    return earlier.records if earlier.kind == kind else []


def _continued(earlier: Iterable[StepRecord], new: Sequence[StepRecord], append: bool) -> List[StepRecord]:
    """A resumed fit's rows after the earlier fit's, per rank: the earlier rows before the first new
    step (the steps after the checkpoint were taken again); with ``append``, every earlier row and
    the new ones numbered after them (a learner numbers its gradients from 0 in every fit)."""
    by_rank: Dict[int, List[StepRecord]] = {}
    for record in earlier:
        by_rank.setdefault(record.rank, []).append(record)
    merged: List[StepRecord] = []
    for rank in sorted({r.rank for r in new} | set(by_rank)):
        old = sorted(by_rank.get(rank, []), key=lambda r: r.step)
        mine = [r for r in new if r.rank == rank]
        if append:
            offset = old[-1].step + 1 if old else 0
            merged += old + [StepRecord(r.rank, r.step + offset, r.compute_s, r.data_wait_s, r.sync_wait_s, r.batch_size)
                             for r in mine]
        else:
            first = min((r.step for r in mine), default=math.inf)
            merged += [r for r in old if r.step < first] + mine
    return merged
