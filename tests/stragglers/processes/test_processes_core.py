"""The parameter server's core on real processes: wire format, server and learner loops over gloo,
and their faults (a learner or the server killed or hanging).

Multi-process worlds (a server and P learners on CPU) run a tiny least-squares problem through
``tests/scripts/ps_world.py``: one launcher process per test module imports torch once and forks
each world's ranks; every rank has a deadline, leftovers are killed, and the module's teardown
kills the launcher's whole process group, so no process outlives the tests.
"""

from __future__ import annotations

import importlib.util
import signal
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from lightning_echo.core.delays import ComputeTimes, DelayDistribution
from lightning_echo.core.schedule import ScheduleSimulation, ServerPolicy, UpdatePlan, variant_spec
from lightning_echo.errors import ConfigError
from lightning_echo.stragglers.processes import (
    Kind,
    Message,
    ParameterLayout,
    ParameterServer,
    ProtocolError,
    learner_delays,
)
from lightning_echo.stragglers.processes.protocol import HEADER_BYTES
from lightning_echo.stragglers.processes.rendezvous import Address, free_port
from lightning_echo.stragglers.processes.transport import serve

from core_worlds import SCRIPT, ok as _ok, run_world
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


def test_shrink_k_lowers_k_to_the_live_learners_and_a_rejoin_raises_it_back() -> None:
    policy = ServerPolicy(variant_spec("sync", 3), shrink_k=True)
    policy.initial_starts()
    policy.on_arrival(0)
    policy.on_arrival(1)
    assert not policy.update_due
    policy.retire(2)  # two fresh gradients of the two learners left: the update is due at once
    assert policy.k == 2 and policy.update_due
    update = policy.apply_update()
    assert [g.learner for g in update.gradients] == [0, 1] and update.starts == (0, 1)
    assert policy.rejoin(2) == (2,) and policy.k == 3 and policy.running() == {0: 1, 1: 1, 2: 1}
    state = policy.state_dict()
    copy = ServerPolicy(variant_spec("sync", 3), shrink_k=True)
    copy.load_state_dict(state)
    assert copy.k == 3 and copy.retired() == ()
    with pytest.raises(ValueError, match="learner 2 is not retired"):
        policy.rejoin(2)


def test_without_shrink_k_and_for_batch_variants_k_stays() -> None:
    fixed = ServerPolicy(variant_spec("k_async", 3, k=3))
    fixed.initial_starts()
    fixed.retire(0)
    assert fixed.k == 3
    batch = ServerPolicy(variant_spec("k_batch_async", 2, k=4), shrink_k=True)
    batch.initial_starts()
    batch.retire(1)
    assert batch.k == 4  # one learner can still deliver all four
    rejoined_while_due = ServerPolicy(variant_spec("k_async", 2, k=1))
    rejoined_while_due.initial_starts()
    rejoined_while_due.retire(1)
    rejoined_while_due.on_arrival(0)
    assert rejoined_while_due.rejoin(1) == () and rejoined_while_due.ready() == (1,)
    assert rejoined_while_due.apply_update().starts == (0, 1)


def test_learner_delays_draw_each_learners_own_stream_with_its_slowdown() -> None:
    source = ComputeTimes(DelayDistribution("exponential"), speeds=[1.0, 4.0])
    first, second = learner_delays(source, 0, seed=3), learner_delays(source, 1, seed=3)
    a, b = [first() for _ in range(2000)], [second() for _ in range(2000)]
    assert a != [x / 4 for x in b]  # independent streams, not one stream scaled
    assert 3.5 < (sum(b) / len(b)) / (sum(a) / len(a)) < 4.5
    again = learner_delays(source, 0, seed=3)
    assert [again() for _ in range(5)] == a[:5]


# -- worlds of real processes ---------------------------------------------------------------------
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


