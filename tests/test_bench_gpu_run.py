"""The prepared device run (``bench/gpu_run.py``) in its CPU dry mode, so that it cannot rot before
a GPU machine runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPOSITORY


@pytest.mark.slow
def test_the_device_runs_dry_mode_writes_every_table(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(REPOSITORY / "bench" / "gpu_run.py"), str(tmp_path), "--dry"],
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    text = (tmp_path / "gpu_run.md").read_text()
    assert "DRY RUN on CPU" in text  # never mistaken for device numbers
    for section in ("## 1. Data-bound image job", "## 2. Host-to-device bytes per step", "## 3. Parameter server"):
        assert section in text
    report = json.loads((tmp_path / "gpu_run.json").read_text())
    assert [row["config"] for row in report["data_bound"]["rows"]] == ["no echo", "echo x2", "echo x4", "echo auto"]
    moved = {row["config"]: row["h2d_bytes_per_step"] for row in report["transfers"]["bytes"]}
    assert moved["echo x2"] == pytest.approx(moved["no echo"] / 2) and moved["echo x4"] == pytest.approx(moved["no echo"] / 4)
    assert [row["parameters"] for row in report["parameter_server"]["rows"]] == [10_000, 99_856]


def test_without_a_device_the_full_run_refuses_in_one_line(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device: the full run would start")
    result = subprocess.run([sys.executable, str(REPOSITORY / "bench" / "gpu_run.py"), str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "gpu_run: no CUDA device here; run with --dry for the CPU dry run"]
