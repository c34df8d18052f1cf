"""The wandb Report of sweep groups: built offline from real wandb-workspaces objects."""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path
from typing import Any

import pytest
import wandb_workspaces.reports.v2 as wr
from wandb_workspaces.reports.v2 import internal

from lightning_echo.errors import ConfigError, LightningEchoError
from lightning_echo.report.wandb_report import (
    WandbReportError,
    WandbReportSpec,
    build_wandb_report,
    publish_wandb_report,
)

pytestmark = pytest.mark.timeout(60)

SPEEDUP = "| algorithm | speed-up |\n|---|---|\n| echo (e=2) | 1.73x |"
X_KEYS = ["time/elapsed_s", "progress/fresh_samples", "progress/optimizer_steps", "progress/optimizer_steps"]


@pytest.fixture(autouse=True)
def _no_wandb_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No API key anywhere, and any wandb server address is a closed local port (fails fast)."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / "empty.netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")


@pytest.fixture
def no_sockets(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Record and refuse every connection or DNS lookup (the guard, not wandb, is replaced)."""
    attempts: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> None:
        attempts.append(args[1:] if args and isinstance(args[0], socket.socket) else args)
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


def _spec(**changes: Any) -> WandbReportSpec:
    fields: dict[str, Any] = {
        "project": "echo-proj", "entity": "my-team", "groups": ("sweep-a1", "sweep-b2"),
        "title": "Echo vs sync", "speedup_markdown": SPEEDUP, "group_by": ("algorithm", "echo_factor"),
    }
    fields.update(changes)
    return WandbReportSpec(**fields)


def _offline_model(report: wr.Report) -> internal.ReportViewspec:
    """``report._to_model()`` with the runsets' entity blanked on a copy.

    ``Runset._to_model()`` looks the project's internal id up over GraphQL when both entity and
    project are set; everything else serialises offline.
    """
    blocks = [
        dataclasses.replace(b, runsets=[dataclasses.replace(rs, entity="") for rs in b.runsets])
        if isinstance(b, wr.PanelGrid) else b
        for b in report.blocks
    ]
    return dataclasses.replace(report, blocks=blocks)._to_model()


def test_report_structure_and_offline_serialisation(no_sockets: list[Any]) -> None:
    report = build_wandb_report(_spec(description="Seeds 0-2 on MNIST."))
    assert (report.entity, report.project, report.title) == ("my-team", "echo-proj", "Echo vs sync")

    intro, speedup, grid = report.blocks
    assert isinstance(intro, wr.MarkdownBlock) and isinstance(speedup, wr.MarkdownBlock)
    for text in ("Seeds 0-2 on MNIST.", "`sweep-a1`", "`sweep-b2`", "`algorithm`", "`val/loss`", "min/max"):
        assert text in intro.text
    assert SPEEDUP in speedup.text

    assert isinstance(grid, wr.PanelGrid)
    (runset,) = grid.runsets
    assert (runset.entity, runset.project) == ("my-team", "echo-proj")
    assert runset.filters == "Metric(\"Group\") in ['sweep-a1', 'sweep-b2']"
    assert runset.groupby == ["config.algorithm", "config.echo_factor"]

    assert len(grid.panels) == 4 and all(isinstance(p, wr.LinePlot) for p in grid.panels)
    assert [p.x for p in grid.panels] == X_KEYS
    assert [p.y for p in grid.panels] == [["val/loss"]] * 3 + [["train/loss"]]
    for panel in grid.panels:
        assert (panel.groupby_aggfunc, panel.groupby_rangefunc, panel.aggregate) == ("mean", "minmax", True)
        assert panel.groupby is None  # the runset's grouping applies
    assert len({(p.layout.x, p.layout.y) for p in grid.panels}) == 4

    model = _offline_model(report)
    spec = model.model_dump(by_alias=True, exclude_none=True, mode="json")
    assert (spec["project"]["entityName"], spec["displayName"]) == ("my-team", "Echo vs sync")
    (grid_spec,) = [b for b in spec["spec"]["blocks"] if b["type"] == "panel-grid"]
    (rs_spec,) = grid_spec["metadata"]["runSets"]
    (group_filter,) = rs_spec["filters"]["filters"]
    assert group_filter["key"] == {"section": "run", "name": "group"}
    assert (group_filter["op"], group_filter["value"]) == ("IN", ["sweep-a1", "sweep-b2"])
    assert rs_spec["grouping"] == [
        {"section": "config", "name": "algorithm.value"},
        {"section": "config", "name": "echo_factor.value"},
    ]
    configs = [p["config"] for p in grid_spec["metadata"]["panelBankSectionConfig"]["panels"]]
    assert [c["xAxis"] for c in configs] == X_KEYS
    assert [c["metrics"] for c in configs] == [["val/loss"]] * 3 + [["train/loss"]]
    assert {(c["groupAgg"], c["groupArea"], c["aggregate"]) for c in configs} == {("mean", "minmax", True)}
    markdown = [b["content"] for b in spec["spec"]["blocks"] if b["type"] == "markdown-block"]
    assert len(markdown) == 2 and SPEEDUP in markdown[1]

    again = wr.Report._from_model(internal.ReportViewspec.model_validate(spec))
    (grid_again,) = [b for b in again.blocks if isinstance(b, wr.PanelGrid)]
    assert [(p.x.name, p.y[0].name, p.groupby_rangefunc) for p in grid_again.panels] == [
        (x, y, "minmax") for x, y in zip(X_KEYS, ["val/loss"] * 3 + ["train/loss"])
    ]
    assert grid_again.runsets[0].filters == runset.filters
    assert no_sockets == []


def test_custom_metric_and_group_by() -> None:
    report = build_wandb_report(_spec(groups=["only"], metric="val/acc", group_by=["algorithm", "run.group"]))
    grid = report.blocks[-1]
    assert grid.runsets[0].filters == "Metric(\"Group\") in ['only']"
    assert grid.runsets[0].groupby == ["config.algorithm", "run.group"]
    assert [p.y for p in grid.panels] == [["val/acc"]] * 3 + [["train/loss"]]
    assert "_No speed-up table" in build_wandb_report(_spec(speedup_markdown="")).blocks[1].text


@pytest.mark.parametrize(
    "changes, key",
    [
        ({"groups": ()}, "groups"),
        ({"groups": "sweep-a1"}, "groups"),
        ({"groups": ("ok", " ")}, "groups"),
        ({"groups": ("it's",)}, "groups"),
        ({"project": ""}, "project"),
        ({"entity": "  "}, "entity"),
        ({"metric": ""}, "metric"),
        ({"title": ""}, "title"),
        ({"title": "t" * 129}, "title"),
        ({"group_by": ()}, "group_by"),
        ({"group_by": ("algorithm", "")}, "group_by"),
        ({"speedup_markdown": None}, "speedup_markdown"),
    ],
)
def test_bad_spec_names_the_setting(changes: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{key}=.* is not allowed: ") as info:
        _spec(**changes)
    assert info.value.key == key and len(str(info.value).splitlines()) == 1


def test_publish_without_credentials_is_one_clear_line(no_sockets: list[Any]) -> None:
    report = build_wandb_report(_spec())
    with pytest.raises(WandbReportError, match="could not be saved to my-team/echo-proj: no wandb credentials") as info:
        publish_wandb_report(report)
    assert isinstance(info.value, LightningEchoError) and len(str(info.value).splitlines()) == 1
    assert no_sockets == []


def test_publish_wraps_wandb_errors_in_one_line(
    monkeypatch: pytest.MonkeyPatch, no_sockets: list[Any]
) -> None:
    """A key is present, but wandb rejects the server address before any connection is made."""
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "ftp://127.0.0.1:9")
    with pytest.raises(WandbReportError, match=r"^the wandb report could not be saved to my-team/echo-proj: .*base_url") as info:
        publish_wandb_report(build_wandb_report(_spec()))
    assert len(str(info.value).splitlines()) == 1 and info.value.__cause__ is not None
    assert no_sockets == []
