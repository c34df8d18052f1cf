"""Group runs into configurations, average over seeds, and measure time to a target loss.

Pure functions over :class:`~lightning_echo.report.runs.Run` records; no plotting, no files.
Runs are seeds of one configuration when their settings are equal but the seed
(:mod:`lightning_echo.report.settings`). A run that diverged is shown and marked, but sets no
target, no final loss and no time to target.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from lightning_echo.core.progress import SIMULATED, WALL_CLOCK
from lightning_echo.metric_names import Loss
from lightning_echo.records import ALGORITHM_KEYS, BASELINE, CLOCK, COMPLETED, LABEL
from lightning_echo.report.runs import UNREADABLE, Point, Run
from lightning_echo.report.settings import Settings, canonical, describe, differing_keys, run_settings, shown_keys

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
# Flat keys that never separate configurations in the wandb grouping: seeds are averaged over, the
# group is the sweep id, the others describe the run rather than set it up.
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
class Target:
    """The target loss of the runs that trained one dataset (``data``: what tells it apart from
    the other datasets compared; empty when all runs trained the same data)."""

    data: str
    value: Optional[float]
    rule: str


@dataclass
class Configuration:
    """The runs sharing every setting but the seed."""

    label: str
    settings: dict[str, Any]
    runs: list[Run]
    compared: Optional[Settings] = None
    bands: dict[str, Band] = field(default_factory=dict)
    final_mean: Optional[float] = None
    final_std: Optional[float] = None
    reached: list[ReachedTarget] = field(default_factory=list)
    baseline: Optional[str] = None
    speedup: Optional[float] = None
    target: Optional[float] = None

    @property
    def is_sync(self) -> bool:
        """Whether this is a synchronous baseline configuration."""
        declared = self.runs[0].config.get(BASELINE) if self.runs else None
        return bool(declared) if declared is not None else self.settings.get("algorithm") == SYNC

    @property
    def clock(self) -> str:
        """The clock its runs' time is measured in."""
        return self.runs[0].clock if self.runs else WALL_CLOCK

    @property
    def counted(self) -> list[Run]:
        """Its runs that did not diverge: the ones its final loss and time to target come from."""
        return [run for run in self.runs if not run.diverged]

    def mean_to_target(self, attribute: str) -> Optional[float]:
        """Mean over the runs that reached the target of ``elapsed_s``, ``fresh_samples`` or ``step``."""
        values = [float(getattr(r, attribute)) for r in self.reached]
        return float(np.mean(values)) if values else None


@dataclass
class Comparison:
    """Everything a report shows. ``target`` is the target when all runs share one (else None;
    see ``targets``, one per dataset)."""

    metric: str
    target: Optional[float]
    target_rule: str
    configurations: list[Configuration]
    runs: list[Run]
    excluded: list[tuple[Run, str]]
    warnings: list[str]
    clock: str = WALL_CLOCK
    targets: list[Target] = field(default_factory=list)

    def axis_label(self, axis: str) -> str:
        """The label of an x-axis; the time axis says which clock it is."""
        return TIME_AXIS_LABELS[self.clock] if axis == "time" else AXES[axis][1]

    @property
    def left_out(self) -> list[str]:
        """One line per run left out of the comparison, with the reason."""
        return [f"{run.path}: left out, {why}" for run, why in self.excluded]


