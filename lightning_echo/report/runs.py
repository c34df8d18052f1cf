"""Read finished (or interrupted) runs from disk: ``lightning-echo`` run directories (``run.json``
plus the CSV log, or the wandb offline run inside) and bare wandb offline run directories.

Run directories come from anyone: a run whose files cannot be read (truncated or non-UTF-8
``run.json``, fields of the wrong type, a malformed CSV row, a truncated ``.wandb`` file) is
returned with status ``unreadable`` and the reason, and the report leaves it out.
"""

from __future__ import annotations

import bisect
import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

from lightning_echo.core.progress import SIMULATED, WALL_CLOCK
from lightning_echo.errors import LightningEchoError
from lightning_echo.metric_names import Progress
from lightning_echo.records import (
    ALGORITHM_KEYS,
    BASELINE,
    CLOCK,
    COMPLETED,
    DIVERGED,
    DIVERGED_EXIT_CODE,
    FAILED,
    LABEL,
    RUN_FILE,
    RUNNING,
    read_run_record,
)
from lightning_echo.report.wandb_offline import read_offline_run

STEP, ELAPSED, SIMULATED_TIME, FRESH = Progress.OPTIMIZER_STEPS, Progress.ELAPSED_S, Progress.SIMULATED_S, Progress.FRESH_SAMPLES
# The logged time of each clock a run can be measured in.
TIME_KEYS = {WALL_CLOCK: ELAPSED, SIMULATED: SIMULATED_TIME}
# How far below a given directory runs are looked for (sweep dir / job dir / wandb / offline-run).
_MAX_DEPTH = 4
# Statuses only the report gives: a run that never recorded its end, and one whose files are malformed.
CRASHED, UNREADABLE = "crashed", "unreadable"
METRICS_CSV = Path("csv") / "metrics.csv"
WANDB_STEP = "trainer/global_step"


class ReportInputError(LightningEchoError):
    """A directory given to ``lightning-echo report`` holds no runs, or does not exist."""


class RunFileError(ValueError):
    """A run's files are malformed; the message says which file and what is wrong."""


@dataclass
class Point:
    """One logged value of a metric with where training was when it was logged (``elapsed_s`` is
    the time on the run's own clock: wall-clock training time, or simulated time)."""

    step: int
    elapsed_s: float
    fresh_samples: float
    value: float


@dataclass
class Run:
    """One run as the report sees it. ``status``: completed, failed, diverged, interrupted, crashed
    (no end recorded), or unreadable (``error`` says why)."""

    path: Path
    name: str
    group: str
    config: dict[str, Any]
    status: str
    source: str
    series: dict[str, list[Point]] = field(default_factory=dict)
    error: Optional[str] = None

    @property
    def clock(self) -> str:
        """The clock its time axis is measured in: ``wall_clock`` or ``simulated``."""
        return str(self.config.get(CLOCK) or WALL_CLOCK)

    @property
    def last_step(self) -> int:
        return max((p.step for points in self.series.values() for p in points), default=0)

    @property
    def diverged(self) -> bool:
        """Whether it diverged (recorded so, or a metric it logged is not finite)."""
        return self.status == DIVERGED


def find_runs(paths: Iterable[Path]) -> list[Run]:
    """Every run under ``paths`` (run directories, sweep directories, wandb offline runs), each
    once however many paths or symbolic links lead to it.

    Raises ReportInputError naming the path when one does not exist or holds no runs.
    """
    runs: list[Run] = []
    seen: set[Path] = set()
    for path in map(Path, paths):
        if not path.exists():
            raise ReportInputError(f"report: {path}: no such directory")
        if not path.is_dir():
            raise ReportInputError(f"report: {path}: not a directory (give a run or sweep directory)")
        found = _run_dirs(path)
        if not found:
            raise ReportInputError(
                f"report: {path}: no runs found (expected lightning-echo run directories with {RUN_FILE}, "
                "a sweep directory holding them, or wandb offline-run-* directories)"
            )
        for directory in found:
            real = directory.resolve()
            if real not in seen:
                seen.add(real)
                runs.append(read_run(directory))
    return runs


def read_run(path: Path) -> Run:
    """One run directory: a lightning-echo run (``run.json``) or a wandb ``offline-run-*``
    directory; a run whose files are malformed comes back ``unreadable`` with the reason."""
    try:
        if (path / RUN_FILE).is_file():
            return _read_lightning_echo_run(path)
        return _read_wandb_run(path)
    except UnicodeDecodeError as error:
        reason = _not_utf8(error)
    except (OSError, ValueError) as error:
        reason = " ".join(str(error).split()) or type(error).__name__
    return Run(path=path, name=path.name, group="", config={}, status=UNREADABLE, source="", error=reason)


