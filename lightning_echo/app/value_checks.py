"""Checks of config values that no single object's constructor makes: the report settings, the
size of integers, and the settings of algorithms the run does not use."""

from __future__ import annotations

import math
from typing import Any, Mapping

from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from lightning_echo.errors import ConfigError
from lightning_echo.metric_names import Loss
from lightning_echo.validation import MAX_INT64, boolean, non_negative_float


def check_report_settings(report: Mapping[str, Any]) -> None:
    """The ``report`` settings of a sweep, by the rules of ``lightning-echo report``'s options."""
    boolean("report.after_sweep", report.get("after_sweep", True))
    metric = report.get("metric", Loss.VAL)
    if not isinstance(metric, str) or not metric:
        raise ConfigError("report.metric", metric, "must be the name of a logged metric, e.g. val/loss")
    if report.get("target_loss") is not None:
        target = report["target_loss"]
        if isinstance(target, bool) or not isinstance(target, (int, float)) or not math.isfinite(target):
            raise ConfigError("report.target_loss", target, "must be a finite number, or null")
    non_negative_float("report.target_gap", report.get("target_gap", 0.01))


def check_integer_sizes(value: Any, key: str = "") -> None:
    """Refuse integers that no tensor, seed or step counter can hold (more than 64 bits)."""
    if isinstance(value, dict):
        for name, item in value.items():
            check_integer_sizes(item, f"{key}.{name}" if key else str(name))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_integer_sizes(item, f"{key}[{index}]")
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT64:
        raise ConfigError(key, value, f"must fit in a 64-bit integer (at most {MAX_INT64} in size)")


def check_algorithm_settings(cfg: DictConfig) -> None:
    """Check each algorithm's settings block (``settings_checks``: block -> the class that takes
    the block's keys as arguments), also when the chosen algorithm does not use it."""
    for block, target in (cfg.get("settings_checks") or {}).items():
        settings = OmegaConf.to_container(cfg[block], resolve=True)
        assert isinstance(settings, dict)
        try:
            get_object(str(target))(**settings)
        except ConfigError as error:
            raise error.with_prefix(f"{block}.") from None
        except TypeError as error:
            raise ConfigError(str(block), settings, f"does not match {target}: {error}") from None
