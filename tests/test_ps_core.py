"""The parameter server's core on real processes: wire format, server and learner loops over gloo,
and their faults (a learner or the server killed or hanging).

Multi-process worlds (a server and P learners on CPU) run a tiny least-squares problem through
``tests/scripts/ps_world.py``: one launcher process per test module imports torch once and forks
each world's ranks; every rank has a deadline, leftovers are killed, and the module's teardown
kills the launcher's whole process group, so no process outlives the tests.
"""

from __future__ import annotations

import importlib.util
import json
import os
import select
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

from lightning_echo.core.delays import ComputeTimes, DelayDistribution
from lightning_echo.core.schedule import ScheduleSimulation, ServerPolicy, variant_spec
from lightning_echo.errors import ConfigError
from lightning_echo.ps import (
    Kind,
    Message,
    ParameterLayout,
    ProtocolError,
    learner_delays,
)
from lightning_echo.ps.protocol import HEADER_BYTES

SCRIPT = Path(__file__).parent / "scripts" / "ps_world.py"
_spec = importlib.util.spec_from_file_location("ps_world", SCRIPT)
ps_world = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ps_world)  # the problem's data and gradients, shared with the ranks


# -- the wire format and the policy's retire (no processes) ---------------------------------------
def test_message_round_trip_sends_the_payload_only_for_kinds_that_carry_one() -> None:
    message = Message(numel=3, dtype=torch.float64)
    message.payload.copy_(torch.tensor([1.5, -2.0, 3.25], dtype=torch.float64))
    wire = message.encode(Kind.PUSH, learner=2, version=7, ticket=11)
    assert wire.numel() == HEADER_BYTES + 3 * 8 and wire.data_ptr() == message.buffer.data_ptr()
    received = Message(numel=3, dtype=torch.float64)
    received.buffer[: wire.numel()].copy_(wire)
    header = received.header()
    assert (header.kind, header.learner, header.version, header.ticket, header.numel) == (Kind.PUSH, 2, 7, 11, 3)
    assert received.payload.tolist() == [1.5, -2.0, 3.25]
    stop = message.encode(Kind.STOP, learner=2, version=9)
    assert stop.numel() == HEADER_BYTES and message.header().numel == 0


def test_a_corrupt_header_is_a_protocol_error() -> None:
    message = Message(numel=4, dtype=torch.float32)
    message.encode(Kind.START, learner=0)
    message.buffer[:8].view(torch.int64).fill_(99)
    with pytest.raises(ProtocolError, match="unknown message kind 99"):
        message.header()
    message.encode(Kind.BYE, learner=0)
    message.buffer[32:40].view(torch.int64).fill_(4)  # a BYE announcing a payload
    with pytest.raises(ProtocolError, match="BYE message announced 4 payload elements; expected 0"):
        message.header()


def test_parameter_layout_copies_in_place_in_a_stable_order() -> None:
    weight, bias = torch.arange(6.0).view(2, 3), torch.tensor([10.0, 11.0])
    layout = ParameterLayout([weight, bias])
    flat = torch.empty(layout.numel)
    where = flat.data_ptr()
    layout.flatten_into([weight, bias], flat)
    assert flat.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 11.0] and flat.data_ptr() == where
    layout.flatten_into([None, bias], flat)  # a parameter without .grad counts as zeros
    assert flat[:6].tolist() == [0.0] * 6
    targets = [torch.zeros(2, 3), torch.zeros(2)]
    layout.unflatten_into(torch.arange(8.0), targets)
    assert targets[0].tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]] and targets[1].tolist() == [6.0, 7.0]
    views = layout.views(flat)
    views[1].fill_(-1.0)
    assert flat[6:].tolist() == [-1.0, -1.0]
    with pytest.raises(ConfigError, match="must share one dtype"):
        ParameterLayout([weight, bias.double()])


def test_a_retired_learner_is_never_started_again() -> None:
    policy = ServerPolicy(variant_spec("k_async", 3, k=2))
    policy.initial_starts()
    policy.on_arrival(0)
    policy.retire(2)
    assert policy.running() == {1: 0} and policy.retired() == (2,)
    policy.on_arrival(1)
    update = policy.apply_update()
    assert update.starts == (0, 1) and update.cancelled == ()
    copy = ServerPolicy(variant_spec("k_async", 3, k=2))
    copy.load_state_dict(policy.state_dict())
    assert copy.retired() == (2,)
    with pytest.raises(ValueError, match="learner 3 does not exist"):
        policy.retire(3)


