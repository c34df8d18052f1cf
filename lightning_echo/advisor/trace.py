"""A recorded run's step times, as files in its run directory (the advisor's input).

- ``step_times.csv``: one row per rank and optimizer step, header
  ``rank,step,compute_s,data_wait_s,sync_wait_s,batch_size`` (seconds: forward and backward;
  waiting for the next batch; waiting for the other ranks or the server);
- ``compute_times.csv``: the compute times alone in the delay models' trace format (header
  ``learner,seconds``, rank ``r`` as learner ``r``), so ``stale.delay.trace=<run>/compute_times.csv``
  replays the recorded cluster on simulated learners;
- ``step_times.json``: what was recorded (``kind``: ``single``, ``ddp`` or ``parameter_server``;
  ``rank_count``; ``clock``) and the per-rank summary of :func:`summarise` (``ranks``: rank -> figures).
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence, Union, get_args

from lightning_echo.errors import ConfigError

RunKind = Literal["single", "ddp", "parameter_server"]
RUN_KINDS: tuple[RunKind, ...] = get_args(RunKind)
STEPS_FILE, COMPUTE_FILE, SUMMARY_FILE = "step_times.csv", "compute_times.csv", "step_times.json"
COLUMNS = ("rank", "step", "compute_s", "data_wait_s", "sync_wait_s", "batch_size")
MIN_STEPS = 10  # per rank: fewer says nothing about a distribution


@dataclass(frozen=True)
class StepRecord:
    """One optimizer step of one rank."""

    rank: int
    step: int
    compute_s: float
    data_wait_s: float = 0.0
    sync_wait_s: float = 0.0
    batch_size: int = 0


@dataclass
class StepTrace:
    """Every recorded step of a run, with what kind of run recorded it."""

    records: list[StepRecord]
    kind: RunKind = "single"
    clock: str = "wall_clock"
    source: str = "trace"
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def ranks(self) -> list[int]:
        """The ranks that recorded steps, in order."""
        return sorted({r.rank for r in self.records})

    def of_rank(self, rank: int) -> list[StepRecord]:
        """``rank``'s steps in step order."""
        return sorted((r for r in self.records if r.rank == rank), key=lambda r: r.step)

    def compute_times(self, rank: int) -> list[float]:
        """``rank``'s compute time per step."""
        return [r.compute_s for r in self.of_rank(rank)]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation (nan for no values)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarise(trace: StepTrace) -> dict[str, Any]:
    """Per rank: steps, compute median / p90 / p99 / mean, data-wait and sync-wait fractions of the
    step, its median over the median of the ranks' medians; for the run: the slowest rank's."""
    ranks: dict[str, Any] = {}
    for rank in trace.ranks:
        steps = trace.of_rank(rank)
        compute = [s.compute_s for s in steps]
        total = sum(s.compute_s + s.data_wait_s + s.sync_wait_s for s in steps)
        ranks[str(rank)] = {
            "steps": len(steps),
            "compute_median_s": statistics.median(compute),
            "compute_p90_s": percentile(compute, 90),
            "compute_p99_s": percentile(compute, 99),
            "compute_mean_s": statistics.fmean(compute),
            "data_wait_fraction": sum(s.data_wait_s for s in steps) / total if total > 0 else 0.0,
            "sync_wait_fraction": sum(s.sync_wait_s for s in steps) / total if total > 0 else 0.0,
        }
    medians = [v["compute_median_s"] for v in ranks.values()]
    typical = statistics.median(medians) if medians else math.nan
    for values in ranks.values():
        values["median_over_ranks_median"] = values["compute_median_s"] / typical if typical > 0 else math.nan
    return {"ranks": ranks, "slowest_over_median": max(medians) / typical if medians and typical > 0 else math.nan}


