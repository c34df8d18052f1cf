"""Read finished (or interrupted) runs from disk: ``lightning-echo`` run directories (``run.json``
plus the CSV log, or the wandb offline run inside) and bare wandb offline run directories."""

from __future__ import annotations

import bisect
import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

from lightning_echo.core.progress import SIMULATED, WALL_CLOCK
from lightning_echo.errors import LightningEchoError
from lightning_echo.records import CLOCK, RUN_FILE, RUNNING, read_run_record
from lightning_echo.report.wandb_offline import read_offline_run

STEP, ELAPSED, SIMULATED_TIME, FRESH = "progress/optimizer_steps", "time/elapsed_s", "time/simulated_s", "progress/fresh_samples"
# The logged time of each clock a run can be measured in.
TIME_KEYS = {WALL_CLOCK: ELAPSED, SIMULATED: SIMULATED_TIME}
# How far below a given directory runs are looked for (sweep dir / job dir / wandb / offline-run).
_MAX_DEPTH = 4


class ReportInputError(LightningEchoError):
    """A directory given to ``lightning-echo report`` holds no runs, or does not exist."""


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
    """One run as the report sees it. ``status``: completed, failed, or crashed (no end recorded)."""

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


def find_runs(paths: Iterable[Path]) -> list[Run]:
    """Every run under ``paths`` (run directories, sweep directories, wandb offline runs).

    Raises ReportInputError naming the path when one does not exist or holds no runs.
    """
    runs: list[Run] = []
    for path in map(Path, paths):
        if not path.exists():
            raise ReportInputError(f"report: {path}: no such directory")
        if not path.is_dir():
            raise ReportInputError(f"report: {path}: not a directory (give a run or sweep directory)")
        found = [read_run(p) for p in _run_dirs(path)]
        if not found:
            raise ReportInputError(
                f"report: {path}: no runs found (expected lightning-echo run directories with {RUN_FILE}, "
                "a sweep directory holding them, or wandb offline-run-* directories)"
            )
        runs.extend(found)
    return runs


def read_run(path: Path) -> Run:
    """One run directory: a lightning-echo run (``run.json``) or a wandb ``offline-run-*`` directory."""
    if (path / RUN_FILE).is_file():
        return _read_lightning_echo_run(path)
    return _read_wandb_run(path)


def _run_dirs(root: Path) -> list[Path]:
    if (root / RUN_FILE).is_file() or _is_wandb_run(root):
        return [root]
    found: list[Path] = []
    frontier = [root]
    for _ in range(_MAX_DEPTH):
        next_frontier = []
        for directory in frontier:
            for child in sorted(p for p in directory.iterdir() if p.is_dir()):
                if (child / RUN_FILE).is_file() or _is_wandb_run(child):
                    found.append(child)
                elif not child.name.startswith("."):
                    next_frontier.append(child)
        frontier = next_frontier
    return found


def _is_wandb_run(path: Path) -> bool:
    return path.name.startswith("offline-run-") and any(path.glob("run-*.wandb"))


def _read_lightning_echo_run(path: Path) -> Run:
    record = read_run_record(path)
    status = record.get("status", RUNNING)
    run = Run(path=path, name=str(record.get("name") or path.name), group=str(record.get("group") or ""),
              config=dict(record.get("config") or {}), status="crashed" if status == RUNNING else status,
              source="csv", error=record.get("error"))
    metrics_csv = path / "csv" / "metrics.csv"
    wandb_runs = sorted((path / "wandb").glob("offline-run-*")) if (path / "wandb").is_dir() else []
    if metrics_csv.is_file():
        run.series = series_from_rows(_csv_rows(metrics_csv), step_key="step", time_key=_time_key(run.config))
    elif wandb_runs:
        run.source = "wandb"
        run.series = _read_wandb_run(wandb_runs[-1]).series
    return run


def _read_wandb_run(path: Path) -> Run:
    offline = read_offline_run(path)
    config = {key: _unwrap(value) for key, value in offline.config.items() if not key.startswith("_")}
    config.pop("config", None)
    if offline.exit_code is None:
        status = "crashed"
    else:
        status = "completed" if offline.exit_code == 0 else "failed"
    return Run(path=path, name=offline.name or offline.run_id, group=offline.group, config=config, status=status,
               source="wandb", series=series_from_rows(offline.history, step_key="trainer/global_step",
                                                       time_key=_time_key(config)),
               error=None if status != "failed" else f"exit code {offline.exit_code}")


def _unwrap(value: Any) -> Any:
    # wandb stores each config item as {"value": ..., "desc": ...}.
    return value["value"] if isinstance(value, dict) and "value" in value else value


def _csv_rows(path: Path) -> list[dict[str, Any]]:
    with path.open(newline="") as handle:
        return [{k: _number(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(handle)]


def _number(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text


def _time_key(config: dict[str, Any]) -> str:
    return TIME_KEYS.get(str(config.get(CLOCK) or WALL_CLOCK), ELAPSED)


def series_from_rows(rows: list[dict[str, Any]], step_key: str, time_key: str = ELAPSED) -> dict[str, list[Point]]:
    """Turn logged rows into per-metric points, each placed at the progress (time on the run's
    clock, ``time_key``, and fresh samples) last logged at or before its step."""
    progress: list[tuple[int, float, float]] = []
    for row in rows:
        if time_key in row and FRESH in row:
            step = row.get(STEP, row.get(step_key))
            progress.append((int(step), float(row[time_key]), float(row[FRESH])))
    progress.sort(key=lambda item: item[0])
    series: dict[str, list[Point]] = {}
    skip = {ELAPSED, SIMULATED_TIME, FRESH, STEP, step_key, "epoch", "_step", "_runtime", "_timestamp"}
    steps = [item[0] for item in progress]
    for row in rows:
        if step_key not in row:
            continue
        step = int(row[step_key])
        for key, value in row.items():
            if key in skip or key.startswith(("progress/", "time/")) or not isinstance(value, (int, float)):
                continue
            if not math.isfinite(float(value)):
                continue
            elapsed, fresh = _progress_at(progress, steps, step)
            series.setdefault(key, []).append(Point(step, elapsed, fresh, float(value)))
    for points in series.values():
        points.sort(key=lambda p: (p.step, p.elapsed_s))
    return series


def _progress_at(progress: list[tuple[int, float, float]], steps: list[int], step: int) -> tuple[float, float]:
    """Elapsed time and fresh samples of the last progress row at or before ``step``."""
    if not progress:
        return math.nan, math.nan
    index = bisect.bisect_right(steps, step) - 1
    _, elapsed, fresh = progress[max(index, 0)]
    return elapsed, fresh