def test_learner_delays_draw_each_learners_own_stream_with_its_slowdown() -> None:
    source = ComputeTimes(DelayDistribution("exponential"), speeds=[1.0, 4.0])
    first, second = learner_delays(source, 0, seed=3), learner_delays(source, 1, seed=3)
    a, b = [first() for _ in range(2000)], [second() for _ in range(2000)]
    assert a != [x / 4 for x in b]  # independent streams, not one stream scaled
    assert 3.5 < (sum(b) / len(b)) / (sum(a) / len(a)) < 4.5
    again = learner_delays(source, 0, seed=3)
    assert [again() for _ in range(5)] == a[:5]


# -- worlds of real processes ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def launcher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[subprocess.Popen]:
    log = (tmp_path_factory.mktemp("ps_launcher") / "launcher.log").open("w")
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
        text=True, env=env, start_new_session=True,
    )
    try:
        yield process
    finally:
        process.stdin.close()
        try:
            process.wait(timeout=30)
        finally:
            _kill_group(process.pid)
            process.wait(timeout=10)
            log.close()


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_world(launcher: subprocess.Popen, tmp_path: Path, **scenario: Any) -> dict[str, Any]:
    """Run one world; return ``{"launcher": ..., 0: server result, i + 1: learner i's result}``."""
    scenario = {"timeout": 5.0, "deadline": 60.0, "lr": 0.05, **scenario}
    path, out = tmp_path / "scenario.json", tmp_path / "world"
    out.mkdir()
    path.write_text(json.dumps(scenario))
    launcher.stdin.write(f"{path}\t{out}\n")
    launcher.stdin.flush()
    ready, _, _ = select.select([launcher.stdout], [], [], scenario["deadline"] + 120)
    if not ready:
        _kill_group(launcher.pid)
        pytest.fail("the world launcher did not answer: killed")
    assert launcher.stdout.readline().strip() == "done", "the world launcher died (see launcher.log)"
    results: dict[Any, Any] = {"launcher": json.loads((out / "launcher.json").read_text())}
    assert results["launcher"]["leftover"] == [], "a world left processes behind"
    for rank in range(scenario["learners"] + 1):
        file = out / f"rank{rank}.json"
        results[rank] = json.loads(file.read_text()) if file.exists() else None
    return results


def _ok(result: dict[str, Any]) -> dict[str, Any]:
    assert result is not None and result["ok"], (result or {}).get("traceback")
    return result


