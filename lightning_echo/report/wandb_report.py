"""A wandb Report comparing the runs of one or more sweep groups (the HTML report's panels).

Building the report is offline: ``wr.Report``/``wr.Runset`` are given an explicit entity, so
nothing calls ``wandb.Api()`` (which, given a key, verifies it over the network). Only
:func:`publish_wandb_report` talks to wandb; note that ``Report._to_model()`` already does, since
it looks up each runset's project id over GraphQL.
"""

from __future__ import annotations

from dataclasses import dataclass

import wandb_workspaces.reports.v2 as wr

from lightning_echo.errors import ConfigError, LightningEchoError
from lightning_echo.metric_names import Loss, Progress
from lightning_echo.report.wandb_credentials import wandb_has_credentials

X_AXES: tuple[str, ...] = (Progress.ELAPSED_S, Progress.FRESH_SAMPLES, Progress.OPTIMIZER_STEPS)
"""History keys the metric is plotted against (wall-clock time, fresh samples, steps)."""
TRAIN_LOSS = Loss.TRAIN
MAX_TITLE = 128  # wandb rejects longer report titles
_SECTIONS = ("config", "run", "summary")


class WandbReportError(LightningEchoError, RuntimeError):
    """The wandb report could not be saved (no credentials, network or server error)."""


def _text(key: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(key, value, "must be a non-empty string")
    return value


def _names(key: str, value: object, forbidden: str = "") -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (tuple, list)) or not value:
        raise ConfigError(key, value, "must be a non-empty list of non-empty strings")
    for item in value:
        if not isinstance(item, str) or not item.strip() or any(c in item for c in forbidden):
            extra = " without quotes, backslashes or line breaks" if forbidden else ""
            raise ConfigError(key, value, f"must be a non-empty list of non-empty strings{extra}")
    return tuple(value)


@dataclass(frozen=True)
class WandbReportSpec:
    """What the report compares: the runs of ``groups`` in ``entity/project``."""

    project: str
    entity: str  # required: never looked up from the network
    groups: tuple[str, ...]
    title: str
    speedup_markdown: str
    metric: str = Loss.VAL
    group_by: tuple[str, ...] = ("algorithm",)
    description: str = ""
    time_key: str = X_AXES[0]  # the runs' clock: time/elapsed_s (wall-clock) or time/simulated_s

    def __post_init__(self) -> None:
        for key in ("project", "entity", "title", "metric", "time_key"):
            _text(key, getattr(self, key))
        if len(self.title) > MAX_TITLE:
            raise ConfigError("title", self.title, f"must be at most {MAX_TITLE} characters")
        # Group ids end up quoted inside a filter expression, so quotes are not allowed.
        object.__setattr__(self, "groups", _names("groups", self.groups, forbidden="'\"\\\n"))
        object.__setattr__(self, "group_by", _names("group_by", self.group_by))
        for key in ("speedup_markdown", "description"):
            if not isinstance(getattr(self, key), str):
                raise ConfigError(key, getattr(self, key), "must be a string")


_TIME_NAMES = {Progress.ELAPSED_S: "wall-clock training time", Progress.SIMULATED_S: "simulated time"}


def runset_groupby(key: str) -> str:
    """A Runset groupby string: flat config keys get the ``config.`` section."""
    return key if key.split(".", 1)[0] in _SECTIONS else f"config.{key}"


def _intro(spec: WandbReportSpec) -> str:
    groups = ", ".join(f"`{g}`" for g in spec.groups)
    keys = ", ".join(f"`{k}`" for k in spec.group_by)
    lines = [
        f"Compares the runs of sweep group(s) {groups} in `{spec.entity}/{spec.project}`, grouped by {keys}.",
        (
            f"Each curve is the group mean of `{spec.metric}`; the band is the min/max over the group's "
            f"runs (e.g. seeds). The x-axes are {_TIME_NAMES.get(spec.time_key, spec.time_key)}, fresh samples "
            "and optimizer steps."
        ),
    ]
    return "\n\n".join([spec.description, *lines] if spec.description.strip() else lines)


def _line_plot(y: str, x: str, slot: int) -> wr.LinePlot:
    # groupby stays unset so the plot uses the runset's grouping; aggregate switches grouping on.
    return wr.LinePlot(
        title=f"{y} vs {x}",
        x=x,
        y=[y],
        title_x=x,
        title_y=y,
        aggregate=True,
        groupby_aggfunc="mean",
        groupby_rangefunc="minmax",
        layout=wr.Layout(x=12 * (slot % 2), y=8 * (slot // 2), w=12, h=8),
    )


def build_wandb_report(spec: WandbReportSpec) -> wr.Report:
    """The (unsaved) report for ``spec``; builds objects only, never touches the network."""
    groups = ", ".join(repr(g) for g in spec.groups)
    runset = wr.Runset(
        entity=spec.entity,
        project=spec.project,
        name="Sweep runs",
        filters=f'Metric("Group") in [{groups}]',
        groupby=[runset_groupby(k) for k in spec.group_by],
    )
    x_axes = (spec.time_key,) + X_AXES[1:]
    panels = [_line_plot(spec.metric, x, i) for i, x in enumerate(x_axes)]
    panels.append(_line_plot(TRAIN_LOSS, Progress.OPTIMIZER_STEPS, len(panels)))
    speedup = spec.speedup_markdown.strip() or "_No speed-up table was computed._"
    return wr.Report(
        project=spec.project,
        entity=spec.entity,
        title=spec.title,
        description=spec.description,
        width="fluid",
        blocks=[
            wr.MarkdownBlock(text=_intro(spec)),
            wr.MarkdownBlock(text=f"## Speed-up\n\n{speedup}"),
            wr.PanelGrid(runsets=[runset], panels=panels),
        ],
    )


def publish_wandb_report(report: wr.Report) -> str:
    """Save ``report`` to wandb (needs credentials and network) and return its URL."""
    where = f"{report.entity}/{report.project}"
    if not wandb_has_credentials():
        raise WandbReportError(
            f"the wandb report could not be saved to {where}: no wandb credentials "
            "(set WANDB_API_KEY or run `wandb login`)"
        )
    try:
        report.save()
        return str(report.url)
    except Exception as e:  # wandb raises many types (auth, HTTP, GraphQL, timeouts)
        reason = " ".join(str(e).split())[:300] or type(e).__name__
        raise WandbReportError(f"the wandb report could not be saved to {where}: {reason}") from e