# -- the K-variants, rennala and ringmaster against the schedule of the same constant times -------
# Each world injects constant compute times (seconds per gradient, ratios far from integers) and
# checks the variant's rule on every update exactly (no timing can change it), the bookkeeping,
# and the schedule that ScheduleSimulation derives from the same times: as in the async test, a
# real run spends a few ms per message and can be descheduled, so each learner needs 80% of its
# gradients at a staleness the schedule gives it, none more than one away, and about as many used.
WARM_UP = 4  # the schedule is compared from this version on
Record = dict[str, Any]  # one rank's result, or one update's record, as the world wrote it


def _finished(world: dict[Any, Any], learners: int, updates: int) -> tuple[Record, list[Record], list[Record]]:
    """The server's result and records, and the learners' results, of a world that ran to its end."""
    assert world["launcher"]["exitcodes"] == [0] * (learners + 1) and world["launcher"]["killed"] == []
    server = _ok(world[0])
    report, records = server["report"], server["records"]
    results = [_ok(world[i + 1]) for i in range(learners)]
    assert report["updates"] == updates == len(records) and report["lost"] == {}
    assert all(r["staleness"] == [r["version"] - 1 - v for v in r["read_versions"]] for r in records)
    assert sum(report["pushes_per_learner"]) == (
        report["gradients_used"] + report["gradients_discarded"] + report["cancelled_arrived"] + report["unused_at_stop"]
    )
    # Every cancelled computation was dropped exactly once: by its learner, or by the server on arrival.
    assert report["computations_cancelled"] == sum(r["report"]["cancelled"] for r in results) + report["cancelled_arrived"]
    assert server["final_loss"] < server["initial_loss"] / 5
    return server, records, results


def _schedule(variant: str, delays: list[float], updates: int, **spec: Any) -> list[UpdatePlan]:
    times = ComputeTimes(DelayDistribution("constant", value=1.0), speeds=delays)
    simulation = ScheduleSimulation(variant_spec(variant, len(delays), **spec), times)
    return [simulation.next_update() for _ in range(updates)]


def _used(records: list[Record], learner: int) -> list[tuple[Record, int]]:
    """``learner``'s used gradients in order: (the update's record, the gradient's place in it)."""
    return [(r, i) for r in records for i, l in enumerate(r["learners"]) if l == learner]


def _assert_staleness_as_scheduled(records: list[Record], plans: list[UpdatePlan], expected: dict[int, set[int]]) -> None:
    """The schedule gives each learner exactly the staleness values ``expected`` (none: it never
    delivers a gradient that is used); the real run gives about as many used gradients per learner,
    80% of them at those values and none more than one away. Gradients computed before version
    ``WARM_UP`` are left out: just after the fork the first messages can wait ~0.5 s on a busy
    machine, so the learners do not start together as in the schedule."""
    for learner, values in expected.items():
        simulated = [g.staleness for p in plans for g in p.gradients if g.learner == learner and g.read_version >= WARM_UP]
        real = [s for r in records for l, v, s in zip(r["learners"], r["read_versions"], r["staleness"])
                if l == learner and v >= WARM_UP]
        assert set(simulated) == values, (learner, sorted(set(simulated)))
        assert abs(len(real) - len(simulated)) <= max(3, len(simulated) / 5), (learner, len(real), len(simulated))
        if values:
            assert sum(s in values for s in real) >= 0.8 * len(real), (learner, real)
            assert min(values) - 1 <= min(real) and max(real) <= max(values) + 1, (learner, real)


def _assert_restarts(records: list[Record], results: list[Record], next_start: Callable[[Record, int], int]) -> None:
    """With nothing cancelled or discarded, a learner computes at version 0, then at
    ``next_start(record, place)`` after each of its used gradients; the last may be unfinished."""
    for learner, result in enumerate(results):
        used = _used(records, learner)
        starts = [0] + [next_start(r, i) for r, i in used]
        assert [r["read_versions"][i] for r, i in used] == starts[: len(used)], learner
        versions = result["versions"]
        assert versions == starts[: len(versions)] and len(versions) >= len(used), (learner, versions, starts)