def compare_runs(
    runs: Sequence[Run],
    metric: str = Loss.VAL,
    target_loss: Optional[float] = None,
    target_gap: float = 0.01,
) -> Comparison:
    """Group ``runs`` by their settings, aggregate ``metric`` over seeds and compute speed-ups.

    The target is ``target_loss`` when given; otherwise, for each dataset, the synchronous
    configurations' worst final mean ``metric`` times ``1 + target_gap`` (without synchronous runs,
    the worst final mean of all configurations): the level the baseline reaches by the end of its
    budget. Runs that diverged count for neither.
    """
    excluded: list[tuple[Run, str]] = []
    usable: list[Run] = []
    for run in runs:
        if run.status == UNREADABLE:
            excluded.append((run, run.error or "unreadable"))
        elif _points(run, metric):
            usable.append(run)
        else:
            logged = ", ".join(sorted(run.series)) or "nothing"
            excluded.append((run, f"no {metric} logged (logged: {logged})"))
    warnings = [f"{run.path}: left out, {why}" for run, why in excluded]
    for run in usable:
        if run.diverged:
            warnings.append(f"{run.path}: diverged ({run.error or 'no detail'}); it sets no target, final loss or "
                            "speed-up; its curve up to the divergence is shown")
        elif run.status != COMPLETED:
            warnings.append(f"{run.path}: {run.status} at step {run.last_step}; its partial curve is included"
                            + (f" ({run.error})" if run.error else ""))
    warnings.extend(_incomparable(usable))
    clocks = sorted({run.clock for run in usable})
    clock = clocks[0] if len(clocks) == 1 else ("mixed" if clocks else WALL_CLOCK)
    if clock == "mixed":
        warnings.append(f"runs are measured on different clocks ({', '.join(clocks)}): their times are not comparable")
    configurations = _configurations(usable)
    for configuration in configurations:
        finals = [_points(run, metric)[-1].value for run in configuration.counted]
        configuration.final_mean = float(np.mean(finals)) if finals else None
        configuration.final_std = float(np.std(finals)) if finals else None
        shown = configuration.counted or configuration.runs  # a configuration that only diverged still shows its curves
        configuration.bands = {axis: band(shown, metric, attribute) for axis, (attribute, _) in AXES.items()}
    targets: list[Target] = []
    datasets = _by_dataset(configurations)
    for data_label, members in datasets.items():
        value, rule = _target(members, metric, target_loss, target_gap)
        targets.append(Target(data_label, value, rule))
        for configuration in members:
            configuration.target = value
            if value is not None:
                reached = (first_at_or_below(_points(run, metric), value) for run in configuration.counted)
                configuration.reached = [r for r in reached if r]
        warnings.extend(_speedups(members))
    if len(targets) > 1:
        warnings.append("runs trained different data: each dataset has its own target and baseline")
    single = {t.value for t in targets}
    target = next(iter(single)) if len(single) == 1 else None
    rule = "; ".join(f"{t.data}: {t.rule}" if t.data else t.rule for t in targets) or "no target: no run logged the metric"
    return Comparison(metric, target, rule, configurations, list(runs), excluded, warnings, clock, targets)


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


def _flat_settings(run: Run) -> dict[str, Any]:
    return {k: v for k, v in run.config.items() if k not in NOT_A_SETTING and not isinstance(v, (dict, list))}


def algorithm_keys(runs: Sequence[Run]) -> set[str]:
    """Every flat key that belongs to an algorithm (as the runs declare them), plus the common ones."""
    keys = set(COMMON_ALGORITHM_KEYS)
    for run in runs:
        declared = run.config.get(ALGORITHM_KEYS)
        if isinstance(declared, (list, tuple)):
            keys.update(map(str, declared))
    return keys


def _configurations(runs: Sequence[Run]) -> list[Configuration]:
    """One configuration per distinct settings (seeds together), labelled by what differs."""
    by_identity: dict[str, Configuration] = {}
    for run in runs:
        compared = run_settings(run.config)
        if compared.identity not in by_identity:
            by_identity[compared.identity] = Configuration("", _flat_settings(run), [], compared)
        by_identity[compared.identity].runs.append(run)
    configurations = list(by_identity.values())
    _label(configurations)
    return sorted(configurations, key=lambda c: (not c.is_sync, c.label))


def _label(configurations: Sequence[Configuration]) -> None:
    """``sync``, ``echo x4, loader.slowdown=8``, ``sync, model=MLP, model.hidden_sizes=[8]``: the
    algorithm's label, then the settings that tell it apart from the other configurations."""
    everyone = [c.compared for c in configurations if c.compared is not None]
    differing = differing_keys(everyone)
    for configuration in configurations:
        assert configuration.compared is not None
        keys = shown_keys(configuration.compared, everyone, differing)
        configuration.label = configuration_label(configuration.compared.values, keys, _head(configuration.runs[0]))
    by_label: dict[str, list[Configuration]] = defaultdict(list)
    for configuration in configurations:
        by_label[configuration.label].append(configuration)
    for same in by_label.values():  # the algorithm's label hides a setting that differs: show it
        if len(same) > 1:
            among = differing_keys([c.compared for c in same if c.compared is not None])
            for index, configuration in enumerate(same):
                assert configuration.compared is not None
                extra = [describe(k, configuration.compared.values[k]) for k in among if k in configuration.compared.values]
                configuration.label = ", ".join([configuration.label, *extra]) if extra else f"{configuration.label} #{index + 1}"


def _head(run: Run) -> str:
    declared = run.config.get(LABEL)
    algorithm = run.config.get("algorithm")
    return str(declared) if declared else (str(algorithm) if algorithm is not None else run.name)


def varying_settings(all_settings: Sequence[dict[str, Any]]) -> list[str]:
    """The flat setting keys whose values differ between runs (sorted)."""
    keys = sorted({k for settings in all_settings for k in settings if k not in NOT_A_SETTING})
    return [k for k in keys if len({repr(settings.get(k)) for settings in all_settings}) > 1]


