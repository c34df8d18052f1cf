"""Run parameter-server worlds at the core layer (``tests/scripts/ps_world.py``) from tests.

One launcher process per test module (:func:`start_launcher`) imports torch once and forks each
world's ranks; :func:`run_world` sends it a scenario and reads back what every rank wrote. Every
rank has a deadline, leftovers are killed, and :func:`stop_launcher` kills the launcher's whole
process group, so no process outlives the tests.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

import pytest

from conftest import SCRIPTS

SCRIPT = SCRIPTS / "ps_world.py"


def start_launcher(log: IO[str]) -> subprocess.Popen:
    """The world launcher, in a process group of its own (stderr to ``log``)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
        text=True, env=env, start_new_session=True,
    )


def stop_launcher(process: subprocess.Popen) -> None:
    """End the launcher and kill whatever is left of its process group."""
    process.stdin.close()
    try:
        process.wait(timeout=30)
    finally:
        kill_group(process.pid)
        process.wait(timeout=10)


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_world(launcher: subprocess.Popen, tmp_path: Path, **scenario: Any) -> dict[str, Any]:
    """Run one world; return ``{"launcher": ..., 0: server result, i + 1: learner i's result,
    "r.n": the result of rank r's n-th restarted process}``."""
    scenario = {"timeout": 5.0, "deadline": 60.0, "lr": 0.05, **scenario}
    path, out = tmp_path / "scenario.json", tmp_path / "world"
    out.mkdir()
    path.write_text(json.dumps(scenario))
    launcher.stdin.write(f"{path}\t{out}\n")
    launcher.stdin.flush()
    ready, _, _ = select.select([launcher.stdout], [], [], scenario["deadline"] + 120)
    if not ready:
        kill_group(launcher.pid)
        pytest.fail("the world launcher did not answer: killed")
    assert launcher.stdout.readline().strip() == "done", "the world launcher died (see launcher.log)"
    results: dict[Any, Any] = {"launcher": json.loads((out / "launcher.json").read_text())}
    assert results["launcher"]["leftover"] == [], "a world left processes behind"
    for rank in range(scenario["learners"] + 1):
        file = out / f"rank{rank}.json"
        results[rank] = json.loads(file.read_text()) if file.exists() else None
    for file in out.glob("rank*.*.json"):
        results[file.name.removeprefix("rank").removesuffix(".json")] = json.loads(file.read_text())
    return results


def ok(result: dict[str, Any]) -> dict[str, Any]:
    """``result`` of a rank that ended without an error."""
    assert result is not None and result["ok"], (result or {}).get("traceback")
    return result