@pytest.mark.slow
def test_async_gives_the_staleness_the_schedule_implies(launcher: subprocess.Popen, tmp_path: Path) -> None:
    speeds, updates = [0.06, 0.1481], 30  # seconds per gradient; their ratio is far from an integer
    world = run_world(launcher, tmp_path, variant="async", learners=2, updates=updates, delays=speeds,
                      keep_stale_params=True)
    assert world["launcher"]["exitcodes"] == [0, 0, 0] and world["launcher"]["killed"] == []
    server = _ok(world[0])
    report, records = server["report"], server["records"]
    assert report["updates"] == updates == len(records) and report["lost"] == {}
    # Exact bookkeeping across processes: each learner's gradients are used in the order it
    # computed them, at the versions it read; staleness = version before the update - read version.
    versions = [_ok(world[i + 1])["versions"] for i in (0, 1)]
    used = {i: [r for r in records if r["learners"] == [i]] for i in (0, 1)}
    for learner in (0, 1):
        read = [r["read_versions"][0] for r in used[learner]]
        assert read == versions[learner][: len(read)]
    assert all(r["staleness"][0] == r["version"] - 1 - r["read_versions"][0] for r in records)
    # Every update got the exact parameters each of its gradients was computed at (the dutta rule's input).
    assert server["stale_checks"] == {"checked": updates, "wrong": 0}
    # Async conserves staleness: each update ages the P - 1 other running computations by one, so
    # the used gradients' staleness plus the age of the computations running at the end is (P - 1) N.
    running_at_end = [versions[i][len(used[i])] if len(versions[i]) > len(used[i]) else updates for i in (0, 1)]
    assert sum(r["staleness"][0] for r in records) + sum(updates - v for v in running_at_end) == (2 - 1) * updates
    # The schedule on the same constant times: learner 1 always sees 2 or 3 of learner 0's updates,
    # learner 0 sees 0 or 1 of learner 1's. A real run also spends ~1 ms per gradient on messages
    # and can be descheduled on a shared machine (stalls of 0.4 s were seen), which moves a few
    # gradients' staleness by one; hence 80% inside the simulated values, all within one of them.
    simulation = ScheduleSimulation(variant_spec("async", 2), ComputeTimes(DelayDistribution("constant", value=1.0), speeds=speeds))
    plans = [simulation.next_update() for _ in range(updates)]
    simulated_used = Counter(g.learner for p in plans for g in p.gradients)
    for learner, expected in ((0, {0, 1}), (1, {2, 3})):
        simulated = {g.staleness for p in plans for g in p.gradients if g.learner == learner}
        real = [r["staleness"][0] for r in used[learner]]
        assert simulated == expected
        assert sum(s in simulated for s in real) >= 0.8 * len(real), (learner, real)
        assert min(simulated) - 1 <= min(real) and max(real) <= max(simulated) + 1, (learner, real)
        assert abs(len(real) - simulated_used[learner]) <= 3, (learner, len(real), simulated_used[learner])
    assert server["final_loss"] < server["initial_loss"] / 5
    # Bytes moved: per update one gradient in and one parameter vector out, each with its header.
    message = HEADER_BYTES + 8 * ps_world.DIM
    assert report["bytes_sent"] == (2 + updates) * message + 2 * HEADER_BYTES  # STARTs, then a STOP each
    assert report["bytes_received"] == sum(report["pushes_per_learner"]) * message + 2 * HEADER_BYTES  # pushes, BYEs


@pytest.mark.slow
def test_sync_equals_full_batch_averaged_sgd(launcher: subprocess.Popen, tmp_path: Path) -> None:
    learners, updates, lr = 3, 6, 0.1
    world = run_world(launcher, tmp_path, variant="sync", learners=learners, updates=updates, lr=lr)
    server = _ok(world[0])
    assert [sorted(r["learners"]) for r in server["records"]] == [[0, 1, 2]] * updates
    assert all(r["staleness"] == [0, 0, 0] for r in server["records"])
    assert server["report"]["computations_cancelled"] == 0 and server["report"]["cancelled_arrived"] == 0
    # Plain synchronous SGD: every step averages each learner's gradient of its own mini-batch at w.
    a, y = ps_world.least_squares()
    w = torch.zeros(ps_world.DIM, dtype=torch.float64)
    for step in range(updates):
        grads = [ps_world.gradient(a, y, w, ps_world.batch_rows(i, step, learners)) for i in range(learners)]
        w = w - lr * torch.stack(grads).mean(0)
    assert torch.allclose(torch.tensor(server["params"], dtype=torch.float64), w, rtol=1e-12, atol=1e-14)
    for learner in range(learners):
        versions = _ok(world[learner + 1])["versions"]  # the last START may be computed before the STOP arrives
        assert versions[:updates] == list(range(updates)) and len(versions) <= updates + 1


@pytest.mark.slow
def test_k_sync_cancels_and_never_applies_a_cancelled_gradient(launcher: subprocess.Popen, tmp_path: Path) -> None:
    # Learners 0 and 1 are fast, learner 2 is always too slow (cancelled at every update while it
    # sleeps), learner 3 pushes one gradient of a cancelled computation (1e6 everywhere) after its
    # cancellation reached it, as a push crossing the cancellation would.
    updates = 20
    world = run_world(launcher, tmp_path, variant="k_sync", learners=4, k=2, updates=updates,
                      delays=[0.02, 0.03, 0.5, 0.04], faults={"3": {"crossing": True}})
    assert world["launcher"]["exitcodes"] == [0] * 5
    server = _ok(world[0])
    report, records = server["report"], server["records"]
    learners = [_ok(world[i + 1])["report"] for i in range(4)]
    assert report["updates"] == updates
    assert all(len(set(r["learners"])) == 2 and r["staleness"] == [0, 0] for r in records)
    assert all(2 not in r["learners"] for r in records)
    assert (3, 1) not in {(l, t) for r in records for l, t in zip(r["learners"], r["start_tickets"])}
    assert report["cancelled_arrived"] >= 1  # the crossing push, dropped on arrival
    assert learners[2]["pushed"] == 0 and learners[2]["cancelled"] == learners[2]["starts"] - 1 >= updates - 1
    # Every cancelled computation was dropped exactly once: by its learner, or by the server on arrival.
    assert report["computations_cancelled"] == sum(l["cancelled"] for l in learners) + report["cancelled_arrived"]
    assert sum(report["pushes_per_learner"]) == (
        report["gradients_used"] + report["gradients_discarded"] + report["cancelled_arrived"] + report["unused_at_stop"]
    )
    assert server["final_loss"] < server["initial_loss"] / 2  # the 1e6 gradient was never applied


