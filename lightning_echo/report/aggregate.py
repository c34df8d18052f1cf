"""Group runs into configurations, average over seeds, and measure time to a target loss.

Pure functions over :class:`~lightning_echo.report.runs.Run` records; no plotting, no files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from lightning_echo.core.progress import SIMULATED, WALL_CLOCK
from lightning_echo.records import ALGORITHM_KEYS, BASELINE, CLOCK, LABEL
from lightning_echo.report.runs import Point, Run

# x-axis name -> (Point attribute, axis label); the time axis is labelled by the runs' clock.
AXES = {
    "time": ("elapsed_s", "time [s]"),
    "fresh_samples": ("fresh_samples", "fresh samples"),
    "steps": ("step", "optimizer steps"),
}
TIME_AXIS_LABELS = {
    WALL_CLOCK: "wall-clock training time [s]",
    SIMULATED: "simulated time [s]",
    "mixed": "time [s] (wall-clock and simulated runs mixed)",
}
# Keys that never separate configurations: seeds are averaged over, the group is the sweep id,
# the others describe the run rather than set it up.
NOT_A_SETTING = {"seed", "group", "name", "config", LABEL, ALGORITHM_KEYS, CLOCK, BASELINE}
# Keys that belong to every algorithm: they differ between a baseline and the runs compared with it.
COMMON_ALGORITHM_KEYS = {"algorithm", "optimizer"}
# The baseline every other configuration's speed-up is measured against: runs that say so
# (``baseline`` in their record), or, in records that predate it, runs of the sync algorithm.
SYNC = "sync"
GRID_POINTS = 80


@dataclass
class Band:
    """Mean and min/max over seeds of a metric on a common x grid."""

    x: list[float]
    mean: list[float]
    low: list[float]
    high: list[float]


@dataclass
class ReachedTarget:
    """Where one run first logged a value at or below the target."""

    elapsed_s: float
    fresh_samples: float
    step: int


@dataclass
class Configuration:
    """The runs sharing every setting but the seed."""

    label: str
    settings: dict[str, Any]
    runs: list[Run]
    bands: dict[str, Band] = field(default_factory=dict)
    final_mean: Optional[float] = None
    final_std: Optional[float] = None
    reached: list[ReachedTarget] = field(default_factory=list)
    baseline: Optional[str] = None
    speedup: Optional[float] = None

    @property
    def is_sync(self) -> bool:
        """Whether this is a synchronous baseline configuration."""
        declared = self.runs[0].config.get(BASELINE) if self.runs else None
        return bool(declared) if declared is not None else self.settings.get("algorithm") == SYNC

    @property
    def clock(self) -> str:
        """The clock its runs' time is measured in."""
        return self.runs[0].clock if self.runs else WALL_CLOCK

    def mean_to_target(self, attribute: str) -> Optional[float]:
        """Mean over the runs that reached the target of ``elapsed_s``, ``fresh_samples`` or ``step``."""
        values = [float(getattr(r, attribute)) for r in self.reached]
        return float(np.mean(values)) if values else None


@dataclass
class Comparison:
    """Everything a report shows."""

    metric: str
    target: Optional[float]
    target_rule: str
    configurations: list[Configuration]
    runs: list[Run]
    excluded: list[tuple[Run, str]]
    warnings: list[str]
    clock: str = WALL_CLOCK

    def axis_label(self, axis: str) -> str:
        """The label of an x-axis; the time axis says which clock it is."""
        return TIME_AXIS_LABELS[self.clock] if axis == "time" else AXES[axis][1]


