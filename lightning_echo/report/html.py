"""A self-contained HTML page of a comparison: figures embedded as data URIs, the speed-up table,
warnings, and every run with its status.

The page is shared, and everything in it that comes from run directories (names, groups,
statuses, labels, settings, errors, paths) is escaped: a run cannot put markup into it."""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path
from typing import Sequence

from lightning_echo.core.progress import SIMULATED, WALL_CLOCK
from lightning_echo.report import table
from lightning_echo.report.aggregate import Comparison

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; }
th { background: #f2f2f2; }
.warn { color: #a04000; }
.failed, .crashed, .diverged, .unreadable, .interrupted { color: #b00020; font-weight: bold; }
figure { display: inline-block; margin: 0.5em; }
img { max-width: 100%; }
"""


# The statuses that get a CSS class (any other status is shown as text only).
_STATUS_CLASSES = {"failed", "crashed", "diverged", "unreadable", "interrupted"}
_CLOCK_NOTES = {
    WALL_CLOCK: "Time is wall-clock training time without validation.",
    SIMULATED: "Time is simulated time (the simulated cluster's clock), not wall-clock time.",
    "mixed": "Warning: the runs are measured on different clocks (wall-clock and simulated).",
}


def write_html(comparison: Comparison, figures: dict[str, Path], path: Path, title: str) -> Path:
    """Write the page to ``path`` (figures are read and embedded, so the page stands alone)."""
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{escape(title)}</title>",
             f"<style>{_STYLE}</style></head><body>", f"<h1>{escape(title)}</h1>",
             f"<p>Target: {escape(comparison.target_rule)}. {_CLOCK_NOTES.get(comparison.clock, '')} "
             "Speed-up: the synchronous baseline's mean time to the target divided by the "
             "configuration's.</p>", "<h2>Speed-up</h2>", _html_table(table.header(comparison), table.rows(comparison))]
    if comparison.warnings:
        parts.append("<h2>Warnings</h2><ul>" + "".join(f"<li class='warn'>{escape(w)}</li>" for w in comparison.warnings) + "</ul>")
    parts.append("<h2>Figures</h2>")
    for axis, figure_path in figures.items():
        encoded = base64.b64encode(figure_path.read_bytes()).decode("ascii")
        parts.append(f"<figure><img alt='{escape(comparison.metric)} against {escape(axis)}' "
                     f"src='data:image/png;base64,{encoded}'><figcaption>{escape(figure_path.name)}</figcaption></figure>")
    parts.append("<h2>Runs</h2>")
    run_rows = [[run.name, run.group, _status(run.status), str(run.last_step), run.source, str(run.path), run.error or ""]
                for run in comparison.runs]
    parts.append(_html_table(["run", "group", "status", "last step", "source", "directory", "error"], run_rows))
    parts.append("</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


class Markup(str):
    """HTML built here from escaped parts: the one kind of table cell written as is."""


def _status(status: str) -> Markup:
    css = f" class='{status}'" if status in _STATUS_CLASSES else ""
    return Markup(f"<span{css}>{escape(status)}</span>")


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A table whose cells are escaped, except :class:`Markup`."""
    cells = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c if isinstance(c, Markup) else escape(c)}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{cells}</tr>{body}</table>"