def configuration_label(settings: dict[str, Any], shown: Sequence[str], label: Optional[str] = None,
                        own_keys: Optional[set[str]] = None) -> str:
    """``label`` (the algorithm's own label, e.g. ``echo x4``), then ``key=value`` for each of
    ``shown`` that the label does not already say (``own_keys``)."""
    own = own_keys or set()
    head = label if label else str(settings.get("algorithm") or "")
    parts = [head] if head else []
    parts += [describe(k, settings.get(k)) for k in shown if k not in own]
    return ", ".join(parts)


def _by_dataset(configurations: Sequence[Configuration]) -> dict[str, list[Configuration]]:
    """Configurations grouped by the data they trained, keyed by what tells the datasets apart."""
    groups: dict[str, list[Configuration]] = defaultdict(list)
    data_of: dict[str, dict[str, Any]] = {}
    for configuration in configurations:
        assert configuration.compared is not None
        identity = canonical(configuration.compared.data)
        groups[identity].append(configuration)
        data_of[identity] = configuration.compared.data
    if len(groups) == 1:
        return {"": list(configurations)}
    keys = sorted({k for data in data_of.values() for k in data})
    differing = [k for k in keys if len({canonical(d.get(k, "<absent>")) for d in data_of.values()}) > 1]
    return {", ".join(describe(k, data_of[i][k]) for k in differing if k in data_of[i]) or i: members
            for i, members in groups.items()}


def _target(configurations: Sequence[Configuration], metric: str, target_loss: Optional[float], gap: float) -> tuple[Optional[float], str]:
    if target_loss is not None:
        return float(target_loss), f"{metric} <= {target_loss:g} (given)"
    syncs = [c for c in configurations if c.is_sync and c.final_mean is not None]
    reference = syncs or [c for c in configurations if c.final_mean is not None]
    if not reference:
        return None, "no target: every run diverged"
    worst = max(c.final_mean for c in reference if c.final_mean is not None)
    whose = "the synchronous runs'" if syncs else "the configurations'"
    return worst * (1 + gap), f"{metric} <= {worst * (1 + gap):.4g}: within {gap:.0%} of {whose} final mean ({worst:.4g})"


def _speedups(configurations: Sequence[Configuration]) -> list[str]:
    """Speed-up = baseline's mean time to target / this configuration's, where the baseline is the
    synchronous configuration (on the same data and clock) with the same settings outside the
    algorithm and the optimizer, e.g. the same loader slowdown. Returns warnings."""
    compared = [c.compared for c in configurations if c.compared is not None]
    algorithm_only: set[str] = set().union(*(s.own for s in compared))
    algorithm_and_optimizer: set[str] = set().union(*(s.common for s in compared))

    def context(c: Configuration, dropped: set[str]) -> str:
        assert c.compared is not None
        return canonical({k: v for k, v in c.compared.values.items() if k not in dropped})

    def baseline_of(configuration: Configuration, candidates: list[Configuration]) -> Optional[Configuration]:
        matches = [s for s in candidates if context(s, algorithm_and_optimizer) == context(configuration, algorithm_and_optimizer)]
        if len(matches) > 1:  # e.g. baselines at several step sizes: the one with the same optimizer settings
            matches = [s for s in matches if context(s, algorithm_only) == context(configuration, algorithm_only)]
            return matches[0] if len(matches) == 1 else None
        if matches:
            return matches[0]
        return candidates[0] if len(candidates) == 1 else None

    syncs = [c for c in configurations if c.is_sync]
    warnings = []
    for configuration in configurations:
        # times on other clocks do not compare
        baseline = baseline_of(configuration, [s for s in syncs if s.clock == configuration.clock])
        if baseline is None:
            continue
        if not baseline.counted:
            if configuration.counted:
                warnings.append(f"{configuration.label}: no speed-up, its baseline {baseline.label} diverged")
            continue
        configuration.baseline = baseline.label
        mine, theirs = configuration.mean_to_target("elapsed_s"), baseline.mean_to_target("elapsed_s")
        if mine and theirs and math.isfinite(mine) and mine > 0:
            configuration.speedup = theirs / mine
    return warnings


def _incomparable(runs: Sequence[Run]) -> list[str]:
    """Warn when runs train different data or models: their losses are not on one scale."""
    out = []
    for key in ("data", "model"):
        values = sorted({str(run.config.get(key)) for run in runs if run.config.get(key) is not None})
        if len(values) > 1:
            out.append(f"runs train different {key} ({', '.join(values)}): their {key} losses are not directly comparable")
    return out
