"""From a written comparison report to a wandb Report of the same runs (their sweep groups)."""

from __future__ import annotations

import os
from typing import Any, Optional

from lightning_echo.errors import ConfigError
from lightning_echo.report import table
from lightning_echo.report.aggregate import Comparison, algorithm_keys, varying_settings
from lightning_echo.report.runs import ELAPSED, TIME_KEYS
from lightning_echo.report.wandb_report import (
    MAX_TITLE,
    WandbReportSpec,
    build_wandb_report,
    publish_wandb_report,
)


def comparison_spec(comparison: Comparison, project: str, entity: Optional[str], title: str) -> WandbReportSpec:
    """The wandb Report that shows ``comparison``: its runs' groups, grouped by the settings that
    tell its configurations apart, with its speed-up table."""
    entity = entity or os.environ.get("WANDB_ENTITY")
    if not entity:
        raise ConfigError("--wandb-entity", entity, "give the wandb entity (user or team) the runs were logged to, or set WANDB_ENTITY")
    groups = tuple(sorted({run.group for run in comparison.runs if run.group}))
    if not groups:
        raise ConfigError("runs", "no group", "the runs carry no group id; were they logged by lightning-echo?")
    varying = varying_settings([c.settings for c in comparison.configurations])
    own = algorithm_keys(comparison.runs) - {"algorithm", "optimizer"}
    # The algorithm first, then its own settings that differ, then every other setting that differs.
    group_by = ("algorithm",) + tuple(k for k in varying if k in own)
    group_by += tuple(k for k in varying if k not in own and k != "algorithm")
    return WandbReportSpec(project=project, entity=entity, groups=groups, title=title[:MAX_TITLE],
                           speedup_markdown=table.as_markdown(comparison), metric=comparison.metric,
                           group_by=group_by, description=f"Target: {comparison.target_rule}.",
                           time_key=TIME_KEYS.get(comparison.clock, ELAPSED))


def publish_comparison(report: Any, project: str, entity: Optional[str]) -> str:
    """Build and save the wandb Report of a written report; returns its URL."""
    title = "lightning-echo comparison: " + ", ".join(sorted({r.group for r in report.comparison.runs if r.group}))
    return publish_wandb_report(build_wandb_report(comparison_spec(report.comparison, project, entity, title)))
