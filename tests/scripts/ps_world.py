"""Run parameter-server worlds (a server and P learners, gloo on CPU) on a tiny least-squares
problem and write what every rank did: ``python ps_world.py SCENARIO.json OUT_DIR`` for one
world, ``python ps_world.py --serve`` for one world per line of stdin (what the tests use).

The launcher imports torch (and lightning_echo) once and forks the P + 1 ranks from its single
Python thread, as a DataLoader forks its workers (spawning them would import everything P + 1
more times per world: about 5 CPU-seconds each here). It joins every rank until the scenario's
deadline, kills whatever is left, and writes ``launcher.json`` (exit codes, killed ranks).
Each rank writes ``rank<r>.json`` (a restarted process ``rank<r>.<n>.json``, n = 1, 2, ...).
Faults come from the scenario: a learner that kills itself (SIGKILL) before it joins or at its
n-th gradient, or hangs at its n-th gradient, a learner that joins ``join_after_s`` late, one
that fails (ERROR) before its first START, a server that kills itself at its n-th update, a
learner that delivers a gradient of a cancelled computation on purpose. With
``restart_learners`` / ``restart_server`` (how many times at most) the launcher starts a new
process in place of one that died (a learner ``restart_learner_delay`` seconds after its death,
default at once), which joins the running server (a learner) or continues
from the server's last checkpoint (``checkpoint_every`` updates, the server), as a supervisor
would; every process finds the server at the scenario's address then.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from lightning_echo.core.delays import ComputeTimes, DelayDistribution
from lightning_echo.core.schedule import variant_spec
from lightning_echo.stragglers.processes import (
    Kind,
    LearnerSession,
    ParameterServer,
    connect,
    learner_delays,
    run_learner,
)
from lightning_echo.stragglers.processes.rendezvous import Address, JoinRequest, open_store
from lightning_echo.stragglers.processes.transport import SERVER_RANK, join, learner_index
from lightning_echo.stragglers.processes.transport import serve as serve_learners

ROWS, DIM, BATCH = 64, 5, 8


def least_squares() -> tuple[torch.Tensor, torch.Tensor]:
    """The same data on every rank: ``A`` (ROWS x DIM) and ``y``, float64."""
    generator = torch.Generator().manual_seed(1234)
    a = torch.randn(ROWS, DIM, generator=generator, dtype=torch.float64)
    y = a @ torch.arange(1.0, DIM + 1, dtype=torch.float64) + 0.1 * torch.randn(ROWS, generator=generator, dtype=torch.float64)
    return a, y


def batch_rows(learner: int, count: int, learners: int) -> slice:
    """Learner ``learner``'s ``count``-th mini-batch: learners take consecutive blocks in turn."""
    blocks = ROWS // BATCH
    block = (count * learners + learner) % blocks
    return slice(block * BATCH, (block + 1) * BATCH)


def gradient(a: torch.Tensor, y: torch.Tensor, w: torch.Tensor, rows: slice) -> torch.Tensor:
    """Gradient of ``0.5 * mean((A w - y)^2)`` over ``rows``."""
    residual = a[rows] @ w - y[rows]
    return a[rows].T @ residual / residual.numel()


