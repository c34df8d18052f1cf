"""The speed-up table of a comparison, as rows of strings (for the terminal, markdown and HTML)."""

from __future__ import annotations

from typing import Optional

from lightning_echo.core.progress import SIMULATED
from lightning_echo.metric_names import LearnerData
from lightning_echo.report.aggregate import Comparison, Configuration

HEADER = ("configuration", "runs", "{clock}time to target [s]", "fresh samples to target", "optimizer steps to target",
          "final " + "{metric}", "speed-up")
CLOCK_PREFIX = {SIMULATED: "simulated ", "mixed": "(mixed clocks) "}
# Shown when some run's learners echoed or waited for their own data (the straggler backends).
LEARNER_DATA_COLUMNS = ((LearnerData.ECHOED_GRADIENTS, "echoed gradients"), (LearnerData.DATA_WAIT_S, "learners' data wait [s]"))


def header(comparison: Comparison) -> list[str]:
    """Column titles; the time column says when the time is simulated."""
    clock = CLOCK_PREFIX.get(comparison.clock, "")
    extra = [title for _, title in _learner_data_columns(comparison)]
    return [h.format(metric=comparison.metric, clock=clock) for h in HEADER[:-1]] + extra + [HEADER[-1]]


def rows(comparison: Comparison) -> list[list[str]]:
    """One row per configuration; "not reached (0/3)" when no run got to the target, "diverged
    (0/3)" when every run diverged (a run that diverged never counts as reaching it)."""
    columns = _learner_data_columns(comparison)
    table = []
    for configuration in comparison.configurations:
        row = _row(configuration)
        table.append(row[:-1] + [_final_mean(configuration, name) for name, _ in columns] + row[-1:])
    return table


def _learner_data_columns(comparison: Comparison) -> list[tuple[str, str]]:
    return [(name, title) for name, title in LEARNER_DATA_COLUMNS
            if any(run.series.get(name) for c in comparison.configurations for run in c.runs)]


def _final_mean(configuration: Configuration, name: str) -> str:
    """The mean over the configuration's runs of the last value of ``name`` ("-" where none logged it)."""
    finals = [run.series[name][-1].value for run in configuration.counted if run.series.get(name)]
    return f"{sum(finals) / len(finals):.0f}" if finals else "-"


def _row(configuration: Configuration) -> list[str]:
    total = len(configuration.runs)
    reached = len(configuration.reached)
    incomplete = [run.status for run in configuration.runs if run.status != "completed"]
    runs = str(total) + (f" ({len(incomplete)} {'/'.join(sorted(set(incomplete)))})" if incomplete else "")
    suffix = f" ({reached}/{total} reached)" if 0 < reached < total else ""
    if reached == 0:
        time = fresh = steps = f"{'not reached' if configuration.counted else 'diverged'} (0/{total})"
    else:
        time = f"{configuration.mean_to_target('elapsed_s'):.1f}{suffix}"
        fresh = f"{configuration.mean_to_target('fresh_samples'):.0f}"
        steps = f"{configuration.mean_to_target('step'):.0f}"
    final = _mean_std(configuration.final_mean, configuration.final_std, len(configuration.counted))
    if not configuration.counted:
        final = "diverged"
    if configuration.is_sync and configuration.baseline == configuration.label:
        speedup = "1.00 (baseline)"
    elif configuration.speedup is not None:
        speedup = f"{configuration.speedup:.2f}x"
    else:
        speedup = "-"
    return [configuration.label, runs, time, fresh, steps, final, speedup]


def _mean_std(mean: Optional[float], std: Optional[float], count: int) -> str:
    if mean is None:
        return "-"
    return f"{mean:.4f}" if count < 2 or std is None else f"{mean:.4f} ± {std:.4f}"


def as_text(comparison: Comparison) -> str:
    """A fixed-width table for the terminal."""
    table = [header(comparison)] + rows(comparison)
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def as_markdown(comparison: Comparison) -> str:
    table = [header(comparison)] + rows(comparison)
    lines = ["| " + " | ".join(row) + " |" for row in table]
    lines.insert(1, "|" + "---|" * len(table[0]))
    return "\n".join(lines)