@pytest.mark.slow
def test_async_carries_on_without_a_killed_and_a_hung_learner(launcher: subprocess.Popen, tmp_path: Path) -> None:
    updates = 150
    world = run_world(launcher, tmp_path, variant="async", learners=4, updates=updates, timeout=1.5,
                      delays=[0.03, 0.04, 0.03, 0.03],
                      faults={"2": {"kill_at_gradient": 2}, "3": {"hang_at_gradient": 1}})
    exitcodes, killed = world["launcher"]["exitcodes"], world["launcher"]["killed"]
    assert exitcodes[:3] == [0, 0, 0] and exitcodes[3] == -signal.SIGKILL and world[3] is None
    assert killed == [4]  # the hung learner never read its STOP: the launcher ended it
    server = _ok(world[0])
    report = server["report"]
    assert report["updates"] == updates and set(report["lost"]) == {"2", "3"}
    # gloo reports the dead peer as "closed" (EOF) or "reset" (RST), depending on which end wrote last
    assert "Connection closed by peer" in report["lost"]["2"] or "Connection reset by peer" in report["lost"]["2"]
    assert "no gradient within ps.timeout=1.5 s" in report["lost"]["3"]
    assert report["used_per_learner"][2] <= 2 and report["used_per_learner"][3] <= 1
    assert _ok(world[1])["report"]["stopped"] and _ok(world[2])["report"]["stopped"]


@pytest.mark.slow
def test_sync_stops_with_a_clear_error_when_a_learner_is_killed(launcher: subprocess.Popen, tmp_path: Path) -> None:
    world = run_world(launcher, tmp_path, variant="sync", learners=2, updates=50, faults={"1": {"kill_at_gradient": 3}})
    assert world["launcher"]["killed"] == [] and world["launcher"]["exitcodes"] == [1, 1, -signal.SIGKILL]
    assert world[0]["error_type"] == "ParameterServerError"
    assert "learner 1 (rank 2) is lost" in world[0]["error"] and "sync needs a fresh gradient" in world[0]["error"]
    assert world[1]["error_type"] == "ParameterServerError" and "ended the run with an error" in world[1]["error"]


@pytest.mark.slow
def test_sync_stops_within_the_timeout_when_a_learner_hangs(launcher: subprocess.Popen, tmp_path: Path) -> None:
    world = run_world(launcher, tmp_path, variant="sync", learners=2, updates=50, timeout=1.5,
                      faults={"1": {"hang_at_gradient": 2}})
    assert world["launcher"]["killed"] == [2] and world["launcher"]["exitcodes"][:2] == [1, 1]
    assert world[0]["error_type"] == "ParameterServerError"
    assert "learner 1 (rank 2) is lost: it delivered no gradient within ps.timeout=1.5 s" in world[0]["error"]
    assert "ended the run with an error" in world[1]["error"]


@pytest.mark.slow
def test_every_learner_stops_with_a_clear_error_when_the_server_is_killed(launcher: subprocess.Popen, tmp_path: Path) -> None:
    world = run_world(launcher, tmp_path, variant="async", learners=2, updates=100, delays=[0.02, 0.03],
                      kill_server_at_update=5)
    assert world["launcher"]["killed"] == [] and world["launcher"]["exitcodes"] == [-signal.SIGKILL, 1, 1]
    for learner in (0, 1):
        result = world[learner + 1]
        assert result["error_type"] == "ParameterServerError"
        assert f"learner {learner} stops: the parameter server (rank 0) is unreachable" in result["error"]