def loss(a: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> float:
    return float(0.5 * ((a @ w - y) ** 2).mean())


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _checkpoint(out: Path) -> Path:
    return out / "server_checkpoint.pt"


def _server(scenario: dict[str, Any], transport: Any, a: torch.Tensor, y: torch.Tensor, out: Path,
            incarnation: int) -> dict[str, Any]:
    spec = variant_spec(scenario["variant"], scenario["learners"], scenario.get("k"),
                        max_delay=scenario.get("max_delay"), stop_stale=scenario.get("stop_stale", False))
    keep = bool(scenario.get("keep_stale_params"))
    initial, version = torch.zeros(DIM, dtype=torch.float64), 0
    if incarnation > 0:  # a restarted server continues from its predecessor's last checkpoint
        saved = torch.load(_checkpoint(out))
        initial, version = saved["params"], saved["version"]
    server = ParameterServer(transport, spec, initial, timeout=scenario["timeout"], keep_stale_params=keep,
                             shrink_k=scenario.get("shrink_k", False), min_learners=scenario.get("min_learners", 1),
                             start_wait=scenario.get("start_wait"), rejoin_wait=scenario.get("rejoin_wait", 0.0))
    records = []
    kills = scenario.get("kill_server_at_updates") or [scenario.get("kill_server_at_update")]
    kill_at = kills[incarnation] if incarnation < len(kills) else None  # counted in this incarnation's updates
    every = scenario.get("checkpoint_every")
    lr = scenario["lr"]
    history = [server.params.clone()]  # the parameters of every version, to check the stale ones given
    stale_checks = {"checked": 0, "wrong": 0}

    def apply(avg: torch.Tensor, staleness: list[int], stale: Any) -> None:
        if kill_at is not None and server.report.updates + 1 == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        if keep:
            before = server.version - 1  # the version this update overwrites
            for tau, params in zip(staleness, stale):
                stale_checks["checked"] += 1
                stale_checks["wrong"] += not torch.equal(params, history[before - tau])
        server.params.add_(avg, alpha=-lr)
        history.append(server.params.clone())

    def on_update(record: Any) -> None:
        records.append(dataclasses.asdict(record))
        if every and record.version % every == 0:  # written whole, then renamed: a kill never leaves half a file
            partial = _checkpoint(out).with_suffix(".partial")
            torch.save({"params": server.params.clone(), "version": record.version}, partial)
            os.replace(partial, _checkpoint(out))

    initial = loss(a, y, server.params)
    if incarnation > 0 or every:
        report = server.run(apply, should_stop=lambda: server.version >= scenario["updates"], on_update=on_update,
                            version=version)
    else:
        report = server.run(apply, max_updates=scenario["updates"], on_update=on_update)
    return {
        "threads_after_close": sorted(t.name for t in threading.enumerate() if t is not threading.main_thread()),
        "report": dataclasses.asdict(report),
        "records": records,
        "params": server.params.tolist(),
        "initial_loss": initial,
        "final_loss": loss(a, y, server.params),
        "stale_checks": stale_checks,
    }


def _learner(scenario: dict[str, Any], transport: Any, a: torch.Tensor, y: torch.Tensor, out: Path,
             incarnation: int) -> dict[str, Any]:
    learner, learners = learner_index(transport.rank), scenario["learners"]
    faults = scenario.get("faults", {}).get(str(learner), {}) if incarnation == 0 else {}
    versions: list[int] = []  # the version of every computation begun, in order

    def compute(params: torch.Tensor, version: int) -> torch.Tensor:
        count = len(versions)
        versions.append(version)
        if faults.get("kill_at_gradient") == count:
            os.kill(os.getpid(), signal.SIGKILL)
        if faults.get("hang_at_gradient") == count:
            time.sleep(600)
        return gradient(a, y, params, batch_rows(learner, count, learners))

    if faults.get("error_before_start"):  # its loader raised before the first START (a user's broken file)
        LearnerSession(transport).fail()
        still_open = transport.close(wait=scenario["timeout"])  # ends once the server answered with STOP
        return {"failed_before_start": True, "still_waiting_for": list(still_open), "versions": versions}
    delay = None
    if scenario.get("delays") is not None:
        times = ComputeTimes(DelayDistribution("constant", value=1.0), speeds=scenario["delays"])
        delay = learner_delays(times, learner)
    if faults.get("crossing"):
        _deliver_a_cancelled_gradient(transport, learner)
    report = run_learner(transport, compute, delay, rejoin_wait=scenario.get("learner_rejoin_wait", 0.0))
    return {"report": dataclasses.asdict(report), "versions": versions}


def _deliver_a_cancelled_gradient(transport: Any, learner: int) -> None:
    """Hold the first START until a cancellation replaces it, then push a (poisoned) gradient for
    the cancelled one, as a learner whose push crossed the cancellation would; then push a real
    gradient of zeros for the new START and go on as a normal learner."""
    first = transport.recv_any(timeout=30)
    second = transport.recv_any(timeout=30)
    assert first.header.kind == second.header.kind == Kind.START, (first.header, second.header)
    out = transport.new_message()
    out.payload.fill_(1e6)
    transport.send(SERVER_RANK, out, Kind.PUSH, learner, version=first.header.version, ticket=first.header.ticket)
    out.payload.zero_()
    transport.send(SERVER_RANK, out, Kind.PUSH, learner, version=second.header.version, ticket=second.header.ticket)
    transport.release(first)
    transport.release(second)


def _transport(rank: int, scenario: dict[str, Any], address: Address | None, incarnation: int) -> Any:
    """The first world connects through the default group; a restarted process joins directly."""
    if incarnation == 0:
        return connect(DIM, torch.float64, timeout=scenario["timeout"], address=address)
    if rank == SERVER_RANK:
        return serve_learners(DIM, torch.float64, scenario["timeout"], scenario["learners"], address)
    return join(address, learner_index(rank), DIM, torch.float64, scenario["timeout"], wait=scenario["timeout"])


def _ask_to_join_and_die(address: Address, rank: int, timeout: float) -> None:
    """A learner that dies after the server accepted its join, before it builds its channel."""
    store = open_store(address, timeout)
    sequence = store.add("joins", 1)
    store.set(f"join/{sequence}", JoinRequest(learner_index(rank), DIM, "float64", pid=os.getpid()).encode())
    store.wait([f"join/{sequence}/reply"], datetime.timedelta(seconds=timeout))
    os.kill(os.getpid(), signal.SIGKILL)


def _rank_main(rank: int, world: int, port: int, scenario: dict[str, Any], out: Path,
               address: Address | None = None, incarnation: int = 0) -> None:
    torch.set_num_threads(1)
    result: dict[str, Any] = {"rank": rank, "incarnation": incarnation}
    began = time.monotonic()
    learner_faults = scenario.get("faults", {}).get(str(rank - 1), {})
    try:
        if incarnation == 0:
            dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                    timeout=datetime.timedelta(seconds=30))
            if rank != SERVER_RANK and learner_faults.get("kill_before_join"):
                os.kill(os.getpid(), signal.SIGKILL)
        a, y = least_squares()
        time.sleep(learner_faults.get("join_after_s", 0.0) if incarnation == 0 else 0.0)
        if rank != SERVER_RANK and learner_faults.get("die_after_reply") and incarnation == 0:
            _ask_to_join_and_die(address, rank, scenario["timeout"])
        transport = _transport(rank, scenario, address, incarnation)
        role = _server if rank == SERVER_RANK else _learner
        result.update(role(scenario, transport, a, y, out, incarnation), ok=True)
    except BaseException as error:  # recorded for the test, which checks the message
        result.update(ok=False, error_type=type(error).__name__, error=str(error), traceback=traceback.format_exc())
    result["seconds"] = time.monotonic() - began
    name = f"rank{rank}.json" if incarnation == 0 else f"rank{rank}.{incarnation}.json"
    (out / name).write_text(json.dumps(result))
    if dist.is_initialized():
        dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0 if result["ok"] else 1)  # skip interpreter teardown: a daemon thread may still wait in gloo