@pytest.mark.slow
def test_k_async_averages_k_gradients_of_distinct_learners_as_scheduled(launcher: subprocess.Popen, tmp_path: Path) -> None:
    # K = 2 of 3: learner 0 (0.05 s) pushes first and waits; learner 1 (0.07 s) or 2 completes the update;
    # learner 2 (0.23 s) always sees 3 updates while it computes.
    delays, updates = [0.05, 0.07, 0.23], 30
    world = run_world(launcher, tmp_path, variant="k_async", learners=3, k=2, updates=updates, delays=delays, deadline=20.0)
    server, records, learners = _finished(world, 3, updates)
    assert all(len(r["learners"]) == len(set(r["learners"])) == 2 and r["cancelled"] == [] for r in records)
    assert server["report"]["gradients_discarded"] == server["report"]["computations_cancelled"] == 0
    # A learner that pushed waits for the update that uses its gradient, and restarts at its version.
    _assert_restarts(records, learners, lambda record, place: record["version"])
    plans = _schedule("k_async", delays, updates, k=2)
    _assert_staleness_as_scheduled(records, plans, {0: {0}, 1: {0, 1}, 2: {3}})


@pytest.mark.slow
def test_k_batch_sync_averages_k_fresh_gradients_and_cancels_the_rest(launcher: subprocess.Popen, tmp_path: Path) -> None:
    # K = 3 from 2 learners: learner 0 (0.04 s) delivers two gradients per update, learner 1 (0.065 s)
    # one, and the update cancels the computation learner 1 began after it.
    delays, updates, k = [0.04, 0.065], 20, 3
    world = run_world(launcher, tmp_path, variant="k_batch_sync", learners=2, k=k, updates=updates, delays=delays,
                      deadline=20.0)
    server, records, _ = _finished(world, 2, updates)
    # Every update: K gradients computed at the current version; every learner still computing is cancelled.
    assert all(len(r["learners"]) == k and r["staleness"] == [0] * k for r in records)
    assert all(r["cancelled"] == [l for l in (0, 1) if l != r["learners"][-1]] for r in records)
    assert server["report"]["computations_cancelled"] == updates and server["report"]["gradients_discarded"] == 0
    plans = _schedule("k_batch_sync", delays, updates, k=k)
    assert {tuple(sorted(g.learner for g in p.gradients)) for p in plans} == {(0, 0, 1)}
    assert sum(sorted(r["learners"]) == [0, 0, 1] for r in records) >= 0.8 * updates, [r["learners"] for r in records]
    _assert_staleness_as_scheduled(records, plans, {0: {0}, 1: {0}})


@pytest.mark.slow
def test_k_batch_async_restarts_at_once_and_keeps_running_work(launcher: subprocess.Popen, tmp_path: Path) -> None:
    # K = 2: learner 0 (0.03 s) often fills an update alone; learner 1 (0.1 s) sees 1 or 2 updates.
    delays, updates, k = [0.03, 0.1], 30, 2
    world = run_world(launcher, tmp_path, variant="k_batch_async", learners=2, k=k, updates=updates, delays=delays,
                      deadline=20.0)
    server, records, learners = _finished(world, 2, updates)
    assert all(len(r["learners"]) == k and r["cancelled"] == [] for r in records)
    assert server["report"]["gradients_discarded"] == server["report"]["computations_cancelled"] == 0
    assert any(r["learners"] == [0, 0] for r in records)  # one learner's two gradients in one update
    # A learner that pushed restarts at once at the version then: the next update's version less one,
    # or that update's version when its gradient was the K-th (the update is applied first).
    _assert_restarts(records, learners, lambda record, place: record["version"] - (0 if place == k - 1 else 1))
    plans = _schedule("k_batch_async", delays, updates, k=k)
    _assert_staleness_as_scheduled(records, plans, {0: {0, 1}, 1: {1, 2}})


