"""``run.json``: the record every run directory holds (its group, label, settings and status).

Written by the command line as a run starts and ends; read by the report. One name, one format.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

RUN_FILE = "run.json"

# Run statuses: a run killed half-way keeps "running" (the report calls it crashed).
RUNNING, COMPLETED, FAILED = "running", "completed", "failed"

# Keys of the flat run config that describe the run rather than set it up: never used to tell
# configurations apart (the seed is averaged over; the group is the sweep id).
LABEL, ALGORITHM_KEYS, CLOCK, BASELINE = "label", "algorithm_keys", "clock", "baseline"


@dataclass
class RunRecordFile:
    """``run.json``: the run's group, label, flat config and status, rewritten as it changes."""

    path: Path
    group: str
    name: str
    config: dict[str, Any]

    def write(self, status: str, error: Optional[str] = None, traceback: Optional[str] = None) -> None:
        """Record ``status`` (running, completed, failed) atomically."""
        content = {"status": status, "group": self.group, "name": self.name, "config": self.config,
                   "error": error, "traceback": traceback, "updated_at": time.time()}
        partial = self.path.with_suffix(".json.tmp")
        partial.write_text(json.dumps(content, indent=2, default=str) + "\n")
        partial.replace(self.path)


def read_run_record(directory: Path) -> dict[str, Any]:
    """The parsed ``run.json`` of a run directory."""
    return json.loads((directory / RUN_FILE).read_text())