def launch(scenario: dict[str, Any], out: Path) -> None:
    """Fork the world, restart what the scenario restarts, wait for it until the scenario's
    deadline, kill what is left, write launcher.json."""
    world = scenario["learners"] + 1
    port = _free_port()
    restarts = {"learner": scenario.get("restart_learners", 0), "server": scenario.get("restart_server", 0)}
    address = Address("127.0.0.1", _free_port()) if restarts["learner"] or restarts["server"] or scenario.get("fixed_address") else None
    context = multiprocessing.get_context("fork")

    def process(rank: int, incarnation: int) -> Any:
        return context.Process(target=_rank_main, args=(rank, world, port, scenario, out, address, incarnation),
                               name=f"rank{rank}.{incarnation}")

    ranks = [process(r, 0) for r in range(world)]
    incarnations = [0] * world
    restarted: list[dict[str, Any]] = []
    began = time.monotonic()
    for rank_process in ranks:
        rank_process.start()
    deadline = began + scenario["deadline"]
    # A learner made to hang sleeps for minutes: once every other rank has ended, it is killed.
    hung = {int(learner) + 1 for learner, fault in scenario.get("faults", {}).items() if "hang_at_gradient" in fault}
    ended_at: dict[int, float] = {}
    exitcodes: list[list[int]] = [[] for _ in range(world)]  # of every incarnation that ended
    killed = []
    restart_at: dict[int, float] = {}  # a dead learner's restart, ``restart_learner_delay`` s after its death
    learner_delay = scenario.get("restart_learner_delay", 0.0)

    def restart(rank: int) -> None:
        incarnations[rank] += 1
        ranks[rank] = process(rank, incarnations[rank])
        ranks[rank].start()
        restarted.append({"rank": rank, "at_s": time.monotonic() - began})

    try:
        while len(ended_at) < world and time.monotonic() < deadline:
            for rank, rank_process in enumerate(ranks):
                if rank in restart_at:
                    if time.monotonic() >= restart_at[rank]:
                        del restart_at[rank]
                        restart(rank)
                    continue
                if rank in ended_at or rank_process.is_alive():
                    continue
                rank_process.join()
                exitcodes[rank].append(rank_process.exitcode)
                who = "server" if rank == SERVER_RANK else "learner"
                if rank_process.exitcode == -signal.SIGKILL and restarts[who] > 0:
                    restarts[who] -= 1
                    if who == "learner" and learner_delay > 0:
                        restart_at[rank] = time.monotonic() + learner_delay
                    else:
                        restart(rank)
                else:
                    ended_at[rank] = time.monotonic() - began
            if hung and set(range(world)) - hung <= set(ended_at):
                deadline = min(deadline, time.monotonic() + 0.5)
            time.sleep(0.02)
    finally:
        for rank, rank_process in enumerate(ranks):
            if rank_process.is_alive():
                rank_process.kill()
                killed.append(rank)
            rank_process.join(timeout=10)
            if rank not in ended_at and rank not in restart_at:  # one waiting for its restart was counted
                exitcodes[rank].append(rank_process.exitcode)
    summary = {
        "exitcodes": [codes[-1] for codes in exitcodes],
        "all_exitcodes": exitcodes,
        "restarted": restarted,
        "ended_at": {str(r): t for r, t in ended_at.items()},
        "killed": killed,
        "leftover": [child.pid for child in multiprocessing.active_children()],
    }
    (out / "launcher.json").write_text(json.dumps(summary))


def serve() -> None:
    """Run worlds on request: each stdin line is ``SCENARIO_PATH<TAB>OUT_DIR``; answers ``done``.
    The imports are paid once for every world of a test session."""
    for line in sys.stdin:
        scenario_path, out = line.rstrip("\n").split("\t")
        launch(json.loads(Path(scenario_path).read_text()), Path(out))
        print("done", flush=True)


def main() -> None:
    if sys.argv[1:] == ["--serve"]:
        serve()
    else:
        launch(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))


if __name__ == "__main__":
    main()