def write_step_trace(directory: Union[str, Path], trace: StepTrace) -> Path:
    """Write the three files into ``directory``; returns the steps file."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    records = sorted(trace.records, key=lambda r: (r.rank, r.step))
    with (directory / STEPS_FILE).open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(COLUMNS)
        for r in records:
            writer.writerow([r.rank, r.step, repr(r.compute_s), repr(r.data_wait_s), repr(r.sync_wait_s), r.batch_size])
    with (directory / COMPUTE_FILE).open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["learner", "seconds"])
        ranks = {rank: index for index, rank in enumerate(trace.ranks)}
        for r in records:
            if r.compute_s > 0:
                writer.writerow([ranks[r.rank], repr(r.compute_s)])
    summary = {"kind": trace.kind, "clock": trace.clock, "rank_count": len(trace.ranks), **trace.meta, **summarise(trace)}
    (directory / SUMMARY_FILE).write_text(json.dumps(summary, indent=1) + "\n")
    return directory / STEPS_FILE


def read_step_trace(path: Union[str, Path], min_steps: int = MIN_STEPS) -> StepTrace:
    """A run directory (its ``step_times.csv``), a ``step_times.csv``, or a compute-time trace in the
    delay models' format (``learner,seconds`` or ``seconds``: compute times only). One-line
    ConfigError for a missing, malformed or too short trace, or one recorded on a simulated clock."""
    path = Path(path).expanduser()
    if path.is_dir():
        if not (path / STEPS_FILE).is_file():
            raise ConfigError("trace", str(path), f"holds no {STEPS_FILE}: record the run with StepTimeRecorder first")
        path = path / STEPS_FILE
    if not path.is_file():
        raise ConfigError("trace", str(path), "does not exist: give a run directory or a trace CSV")
    try:
        rows = list(csv.reader(path.read_text(encoding="utf-8").splitlines()))
    except (UnicodeDecodeError, csv.Error) as error:
        raise ConfigError("trace", str(path), f"is not UTF-8 CSV text ({type(error).__name__})") from None
    if not rows:
        raise ConfigError("trace", str(path), "is empty")
    header = [cell.strip().lower() for cell in rows[0]]
    meta = _summary_of(path)
    if meta.get("clock", "wall_clock") != "wall_clock":
        raise ConfigError("trace", str(path), f"was recorded on a {meta['clock']} clock (a simulated run): record a "
                                              "run on real hardware, or replay its delay model directly")
    if tuple(header) == COLUMNS:
        records = [_record(row, path, line) for line, row in enumerate(rows[1:], start=2) if row]
        kind = meta.get("kind", "single")
        if kind not in RUN_KINDS:
            raise ConfigError("trace", str(path), f"says kind={kind!r}: must be one of {', '.join(RUN_KINDS)}")
    elif header in (["learner", "seconds"], ["seconds"]):
        records = [_plain_record(row, header, path, line) for line, row in enumerate(rows[1:], start=2) if row]
        kind = "parameter_server"
    else:
        raise ConfigError("trace", str(path), f"has header {','.join(rows[0])!r}: must be {','.join(COLUMNS)} "
                                              "(a recorded run) or learner,seconds / seconds (compute times)")
    trace = StepTrace(records, kind=kind, source=str(path), meta={k: v for k, v in meta.items() if k in ("model", "batch_size")})
    short = [(rank, len(trace.of_rank(rank))) for rank in trace.ranks if len(trace.of_rank(rank)) < min_steps]
    if not records or short:
        rank, count = short[0] if short else (0, 0)
        raise ConfigError("trace", str(path), f"is too short: rank {rank} has {count} steps, at least {min_steps} are needed")
    return trace


def _summary_of(steps: Path) -> dict[str, Any]:
    summary = steps.parent / SUMMARY_FILE
    if steps.name != STEPS_FILE or not summary.is_file():
        return {}
    try:
        return dict(json.loads(summary.read_text()))
    except (ValueError, TypeError):
        raise ConfigError("trace", str(summary), "is not the JSON a recorder writes") from None


def _number(text: str, path: Path, line: int, column: str, integer: bool = False) -> float:
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise ConfigError("trace", f"{path} line {line}", f"{column}={text!r}: must be a finite number >= 0")
    return value


def _record(row: list[str], path: Path, line: int) -> StepRecord:
    if len(row) != len(COLUMNS):
        raise ConfigError("trace", f"{path} line {line}", f"has {len(row)} columns, not {len(COLUMNS)}")
    values = [_number(text, path, line, name, integer=name in ("rank", "step", "batch_size")) for name, text in zip(COLUMNS, row)]
    return StepRecord(int(values[0]), int(values[1]), values[2], values[3], values[4], int(values[5]))


def _plain_record(row: list[str], header: list[str], path: Path, line: int) -> StepRecord:
    if len(row) != len(header):
        raise ConfigError("trace", f"{path} line {line}", f"has {len(row)} columns, not {len(header)}")
    rank = int(_number(row[0], path, line, "learner", integer=True)) if len(header) == 2 else 0
    seconds = _number(row[-1], path, line, "seconds")
    return StepRecord(rank, line - 2, seconds)