def compare_runs(
    runs: Sequence[Run],
    metric: str = "val/loss",
    target_loss: Optional[float] = None,
    target_gap: float = 0.01,
) -> Comparison:
    """Group ``runs`` by their settings, aggregate ``metric`` over seeds and compute speed-ups.

    The target is ``target_loss`` when given; otherwise the synchronous configurations' worst final
    mean ``metric`` times ``1 + target_gap`` (without synchronous runs, the worst final mean of all
    configurations): the level the baseline reaches by the end of its budget.
    """
    warnings: list[str] = []
    excluded: list[tuple[Run, str]] = []
    usable: list[Run] = []
    for run in runs:
        if _points(run, metric):
            usable.append(run)
        else:
            logged = ", ".join(sorted(run.series)) or "nothing"
            excluded.append((run, f"no {metric} logged (logged: {logged})"))
    for run, why in excluded:
        warnings.append(f"{run.path}: left out, {why}")
    for run in usable:
        if run.status != "completed":
            warnings.append(f"{run.path}: {run.status} at step {run.last_step}; its partial curve is included"
                            + (f" ({run.error})" if run.error else ""))
    warnings.extend(_incomparable(usable))
    clocks = sorted({run.clock for run in usable})
    clock = clocks[0] if len(clocks) == 1 else ("mixed" if clocks else WALL_CLOCK)
    if clock == "mixed":
        warnings.append(f"runs are measured on different clocks ({', '.join(clocks)}): their times are not comparable")
    configurations = _configurations(usable)
    for configuration in configurations:
        finals = [_points(run, metric)[-1].value for run in configuration.runs]
        configuration.final_mean = float(np.mean(finals))
        configuration.final_std = float(np.std(finals))
        configuration.bands = {axis: band(configuration.runs, metric, attribute) for axis, (attribute, _) in AXES.items()}
    target, rule = _target(configurations, metric, target_loss, target_gap)
    for configuration in configurations:
        if target is not None:
            configuration.reached = [r for r in (first_at_or_below(_points(run, metric), target) for run in configuration.runs) if r]
    _speedups(configurations, algorithm_keys(usable))
    return Comparison(metric, target, rule, configurations, list(runs), excluded, warnings, clock)


def first_at_or_below(points: Sequence[Point], target: float) -> Optional[ReachedTarget]:
    """The first logged point whose value is at or below ``target`` (no interpolation)."""
    for point in points:
        if point.value <= target:
            return ReachedTarget(point.elapsed_s, point.fresh_samples, point.step)
    return None


def band(runs: Sequence[Run], metric: str, attribute: str) -> Band:
    """Mean and min/max over ``runs`` of ``metric`` against ``attribute``, linearly interpolated on
    a grid up to the shortest run's end (so every point averages all seeds)."""
    curves = []
    for run in runs:
        points = _points(run, metric)
        xs = np.array([float(getattr(p, attribute)) for p in points])
        ys = np.array([p.value for p in points])
        keep = np.isfinite(xs)
        if keep.any():
            curves.append((xs[keep], ys[keep]))
    if not curves:
        return Band([], [], [], [])
    start = max(xs[0] for xs, _ in curves)
    stop = min(xs[-1] for xs, _ in curves)
    grid = np.linspace(start, stop, GRID_POINTS) if stop > start else np.array([stop])
    values = np.stack([np.interp(grid, xs, ys) for xs, ys in curves])
    return Band(grid.tolist(), values.mean(0).tolist(), values.min(0).tolist(), values.max(0).tolist())


def _points(run: Run, metric: str) -> list[Point]:
    return run.series.get(metric, [])


def _settings(run: Run) -> dict[str, Any]:
    return {k: v for k, v in run.config.items() if k not in NOT_A_SETTING and not isinstance(v, (dict, list))}


def algorithm_keys(runs: Sequence[Run]) -> set[str]:
    """Every key that belongs to an algorithm (as the runs declare them), plus the common ones."""
    keys = set(COMMON_ALGORITHM_KEYS)
    for run in runs:
        declared = run.config.get(ALGORITHM_KEYS)
        if isinstance(declared, (list, tuple)):
            keys.update(map(str, declared))
    return keys


