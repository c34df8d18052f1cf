"""Learners that come and go, at the parameter server's core: a learner killed before it joins,
a learner restarted after a crash that joins the running server, the synchronous family going
on with the learners it has (K reduced, and back when they return), a minimum of learners, and a
server killed twice that restarts from its checkpoint while its learners join it again.

Worlds of real processes (gloo on CPU) through ``tests/scripts/ps_world.py``, whose launcher
restarts a killed process as a supervisor would; every world has a hard deadline and the
launcher reports any process left behind.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from core_worlds import ok, run_world


def _events(report: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [event for event in report["events"] if event["event"] == kind]


@pytest.mark.slow
def test_a_learner_killed_before_it_joins_fails_nothing(launcher: subprocess.Popen, tmp_path: Path) -> None:
    world = run_world(launcher, tmp_path, variant="async", learners=3, updates=60, start_wait=2.0,
                      delays=[0.01, 0.01, 0.01], faults={"2": {"kill_before_join": True}})
    assert world["launcher"]["exitcodes"] == [0, 0, 0, -signal.SIGKILL] and world["launcher"]["killed"] == []
    report = ok(world[0])["report"]
    assert report["updates"] == 60 and list(report["lost"]) == ["2"]
    assert "did not join within 2 s of the start" in report["lost"]["2"]
    assert [e["learner"] for e in _events(report, "lost")] == [2] and report["used_per_learner"][2] == 0
    assert ok(world[1])["report"]["stopped"] and ok(world[2])["report"]["stopped"]


@pytest.mark.slow
@pytest.mark.parametrize("shrink_k", [False, True])
def test_a_learner_that_fails_before_its_first_start_is_lost_with_its_reason(launcher: subprocess.Popen, tmp_path: Path,
                                                                              shrink_k: bool) -> None:
    # learner 0 joins late, so learner 1's ERROR reaches the server while it still waits for joins
    world = run_world(launcher, tmp_path, variant="sync", learners=3, updates=30, shrink_k=shrink_k, start_wait=60.0,
                      delays=[0.01, 0.01, 0.01],
                      faults={"0": {"join_after_s": 1.0}, "1": {"error_before_start": True}})
    assert world["launcher"]["killed"] == []
    failing = ok(world[2])
    assert failing["failed_before_start"] and failing["still_waiting_for"] == []  # the server answered its ERROR
    reason = "is lost: its gradient computation raised an error"
    if not shrink_k:  # sync without shrink_k cannot start without it: the run fails in one line that says why
        assert world[0]["error_type"] == "ParameterServerError" and f"learner 1 (rank 2) {reason}" in world[0]["error"]
        assert world[1]["error_type"] == world[3]["error_type"] == "ParameterServerError"
        return
    report = ok(world[0])["report"]
    assert report["updates"] == 30 and list(report["lost"]) == ["1"] and "raised an error" in report["lost"]["1"]
    assert report["used_per_learner"] == [30, 0, 30]  # K = the two learners left, from the first update
    assert ok(world[1])["report"]["stopped"] and ok(world[3])["report"]["stopped"]


@pytest.mark.slow
def test_a_learner_that_dies_between_its_join_and_its_channel_leaves_no_server_thread(launcher: subprocess.Popen,
                                                                                       tmp_path: Path) -> None:
    # accepted, then killed before building its end: the server's builder must not wait in gloo
    # for it (4 x ps.timeout = 80 s here, far longer than the run)
    world = run_world(launcher, tmp_path, variant="async", learners=2, updates=30, timeout=20.0, start_wait=1.0,
                      fixed_address=True, delays=[0.01, 0.01], faults={"1": {"die_after_reply": True}})
    assert world["launcher"]["exitcodes"] == [0, 0, -signal.SIGKILL] and world["launcher"]["killed"] == []
    server = ok(world[0])
    assert server["report"]["updates"] == 30 and list(server["report"]["lost"]) == ["1"]
    assert server["threads_after_close"] == []


@pytest.mark.slow
def test_a_restarted_learner_joins_the_running_server_and_works(launcher: subprocess.Popen, tmp_path: Path) -> None:
    world = run_world(launcher, tmp_path, variant="k_async", k=2, learners=3, updates=150,
                      delays=[0.01, 0.015, 0.012], restart_learners=1, faults={"1": {"kill_at_gradient": 5}})
    assert world["launcher"]["all_exitcodes"] == [[0], [0], [-signal.SIGKILL, 0], [0]]
    server = ok(world[0])
    report = server["report"]
    assert report["updates"] == 150 and report["lost"] == {} and report["losses"] == 1 and report["joins"] == 1
    lost, joined = _events(report, "lost")[0], _events(report, "joined")[0]
    assert lost["learner"] == joined["learner"] == 1 and joined["time_s"] >= lost["time_s"]
    again = ok(world["2.1"])
    # its first computation read the version current when it joined, and it kept working to the end
    assert again["versions"][0] >= joined["version"] and len(again["versions"]) >= 10 and again["report"]["stopped"]
    used_after = sum(1 for r in server["records"] for l, v in zip(r["learners"], r["read_versions"])
                     if l == 1 and v >= joined["version"])
    assert used_after >= 10
    assert all(s >= 0 for r in server["records"] for s in r["staleness"])
    assert server["final_loss"] < server["initial_loss"] / 2


@pytest.mark.slow
def test_sync_goes_on_with_the_learners_left_and_takes_a_rejoined_one_back(launcher: subprocess.Popen, tmp_path: Path) -> None:
    world = run_world(launcher, tmp_path, variant="sync", learners=3, updates=80, shrink_k=True,
                      delays=[0.01, 0.01, 0.01], restart_learners=1, faults={"2": {"kill_at_gradient": 6}})
    assert world["launcher"]["all_exitcodes"] == [[0], [0], [0], [-signal.SIGKILL, 0]]
    server = ok(world[0])
    report, records = server["report"], server["records"]
    assert report["updates"] == 80 and report["losses"] == 1 and report["joins"] == 1
    assert [e["k"] for e in _events(report, "k")] == [2, 3]  # K drops to the learners alive, and comes back
    shrunk, grown = _events(report, "k")
    # every update averages one fresh gradient of each learner alive at that moment
    for record in records:
        alive = 2 if shrunk["version"] < record["version"] <= grown["version"] + 1 else 3
        assert len(record["learners"]) in (alive, 3 if record["version"] == grown["version"] + 1 else alive)
        assert record["staleness"] == [0] * len(record["learners"])
    assert any(len(r["learners"]) == 2 for r in records) and len(records[-1]["learners"]) == 3
    assert server["final_loss"] < server["initial_loss"] / 2


@pytest.mark.slow
def test_the_run_stops_in_one_line_when_fewer_than_min_learners_are_left(launcher: subprocess.Popen, tmp_path: Path) -> None:
    world = run_world(launcher, tmp_path, variant="async", learners=3, updates=200, min_learners=3, rejoin_wait=1.0,
                      delays=[0.01, 0.01, 0.01], faults={"0": {"kill_at_gradient": 3}})
    assert world["launcher"]["killed"] == [] and world["launcher"]["exitcodes"] == [1, -signal.SIGKILL, 1, 1]
    error = world[0]["error"]
    assert world[0]["error_type"] == "ParameterServerError" and "\n" not in error
    assert error.startswith("2 of 3 learners are left, fewer than ps.min_learners=3 and none joined within 1 s")
    assert "ended the run with an error" in world[2]["error"]


@pytest.mark.slow
def test_a_server_killed_twice_restarts_from_its_checkpoint_and_its_learners_rejoin(
    launcher: subprocess.Popen, tmp_path: Path
) -> None:
    world = run_world(launcher, tmp_path, variant="async", learners=2, updates=120, delays=[0.01, 0.013],
                      checkpoint_every=10, kill_server_at_updates=[25, 30], restart_server=2, learner_rejoin_wait=20.0,
                      deadline=90.0)
    assert world["launcher"]["all_exitcodes"] == [[-signal.SIGKILL, -signal.SIGKILL, 0], [0], [0]]
    assert world[0] is None and world.get("0.1") is None  # killed before they could write
    last = ok(world["0.2"])
    assert last["report"]["lost"] == {} and last["records"][-1]["version"] == 120
    restarted = _events(last["report"], "restarted")
    assert restarted and restarted[0]["checkpoint_version"] % 10 == 0
    assert last["report"]["start_version"] > restarted[0]["checkpoint_version"]
    for learner in (1, 2):
        result = ok(world[learner])
        assert result["report"]["rejoins"] == 2 and result["report"]["stopped"]
        # the versions a learner read never went backwards across the two restarts
        assert result["versions"] == sorted(result["versions"])
    assert last["final_loss"] < 0.05 * last["initial_loss"] or last["final_loss"] < 0.5


@pytest.mark.slow
def test_learners_wait_a_bounded_time_for_a_server_that_does_not_come_back(launcher: subprocess.Popen, tmp_path: Path) -> None:
    world = run_world(launcher, tmp_path, variant="async", learners=2, updates=100, delays=[0.01, 0.01],
                      kill_server_at_update=5, fixed_address=True, learner_rejoin_wait=1.5)
    assert world["launcher"]["killed"] == [] and world["launcher"]["exitcodes"] == [-signal.SIGKILL, 1, 1]
    for learner in (1, 2):
        error = world[learner]["error"]
        assert world[learner]["error_type"] == "ParameterServerError" and "\n" not in error
        assert error.startswith("learner ") and "lost the parameter server and could not join it again: no parameter server took" in error
        assert "within 1.5 s" in error
        assert world[learner]["seconds"] < 30  # gave up after its wait, not at the gloo backstop