def _not_utf8(error: UnicodeDecodeError) -> str:
    return f"not UTF-8 text ({error.reason} at byte {error.start})"


def _run_dirs(root: Path) -> list[Path]:
    """Run directories at or below ``root``; a directory reached twice (symbolic links) is walked once."""
    if _is_run_dir(root):
        return [root]
    found: list[Path] = []
    visited = {root.resolve()}
    frontier = [root]
    for _ in range(_MAX_DEPTH):
        next_frontier = []
        for directory in frontier:
            try:
                children = sorted(p for p in directory.iterdir() if p.is_dir())
            except OSError:  # unreadable directory: nothing to report from it
                continue
            for child in children:
                real = child.resolve()
                if real in visited:
                    continue
                visited.add(real)
                if _is_run_dir(child):
                    found.append(child)
                elif not child.name.startswith("."):
                    next_frontier.append(child)
        frontier = next_frontier
    return found


def _is_run_dir(path: Path) -> bool:
    return (path / RUN_FILE).is_file() or _is_wandb_run(path)


def _is_wandb_run(path: Path) -> bool:
    return path.name.startswith("offline-run-") and any(path.glob("run-*.wandb"))


def _read_lightning_echo_run(path: Path) -> Run:
    try:
        record = read_run_record(path)
    except UnicodeDecodeError as error:
        raise RunFileError(f"{RUN_FILE}: {_not_utf8(error)}") from None
    except ValueError as error:  # JSONDecodeError: truncated or not JSON
        raise RunFileError(f"{RUN_FILE}: not valid JSON ({error})") from None
    if not isinstance(record, dict):
        raise RunFileError(f"{RUN_FILE}: holds a {type(record).__name__}, not an object")
    status = _text(record, "status", RUN_FILE) or RUNNING
    config = record.get("config") or {}
    if not isinstance(config, dict):
        raise RunFileError(f"{RUN_FILE}: config is a {type(config).__name__}, not an object")
    _check_config(config, RUN_FILE)
    run = Run(path=path, name=_text(record, "name", RUN_FILE) or path.name, group=_text(record, "group", RUN_FILE) or "",
              config=config, status=CRASHED if status == RUNNING else status, source="csv",
              error=_text(record, "error", RUN_FILE))
    metrics_csv = path / METRICS_CSV
    wandb_runs = sorted((path / "wandb").glob("offline-run-*")) if (path / "wandb").is_dir() else []
    if metrics_csv.is_file():
        try:
            run.series, non_finite = read_series(_csv_rows(metrics_csv), step_key="step", time_key=_time_key(run.config))
        except ValueError as error:
            reason = _not_utf8(error) if isinstance(error, UnicodeDecodeError) else str(error)
            raise RunFileError(f"{METRICS_CSV}: {reason}") from None
    elif wandb_runs:
        run.source = "wandb"
        history = read_offline_run(wandb_runs[-1]).history
        run.series, non_finite = read_series(history, step_key=WANDB_STEP, time_key=_time_key(run.config))
    else:
        non_finite = None
    return _mark_divergence(run, non_finite)


def _read_wandb_run(path: Path) -> Run:
    offline = read_offline_run(path)
    config = {key: _unwrap(value) for key, value in offline.config.items() if not key.startswith("_")}
    _check_config(config, "wandb config")
    if offline.exit_code is None:
        status = CRASHED
    else:
        status = {0: COMPLETED, DIVERGED_EXIT_CODE: DIVERGED}.get(offline.exit_code, FAILED)
    series, non_finite = read_series(offline.history, step_key=WANDB_STEP, time_key=_time_key(config))
    run = Run(path=path, name=offline.name or offline.run_id, group=offline.group, config=config, status=status,
              source="wandb", series=series, error=f"exit code {offline.exit_code}" if status == FAILED else None)
    return _mark_divergence(run, non_finite)


def _mark_divergence(run: Run, non_finite: Optional[str]) -> Run:
    """A run whose log holds a value that is not finite diverged, whatever its record says."""
    if non_finite is not None and run.status != DIVERGED:
        found = f"{non_finite} in its log"
        run.error = f"{run.status}: {run.error}; {found}" if run.error else found
        run.status = DIVERGED
    elif run.status == DIVERGED and not run.error:
        run.error = non_finite
    return run