def _configurations(runs: Sequence[Run]) -> list[Configuration]:
    all_settings = [_settings(run) for run in runs]
    varying = varying_settings(all_settings)
    own = algorithm_keys(runs)
    by_label: dict[str, Configuration] = {}
    for run, settings in zip(runs, all_settings):
        label = configuration_label(settings, varying, run.config.get(LABEL), own) or run.name
        if label not in by_label:
            by_label[label] = Configuration(label, settings, [])
        by_label[label].runs.append(run)
    return sorted(by_label.values(), key=lambda c: (not c.is_sync, c.label))


def varying_settings(all_settings: Sequence[dict[str, Any]]) -> list[str]:
    """The setting keys whose values differ between runs (sorted): what tells configurations apart."""
    keys = sorted({k for settings in all_settings for k in settings if k not in NOT_A_SETTING})
    return [k for k in keys if len({repr(settings.get(k)) for settings in all_settings}) > 1]


def configuration_label(settings: dict[str, Any], varying: Sequence[str], label: Optional[str] = None,
                        own_keys: Optional[set[str]] = None) -> str:
    """``sync``, ``echo x4``, ``echo auto``, ``echo x4, slowdown=8``: the algorithm's own label (as the
    run declares it; else its name), then the other settings that differ between the runs compared.

    ``own_keys`` are the algorithm settings the label already says (see :func:`algorithm_keys`).
    """
    own = own_keys if own_keys is not None else set(COMMON_ALGORITHM_KEYS)
    algorithm = settings.get("algorithm")
    head = label if label else (str(algorithm) if algorithm is not None else "")
    parts = [head] if head else []
    parts += [f"{k}={settings.get(k)}" for k in varying if k not in own]
    if "optimizer" in varying:
        parts.append(f"optimizer={settings.get('optimizer')}")
    return ", ".join(parts)


def _target(configurations: Sequence[Configuration], metric: str, target_loss: Optional[float], gap: float) -> tuple[Optional[float], str]:
    if target_loss is not None:
        return float(target_loss), f"{metric} <= {target_loss:g} (given)"
    reference = [c for c in configurations if c.is_sync] or list(configurations)
    finals = [c.final_mean for c in reference if c.final_mean is not None]
    if not finals:
        return None, "no target: no run logged the metric"
    worst = max(finals)
    whose = "the synchronous runs'" if any(c.is_sync for c in reference) else "the configurations'"
    return worst * (1 + gap), f"{metric} <= {worst * (1 + gap):.4g}: within {gap:.0%} of {whose} final mean ({worst:.4g})"


def _speedups(configurations: Sequence[Configuration], own_keys: set[str]) -> None:
    """Speed-up = baseline's mean time to target / this configuration's, where the baseline is the
    synchronous configuration with the same non-algorithm settings (e.g. the same slowdown)."""
    syncs = [c for c in configurations if c.is_sync]
    for configuration in configurations:
        context = {k: v for k, v in configuration.settings.items() if k not in own_keys}
        same_clock = [s for s in syncs if s.clock == configuration.clock]  # times on other clocks do not compare
        matches = [s for s in same_clock if {k: v for k, v in s.settings.items() if k not in own_keys} == context]
        baseline = matches[0] if matches else (same_clock[0] if len(same_clock) == 1 else None)
        if baseline is None:
            continue
        configuration.baseline = baseline.label
        mine, theirs = configuration.mean_to_target("elapsed_s"), baseline.mean_to_target("elapsed_s")
        if mine and theirs and math.isfinite(mine) and mine > 0:
            configuration.speedup = theirs / mine


def _incomparable(runs: Sequence[Run]) -> list[str]:
    """Warn when runs train different data or models: their losses are not on one scale."""
    out = []
    for key in ("data", "model"):
        values = sorted({str(run.config.get(key)) for run in runs if run.config.get(key) is not None})
        if len(values) > 1:
            out.append(f"runs train different {key} ({', '.join(values)}): their {key} losses are not directly comparable")
    return out
