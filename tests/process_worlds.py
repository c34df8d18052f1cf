"""Run a user's script that starts a parameter-server world (Lightning's launcher re-runs it for
the learners) in its own process group, with a hard deadline, and collect what each rank wrote.

Every process of the world must end on its own once the script's main process ends; the whole
process group is killed afterwards in any case.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

DEADLINE_S = 240


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def run_world(script: Path, out: Path, *scenarios: str, ranks: int = 3) -> dict[str, Any]:
    """Run ``script OUT SCENARIO...``; return its exit code, log, whether its processes outlived
    it, and each scenario's results by rank (``OUT/<scenario>.rank<r>.json``; None where a rank
    wrote nothing)."""
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "world.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    with log_path.open("w") as log:
        process = subprocess.Popen([sys.executable, str(script), str(out), *scenarios], cwd=out, env=env,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            returncode = process.wait(timeout=DEADLINE_S)
            deadline = time.monotonic() + 30
            while _group_alive(process.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            outlived = _group_alive(process.pid)
        finally:
            if _group_alive(process.pid):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    results: dict[str, Any] = {"returncode": returncode, "outlived": outlived, "log": log_path.read_text()}
    for name in scenarios:
        files = [out / f"{name}.rank{rank}.json" for rank in range(ranks)]
        results[name] = [json.loads(f.read_text()) if f.exists() else None for f in files]
    return results


def run_clean_world(script: Path, out: Path, *scenarios: str) -> dict[str, Any]:
    """:func:`run_world`, asserting that the script succeeded and no process of it outlived it."""
    results = run_world(script, out, *scenarios)
    assert results["returncode"] == 0, results["log"][-4000:]
    assert not results["outlived"], "a process of the world outlived its script"
    return results


def metrics_rows(path: str) -> list[dict[str, str]]:
    """The rows of a CSVLogger's ``metrics.csv``."""
    with open(path) as file:
        return list(csv.DictReader(file))
