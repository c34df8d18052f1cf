"""Adaptive echoing under real multi-process DDP (gloo on CPU): the ranks stay in step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SCRIPTS

SCRIPT = SCRIPTS / "ddp_adaptive_echo.py"


@pytest.mark.slow
def test_adaptive_echo_keeps_ddp_ranks_in_step(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("LOCAL_RANK", None)
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["global_step"] == ranks[1]["global_step"] == 60
    assert ranks[0]["steps_trained"] == ranks[1]["steps_trained"] == 60
    assert ranks[0]["fresh_batches"] == ranks[1]["fresh_batches"]
    assert ranks[0]["echoed_steps"] == ranks[1]["echoed_steps"] > 0
    # Every echo decision was agreed: same number of decisions, same agreed answers.
    agreed = [[d[1] for d in r["decisions"]] for r in ranks]
    assert agreed[0] == agreed[1] and len(agreed[0]) > 0
    # The local flags did disagree (rank 1's loader is slower), so the agreement mattered,
    # and the agreed answer is "fresh" only when every rank had a fresh batch ready.
    local = [[d[0] for d in r["decisions"]] for r in ranks]
    assert any(a != b for a, b in zip(*local))
    assert all(answer == (a and b) for answer, a, b in zip(agreed[0], *local))
    # DDP kept the replicas identical.
    assert ranks[0]["weights"] == ranks[1]["weights"]
