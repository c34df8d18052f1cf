"""A full disk: the command ends in one line with the status recorded where it can be, and a sweep
still prints its summary. Runs on a real, small tmpfs (mounting one needs root: skipped without)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from conftest import run_cli, single_run_overrides


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 300 KiB tmpfs with 28 KiB left: enough for the run's first files, not for its end."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command to make a small filesystem")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(mount)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {made.stderr.strip()}")
    try:
        (mount / "filler").write_bytes(b"\0" * 270 * 1024)
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("lightning-echo: error:")]


@pytest.mark.slow
def test_a_run_on_a_full_disk_ends_in_one_line_and_records_failed(full_disk: Path, tmp_path: Path) -> None:
    result = run_cli([*single_run_overrides(), "trainer.max_steps=300", f"paths.output_root={full_disk / 'out'}"],
                     cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    (line,) = _errors(result.stderr)
    assert "cannot write the run's outputs in" in line and "No space left on device" in line
    (record,) = (full_disk / "out" / "runs").glob("*/run.json")
    saved = json.loads(record.read_text())
    assert saved["status"] == "failed" and "No space left on device" in saved["error"]  # not left "running"
    assert not list((full_disk / "out").rglob("*.tmp"))  # no half-written copy left taking the space


@pytest.mark.slow
def test_a_sweep_on_a_full_disk_prints_its_summary_and_ends_in_one_line(full_disk: Path, tmp_path: Path) -> None:
    result = run_cli(["-m", *single_run_overrides(), "seed=0,1", "trainer.max_steps=300",
                      f"paths.output_root={full_disk / 'out'}"], cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "sweep: 2 jobs, 0 completed, 1 failed" in result.stdout and "No space left on device" in result.stdout
    (line,) = _errors(result.stderr)
    assert line == "lightning-echo: error: cannot write the run's files: OSError: [Errno 28] No space left on device"
