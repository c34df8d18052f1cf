"""``run.json``: the record every run directory holds (its group, label, settings and status).

Written by the command line as a run starts and ends; read by the report. One name, one format.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

RUN_FILE = "run.json"

# Run statuses: a run killed half-way keeps "running" (the report calls it crashed); one stopped by
# SIGINT or SIGTERM is "interrupted" (``lightning-echo resume`` continues it).
RUNNING, COMPLETED, FAILED, INTERRUPTED = "running", "completed", "failed", "interrupted"
# A run stopped because its training loss stopped being finite (the command exits with
# DIVERGED_EXIT_CODE; its wandb run is finished with that code).
DIVERGED = "diverged"
DIVERGED_EXIT_CODE = 3

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
    details: dict[str, Any] = field(default_factory=dict)

    def write(self, status: str, error: Optional[str] = None, traceback: Optional[str] = None, **details: Any) -> None:
        """Record ``status`` (running, completed, failed, diverged, interrupted) atomically. ``details``
        (e.g. ``resumes``, ``checkpoint``) are kept in ``self.details`` and written with every later status."""
        self.details.update(details)
        content = {"status": status, "group": self.group, "name": self.name, "config": self.config,
                   "error": error, "traceback": traceback, "updated_at": time.time(), **self.details}
        try:
            write_json(self.path, content)
        except OSError as full:
            if not is_storage_full(full) or not self.path.is_file():
                raise
            # No room for a second copy: rewrite the file in place (its own blocks are freed first),
            # so that it does not go on saying "running". Not atomic, but the only write that fits.
            self.path.write_text(json.dumps(finite_json(content), default=str, allow_nan=False) + "\n")


def read_json(path: Path) -> Any:
    """A JSON file of a run or sweep directory, parsed; ``ValueError`` for one that is not JSON or
    is nested too deeply to parse (hostile or corrupt files are reported, never a crash)."""
    text = Path(path).read_text()
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError(f"{Path(path).name} is nested too deeply to be a lightning-echo record") from None


def read_run_record(directory: Path) -> dict[str, Any]:
    """The parsed ``run.json`` of a run directory."""
    return read_json(directory / RUN_FILE)


def finite_json(value: Any) -> Any:
    """``value`` with every NaN or infinite float (in nested dicts, lists and tuples) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(item) for item in value]
    return value


def write_json(path: Path, content: Any) -> None:
    """Write ``content`` as strict JSON (a non-finite number becomes null, never a bare ``NaN``),
    atomically: a reader never sees half a file."""
    text = json.dumps(finite_json(content), indent=2, default=str, allow_nan=False) + "\n"
    partial = path.with_suffix(path.suffix + ".tmp")
    try:
        partial.write_text(text)
        partial.replace(path)
    except OSError:
        partial.unlink(missing_ok=True)  # a full disk: free what the half-written copy took
        raise


def is_storage_full(error: BaseException) -> bool:
    """Whether ``error`` says the disk (or the user's quota) is full, or the filesystem read-only."""
    import errno

    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