def _text(record: dict[str, Any], key: str, where: str) -> Optional[str]:
    value = record.get(key)
    if value is not None and not isinstance(value, str):
        raise RunFileError(f"{where}: {key} is a {type(value).__name__}, not a string")
    return value


def _check_config(config: dict[str, Any], where: str) -> None:
    """The keys the report reads must have the types the command line writes."""
    for key in (LABEL, CLOCK):
        _text(config, key, where)
    if config.get(BASELINE) is not None and not isinstance(config[BASELINE], bool):
        raise RunFileError(f"{where}: {BASELINE} is a {type(config[BASELINE]).__name__}, not true or false")
    declared = config.get(ALGORITHM_KEYS)
    if declared is not None and not (isinstance(declared, list) and all(isinstance(k, str) for k in declared)):
        raise RunFileError(f"{where}: {ALGORITHM_KEYS} must be a list of strings")
    if config.get("config") is not None and not isinstance(config["config"], dict):
        raise RunFileError(f"{where}: config.config is a {type(config['config']).__name__}, not an object")


def _unwrap(value: Any) -> Any:
    # wandb stores each config item as {"value": ..., "desc": ...}.
    return value["value"] if isinstance(value, dict) and "value" in value else value


def _csv_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a CSV log; a row with more fields than the header is an error (line number in it)."""
    rows = []
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, [])
            for fields in reader:
                if len(fields) > len(header):
                    raise RunFileError(f"line {reader.line_num} has {len(fields)} fields, the header {len(header)}")
                rows.append({k: _number(v) for k, v in zip(header, fields) if v != ""})
    except csv.Error as error:
        raise RunFileError(f"not a CSV file ({error})") from None
    return rows


def _number(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text


def _time_key(config: dict[str, Any]) -> str:
    return TIME_KEYS.get(str(config.get(CLOCK) or WALL_CLOCK), ELAPSED)


def series_from_rows(rows: list[dict[str, Any]], step_key: str, time_key: str = ELAPSED) -> dict[str, list[Point]]:
    """Turn logged rows into per-metric points, each placed at the progress (time on the run's
    clock, ``time_key``, and fresh samples) last logged at or before its step. Values that are not
    finite are left out (:func:`read_series` also says where the first one was)."""
    return read_series(rows, step_key, time_key)[0]


def read_series(rows: list[dict[str, Any]], step_key: str, time_key: str = ELAPSED) -> tuple[dict[str, list[Point]], Optional[str]]:
    """:func:`series_from_rows`, plus ``"train/loss=nan at step 3"`` for the first value that is not
    finite (None when all are). Raises ValueError for a step that is not a whole number."""
    progress: list[tuple[int, float, float]] = []
    for row in rows:
        if time_key in row and FRESH in row:
            step = _step(row.get(STEP, row.get(step_key)), STEP)
            progress.append((step, _float(row[time_key], time_key, step), _float(row[FRESH], FRESH, step)))
    progress.sort(key=lambda item: item[0])
    series: dict[str, list[Point]] = {}
    skip = {ELAPSED, SIMULATED_TIME, FRESH, STEP, step_key, "epoch", "_step", "_runtime", "_timestamp"}
    steps = [item[0] for item in progress]
    non_finite: Optional[tuple[int, str]] = None
    for row in rows:
        if step_key not in row:
            continue
        step = _step(row[step_key], step_key)
        for key, value in row.items():
            if key in skip or key.startswith(("progress/", "time/")) or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if not math.isfinite(float(value)):
                if non_finite is None or step < non_finite[0]:
                    non_finite = (step, f"{key}={float(value)} at step {step}")
                continue
            elapsed, fresh = _progress_at(progress, steps, step)
            series.setdefault(key, []).append(Point(step, elapsed, fresh, float(value)))
    for points in series.values():
        points.sort(key=lambda p: (p.step, p.elapsed_s))
    return series, non_finite[1] if non_finite else None


def _step(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value != int(value):
        raise RunFileError(f"{key} {value!r} is not a step number")
    return int(value)


def _float(value: Any, key: str, step: int) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RunFileError(f"{key} {value!r} at step {step} is not a number")
    return float(value)


def _progress_at(progress: list[tuple[int, float, float]], steps: list[int], step: int) -> tuple[float, float]:
    """Elapsed time and fresh samples of the last progress row at or before ``step``."""
    if not progress:
        return math.nan, math.nan
    index = bisect.bisect_right(steps, step) - 1
    _, elapsed, fresh = progress[max(index, 0)]
    return elapsed, fresh