@pytest.mark.slow
def test_rennala_uses_fresh_gradients_only_and_discards_the_stale(launcher: subprocess.Popen, tmp_path: Path) -> None:
    # K = 2: learner 0 (0.03 s) makes an update every 0.06 s, so learner 1 (0.08 s) is always one or
    # two updates late: the schedule discards every gradient it delivers.
    delays, updates, k = [0.03, 0.08], 25, 2
    world = run_world(launcher, tmp_path, variant="rennala", learners=2, k=k, updates=updates, delays=delays,
                      deadline=20.0)
    server, records, _ = _finished(world, 2, updates)
    report = server["report"]
    assert all(len(r["learners"]) == k and r["staleness"] == [0] * k and r["cancelled"] == [] for r in records)
    assert report["computations_cancelled"] == report["cancelled_arrived"] == 0
    plans = _schedule("rennala", delays, updates, k=k)
    discarded = [g for p in plans for g in p.discarded]
    assert {(g.learner, g.staleness) for g in discarded} == {(1, 1), (1, 2)}
    pushes = report["pushes_per_learner"][1]
    assert report["gradients_discarded"] >= pushes - 3 and pushes >= len(discarded) / 2, (report, len(discarded))
    _assert_staleness_as_scheduled(records, plans, {0: {0}, 1: set()})


@pytest.mark.slow
def test_ringmaster_stops_work_that_reaches_the_max_delay(launcher: subprocess.Popen, tmp_path: Path) -> None:
    # R = 3 with stop_stale: updates come every ~0.03 s, so learner 2 (0.13 s) always reaches a delay
    # of 3 and is stopped (the schedule never uses it); learner 1 (0.09 s) arrives 2 updates late.
    delays, updates, max_delay = [0.04, 0.09, 0.13], 40, 3
    world = run_world(launcher, tmp_path, variant="ringmaster", learners=3, updates=updates, delays=delays,
                      max_delay=max_delay, stop_stale=True, deadline=20.0)
    server, records, learners = _finished(world, 3, updates)
    report = server["report"]
    assert all(len(r["learners"]) == 1 and r["staleness"][0] < max_delay for r in records)
    assert report["gradients_discarded"] == 0  # stopped at delay R, no computation arrives too stale to use
    # Replayed from the records: a learner restarts at the version of the update that used its gradient
    # or cancelled its computation, and a computation is cancelled exactly when its delay reaches R.
    for learner in range(3):
        starts = [0]
        for r in records:
            if r["learners"] == [learner]:
                assert r["read_versions"] == [starts[-1]], (learner, r)
            elif learner in r["cancelled"]:
                assert r["version"] - starts[-1] == max_delay, (learner, r)
            else:
                continue
            starts.append(r["version"])
        remaining = iter(starts)  # a START replaced before the learner took it is never computed
        assert all(v in remaining for v in learners[learner]["versions"]), (learner, learners[learner]["versions"], starts)
    plans = _schedule("ringmaster", delays, updates, max_delay=max_delay, stop_stale=True)
    cancelled = sum(p.cancelled for p in plans)
    assert abs(report["computations_cancelled"] - cancelled) <= max(3, cancelled / 5), (report, cancelled)
    _assert_staleness_as_scheduled(records, plans, {0: {0, 1}, 1: {2}, 2: set()})


def test_a_server_refuses_a_variant_for_more_learners_than_its_transport_takes() -> None:
    transport = serve(4, torch.float64, timeout=5.0, learners=2, address=Address("127.0.0.1", free_port()))
    try:
        with pytest.raises(ConfigError, match=r"stale.learners=3 is not allowed: must equal the number of learner processes \(2\)"):
            ParameterServer(transport, variant_spec("async", 3), torch.zeros(4, dtype=torch.float64))
        assert ParameterServer(transport, variant_spec("async", 2), torch.zeros(4, dtype=torch.float64)).spec.learners == 2
    finally:
        transport.close(wait=1.0)


def test_a_failed_send_names_its_real_cause() -> None:
    from lightning_echo.stragglers.processes.transport import send_failure

    closed = RuntimeError("Connection closed by peer [127.0.0.1]:1234")
    early = send_failure(Kind.START, waited_s=4.0, timeout=60.0, error=closed)
    assert early.startswith("its channel failed after 4.0 s while sending a START message, so its process is gone")
    assert "not taken within" not in early  # 4 s after a learner died is no 60 s timeout
    late = send_failure(Kind.START, waited_s=60.0, timeout=60.0, error=RuntimeError("Timed out"))
    assert late.startswith("a START message was not taken within 60 s")
