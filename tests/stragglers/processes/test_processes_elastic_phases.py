"""Async SGD through a learner's loss and rejoin, phase by phase, in counts (no clock): before
the loss every learner's gradients make the updates, between the loss and the rejoin only the
learners alive do, in equal shares, after the rejoin the new process's gradients are back at the
others' rate, and the staleness follows the learners alive (P - 1 for equal learners).

The rates against the closed form, in seconds, are measured by ``bench/ps_elastic.py``; K
following the learners alive (sync) and the rejoin of k_async are in ``test_processes_elastic.py``.
A world of real processes (gloo on CPU) through ``tests/scripts/ps_world.py``, whose launcher
restarts the killed learner ``restart_learner_delay`` seconds after its death.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from core_worlds import ok, run_world

LEARNERS, VICTIM = 4, 1


def _event(report: dict[str, Any], kind: str) -> dict[str, Any]:
    (event,) = [e for e in report["events"] if e["event"] == kind]
    return event


def _shares(records: list[dict[str, Any]]) -> list[int]:
    counts = [0] * LEARNERS
    for record in records:
        for learner in record["learners"]:
            counts[learner] += 1
    return counts


def _mean_staleness(records: list[dict[str, Any]]) -> float:
    staleness = [s for record in records for s in record["staleness"]]
    return sum(staleness) / len(staleness)


@pytest.mark.slow
def test_async_updates_come_from_the_learners_alive_in_each_phase(launcher: subprocess.Popen, tmp_path: Path) -> None:
    world = run_world(launcher, tmp_path, variant="async", learners=LEARNERS, updates=450, shrink_k=True,
                      delays=[0.02] * LEARNERS, restart_learners=1, restart_learner_delay=1.5,
                      faults={str(VICTIM): {"kill_at_gradient": 12}})
    assert world["launcher"]["all_exitcodes"] == [[0], [0], [-signal.SIGKILL, 0], [0], [0]]
    server = ok(world[0])
    report, records = server["report"], server["records"]
    assert report["updates"] == 450 and report["losses"] == 1 and report["joins"] == 1 and report["lost"] == {}
    lost, joined = _event(report, "lost"), _event(report, "joined")
    assert lost["learner"] == joined["learner"] == VICTIM and (lost["live"], joined["live"]) == (3, 4)
    assert all(len(record["learners"]) == 1 for record in records)  # async: K = 1 throughout
    before = [r for r in records if r["version"] <= lost["version"]]
    away = [r for r in records if lost["version"] < r["version"] <= joined["version"]]
    back = [r for r in records if r["version"] > joined["version"]]
    assert len(before) >= 12 and len(away) >= 20 and len(back) >= 100  # the launcher waits 1.5 s to restart it

    # Before the loss all four learners work; away, only the three alive, each at the same rate.
    assert all(count > 0 for count in _shares(before))
    away_shares = _shares(away)
    assert away_shares[VICTIM] == 0
    alive = [count for learner, count in enumerate(away_shares) if learner != VICTIM]
    assert min(alive) >= 0.5 * max(alive), away_shares
    # Back: the new process computes from the version it joined at, at the others' rate.
    again = ok(world[f"{VICTIM + 1}.1"])
    assert again["versions"][0] >= joined["version"] and again["report"]["stopped"]
    assert all(v >= joined["version"] for r in back for l, v in zip(r["learners"], r["read_versions"]) if l == VICTIM)
    back_shares = _shares(back)
    others = [count for learner, count in enumerate(back_shares) if learner != VICTIM]
    assert back_shares[VICTIM] >= 0.5 * sum(others) / len(others), back_shares
    # Staleness is the updates made while a gradient was computed: P - 1 with P equal learners alive.
    assert 1.5 <= _mean_staleness(away) <= 2.5 < _mean_staleness(back) <= 3.5
    assert server["final_loss"] < server["initial_loss"] / 2
