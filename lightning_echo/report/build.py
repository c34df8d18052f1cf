"""Build a comparison report from run directories: read, aggregate, figures, HTML, table."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from lightning_echo.errors import describe_error
from lightning_echo.metric_names import Loss
from lightning_echo.report import table
from lightning_echo.report.aggregate import Comparison, compare_runs
from lightning_echo.report.figures import write_figures
from lightning_echo.report.html import write_html
from lightning_echo.report.runs import ReportInputError, find_runs

HTML_FILE = "index.html"


@dataclass
class Report:
    """What ``write_report`` produced."""

    comparison: Comparison
    html: Path
    figures: dict[str, Path]

    @property
    def text_table(self) -> str:
        return table.as_text(self.comparison)


def write_report(
    paths: Sequence[Path],
    out_dir: Path,
    metric: str = Loss.VAL,
    target_loss: Optional[float] = None,
    target_gap: float = 0.01,
    title: Optional[str] = None,
) -> Report:
    """Read the runs under ``paths`` and write ``out_dir/index.html`` plus one PNG per x-axis.

    Raises ReportInputError when a path holds no runs or no run logged ``metric``.
    """
    runs = find_runs(paths)
    comparison = compare_runs(runs, metric=metric, target_loss=target_loss, target_gap=target_gap)
    if not comparison.configurations:
        reasons = "; ".join(f"{run.path.name}: {why}" for run, why in comparison.excluded[:3])
        raise ReportInputError(f"report: no run logged {metric} ({reasons}); choose another --metric")
    figures = write_figures(comparison, out_dir)
    groups = sorted({run.group for run in runs if run.group})
    title = title or "lightning-echo comparison" + (f": {', '.join(groups)}" if groups else "")
    html = write_html(comparison, figures, out_dir / HTML_FILE, title)
    return Report(comparison, html, figures)


def print_report(report: Report) -> None:
    """The target, the table, the warnings and where the page is; the runs left out (with the
    reason) go to stderr."""
    comparison = report.comparison
    print(f"target: {comparison.target_rule}")
    print(report.text_table)
    left_out = set(comparison.left_out)
    for warning in comparison.warnings:
        if warning not in left_out:
            print(f"warning: {warning}")
    print(f"report: {report.html}", flush=True)
    for line in comparison.left_out:
        print(f"warning: {line}", file=sys.stderr, flush=True)


def report_after_sweep(sweep_dir: Path, settings: dict[str, Any]) -> Optional[Report]:
    """The end of a multirun: print the comparison table and where the report is. A report that
    cannot be built is one printed line; the sweep's own results and summary stay as they are."""
    try:
        report = write_report([sweep_dir], sweep_dir / "report", metric=settings.get("metric", Loss.VAL),
                              target_loss=settings.get("target_loss"), target_gap=settings.get("target_gap", 0.01))
    except ReportInputError as error:
        print(f"no comparison report: {error}")
        return None
    except Exception as error:  # noqa: BLE001 - the sweep's summary still follows; the report is secondary
        print(f"no comparison report: {describe_error(error)}")
        return None
    print()
    print_report(report)
    return report
