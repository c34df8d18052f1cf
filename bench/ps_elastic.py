"""Benchmark: updates per second with a learner lost and rejoined, against Dutta et al.'s closed
form for the learners alive at each moment (issue 23; goal: within 10%).

Core layer in plain torch, as ``bench/ps_throughput.py`` part 1: least squares with 20 features,
P = 4 learners, exponential injected delays (mean ``--mean-delay``, large next to the learners'
compute and the transport), the server hosting its store at a fixed address. Each world runs
async, k_async (K = 2) or sync with ``shrink_k=True`` in three phases of ``--seconds`` each:

1. all 4 learners, until the launcher SIGKILLs one (``--seconds`` after the server's start);
2. 3 alive, until the launcher starts a new process for the killed learner (``--seconds`` after
   the kill), which joins the running server (``transport.join``, no default process group);
3. 4 alive again, until the server stops (``--seconds`` after the join).

The phase boundaries are the server's own events (``ServerReport.events``: ``lost``, ``joined``),
its updates are ``UpdateRecord.time_s`` on the same clock. Updates per second of a phase are the
updates inside it, ``--transition`` seconds dropped after each boundary and before the next, over
the window's length; the closed form is ``closed_form_time_per_update`` for the learners alive in
the phase: P = 4, 3, 4; K = 1 for async, K = 2 for k_async (still 2 with 3 alive), K = alive for
sync. Worlds are repeated over ``--rounds`` (the delay seeds and the killed learner change each
round, the variants rotate); the table pools every round's windows (updates over seconds) and
prints each round's ratio beside. Diagnostics: the gradients per update and the learners used in
each phase, how long the server took to notice the kill, what the join cost (the new process's
``join()`` call, and from its start to the server's ``joined`` event and to the first update using
its gradient), and the excess time per update over the closed form.

Each world is P + 1 processes forked from this one (torch imported once), the rejoining learner a
further fork of it, as in ``tests/scripts/ps_world.py``.

    python bench/ps_elastic.py [--rounds 6] [--seconds 10] [--mean-delay 0.1] [--transition 0.5]
                               [--quick] [--out bench/results/ps_elastic.txt]
"""

from __future__ import annotations

import argparse
import datetime
import io
import logging
import multiprocessing
import os
import signal
import socket
import struct
import sys
import tempfile
import time
import traceback
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist

from lightning_echo.core.delays import ComputeTimes, DelayDistribution
from lightning_echo.core.runtimes import closed_form_time_per_update
from lightning_echo.core.schedule import variant_spec
from lightning_echo.stragglers.processes import ParameterServer, connect, learner_delays, learner_index, run_learner
from lightning_echo.stragglers.processes.rendezvous import Address
from lightning_echo.stragglers.processes.transport import join

LEARNERS = 4
FEATURES, ROWS, BATCH, LR = 20, 1024, 16, 0.05
VARIANTS = (("async", None), ("k_async", 2), ("sync", None))
PHASES = ("4 alive", "3 alive", "4 again")
TIMEOUT = 30.0
REJOIN_SEED = 1000  # the rejoined process draws from a stream of its own (seed + this)


# -- the problem ---------------------------------------------------------------------------------
def least_squares() -> tuple[torch.Tensor, torch.Tensor]:
    """The same data on every rank: ``A`` (ROWS x FEATURES) and ``y`` (float32)."""
    generator = torch.Generator().manual_seed(7)
    a = torch.randn(ROWS, FEATURES, generator=generator)
    truth = torch.randn(FEATURES, generator=generator)
    return a, a @ truth + 0.1 * torch.randn(ROWS, generator=generator)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- the ranks -------------------------------------------------------------------------------------
def _server(transport: Any, variant: str, k: Optional[int], seconds: float, t0: Any) -> dict[str, Any]:
    server = ParameterServer(transport, variant_spec(variant, LEARNERS, k), torch.zeros(FEATURES),
                             timeout=TIMEOUT, shrink_k=True)
    records: list[tuple[float, int, tuple[int, ...]]] = []

    def apply(gradient: torch.Tensor, staleness: list[int], stale: Any) -> None:
        server.params.add_(gradient, alpha=-LR)

    def on_update(record: Any) -> None:
        if not records:  # the server's clock origin, on the shared monotonic clock, for the launcher
            t0.value = time.monotonic() - record.time_s
        records.append((record.time_s, record.version, record.learners))

    report = server.run(apply, should_stop=lambda: bool(records) and records[-1][0] >= 3 * seconds, on_update=on_update)
    return {"records": records, "events": report.events, "updates": report.updates, "wall_s": report.wall_s,
            "losses": report.losses, "joins": report.joins, "lost": dict(report.lost)}


def _compute(learner: int, seed: int) -> Callable[[torch.Tensor, int], torch.Tensor]:
    a, y = least_squares()
    batches = torch.Generator().manual_seed(seed * 101 + learner)

    def compute(params: torch.Tensor, version: int) -> torch.Tensor:
        rows = torch.randint(0, ROWS, (BATCH,), generator=batches)
        residual = a[rows] @ params - y[rows]
        return a[rows].T @ residual / BATCH

    return compute


def _learner(transport: Any, learner: int, mean_delay: float, seed: int, draws_file: Path) -> dict[str, Any]:
    """Serve the server; every injected delay drawn is appended to ``draws_file`` (time, seconds) by one
    unbuffered write, so the draws of a process killed later are there too."""
    times = ComputeTimes(DelayDistribution("exponential", scale=mean_delay), learners=LEARNERS)
    draw = learner_delays(times, learner, seed=seed)
    fd = os.open(draws_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND)

    def delay() -> float:
        value = draw()
        os.write(fd, struct.pack("dd", time.monotonic(), value))
        return value

    report = run_learner(transport, _compute(learner, seed), delay)
    os.close(fd)
    return {"pushed": report.pushed, "compute_s": report.compute_s, "stopped": report.stopped}


def read_draws(folder: Path, t0: float) -> list[tuple[float, float]]:
    """Every learner process's draws: (the server's clock, seconds drawn)."""
    out = []
    for file in folder.glob("draws.*"):
        raw = file.read_bytes()
        out += [(t - t0, value) for t, value in struct.iter_unpack("dd", raw[:len(raw) - len(raw) % 16])]
    return sorted(out)


def _first_world_rank(rank: int, world: int, port: int, address: Address, variant: str, k: Optional[int],
                      seconds: float, mean_delay: float, seed: int, t0: Any, results: Any, folder: Path) -> None:
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=TIMEOUT))
        transport = connect(FEATURES, torch.float32, timeout=TIMEOUT, address=address)
        if rank == 0:
            value = _server(transport, variant, k, seconds, t0)
        else:
            value = _learner(transport, learner_index(rank), mean_delay, seed, folder / f"draws.{rank}")
        results.put((rank, True, value))
    except BaseException:  # noqa: BLE001 - sent to the launcher, which raises it
        results.put((rank, False, traceback.format_exc()))
    if dist.is_initialized():
        dist.destroy_process_group()
    os._exit(0)  # skip interpreter teardown: a daemon receiver thread may still wait in gloo


def _rejoining_rank(learner: int, address: Address, mean_delay: float, seed: int, results: Any, folder: Path) -> None:
    """A process started after the first world: no default process group, it joins the server's store."""
    torch.set_num_threads(1)
    try:
        began = time.monotonic()
        transport = join(address, learner, FEATURES, torch.float32, TIMEOUT)
        joined = time.monotonic()
        value = _learner(transport, learner, mean_delay, seed + REJOIN_SEED, folder / "draws.rejoined")
        results.put(("rejoined", True, value | {"began": began, "join_s": joined - began}))
    except BaseException:  # noqa: BLE001
        results.put(("rejoined", False, traceback.format_exc()))
    os._exit(0)


# -- one world ----------------------------------------------------------------------------------------
def run_world(variant: str, k: Optional[int], seconds: float, mean_delay: float, seed: int, victim: int) -> dict[str, Any]:
    """Fork the server and P learners; SIGKILL learner ``victim`` ``seconds`` after the server's
    start, start a new process for it ``seconds`` later; collect every rank's result."""
    with tempfile.TemporaryDirectory(prefix="ps_elastic_") as folder:
        return _run_world(variant, k, seconds, mean_delay, seed, victim, Path(folder))


def _run_world(variant: str, k: Optional[int], seconds: float, mean_delay: float, seed: int, victim: int,
               folder: Path) -> dict[str, Any]:
    world, port, address = LEARNERS + 1, _free_port(), Address("127.0.0.1", _free_port())
    context = multiprocessing.get_context("fork")
    results, t0 = context.SimpleQueue(), context.Value("d", 0.0)
    ranks = [context.Process(target=_first_world_rank,
                             args=(r, world, port, address, variant, k, seconds, mean_delay, seed, t0, results, folder))
             for r in range(world)]
    for process in ranks:
        process.start()
    rejoined: Optional[Any] = None
    killed_at = started_at = None
    out: dict[Any, Any] = {}
    expected = {0, *range(1, world), "rejoined"} - {victim + 1}
    ends = time.monotonic() + 3 * seconds + 120
    try:
        while not expected <= set(out) and time.monotonic() < ends:
            now = time.monotonic()
            if t0.value and killed_at is None and now >= t0.value + seconds:
                os.kill(ranks[victim + 1].pid, signal.SIGKILL)
                killed_at = time.monotonic()
            if killed_at is not None and rejoined is None and now >= t0.value + 2 * seconds:
                ranks[victim + 1].join()
                rejoined = context.Process(target=_rejoining_rank, args=(victim, address, mean_delay, seed,
                                                                                 results, folder))
                started_at = time.monotonic()
                rejoined.start()
            if results.empty():
                time.sleep(0.005)
                continue
            rank, ok, value = results.get()
            if not ok:
                raise RuntimeError(f"rank {rank} failed:\n{value}")
            out[rank] = value
    finally:
        for process in ranks + ([rejoined] if rejoined is not None else []):
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join()
    if not expected <= set(out):
        raise RuntimeError(f"the world did not finish in time (results from {sorted(map(str, out))})")
    server = out[0]
    server.update(t0=t0.value, killed_s=killed_at - t0.value, started_s=started_at - t0.value,
                  victim=victim, rejoined=out["rejoined"], draws=read_draws(folder, t0.value))
    server["rejoined"]["began_s"] = server["rejoined"].pop("began") - t0.value
    return server


# -- phases ----------------------------------------------------------------------------------------------
def closed_form_rate(variant: str, k: Optional[int], alive: int, delay: DelayDistribution) -> float:
    """Updates per second in closed form with ``alive`` learners (K as ``shrink_k`` sets it)."""
    k_alive = None if k is None else min(k, alive)
    return 1.0 / closed_form_time_per_update(variant_spec(variant, alive, k_alive), delay)


def phases(run: dict[str, Any], transition: float) -> list[dict[str, Any]]:
    """The three phases of a world: window, updates inside it, gradients per update, learners used."""
    events = run["events"]
    lost = next(e for e in events if e["event"] == "lost")
    joined = next(e for e in events if e["event"] == "joined")
    end = run["records"][-1][0]
    bounds = [(0.0, lost["time_s"]), (lost["time_s"], joined["time_s"]), (joined["time_s"], end)]
    out = []
    for alive, (start, stop) in zip((LEARNERS, LEARNERS - 1, LEARNERS), bounds):
        a, b = start + transition, stop - transition
        inside = [r for r in run["records"] if a < r[0] <= b]
        drawn = [value for t, value in run["draws"] if a < t <= b]
        out.append({"alive": alive, "seconds": max(b - a, 0.0), "updates": len(inside), "drawn": drawn,
                    "k": sorted({len(r[2]) for r in inside}), "learners": sorted({l for r in inside for l in r[2]})})
    return out


def join_costs(run: dict[str, Any]) -> dict[str, float]:
    """Seconds: the kill to the server's ``lost`` event; the new process's start to its ``join()``
    returning, to the server's ``joined`` event, and to the first update using its gradient."""
    events = run["events"]
    lost = next(e for e in events if e["event"] == "lost")
    joined = next(e for e in events if e["event"] == "joined")
    victim = run["victim"]
    first_use = next((r[0] for r in run["records"] if r[0] >= joined["time_s"] and victim in r[2]), float("nan"))
    return {"notice_s": lost["time_s"] - run["killed_s"], "join_call_s": run["rejoined"]["join_s"],
            "to_joined_s": joined["time_s"] - run["started_s"], "to_first_use_s": first_use - run["started_s"],
            "first_use_after_joined_s": first_use - joined["time_s"]}


def name_of(variant: str, k: Optional[int]) -> str:
    return variant if k is None else f"{variant} K={k}"


def bench(rounds: int, seconds: float, mean_delay: float, transition: float) -> None:
    delay = DelayDistribution("exponential", scale=mean_delay)
    print(f"== updates per second with learner v lost and rejoined: P = {LEARNERS}, shrink_k, exponential injected "
          f"delays of mean {mean_delay:g} s, least squares ({FEATURES} features, batch {BATCH}), phases of {seconds:g} s "
          f"(4 alive, 3 alive, 4 again), {transition:g} s dropped after and before each boundary, {rounds} round(s), "
          f"variants rotated, killed learner v = round mod {LEARNERS}")
    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in range(rounds):
        order = VARIANTS[r % len(VARIANTS):] + VARIANTS[:r % len(VARIANTS)]
        for variant, k in order:
            run = run_world(variant, k, seconds, mean_delay, seed=r, victim=r % LEARNERS)
            run["phases"] = phases(run, transition)
            runs[name_of(variant, k)].append(run)
            rates = " ".join(f"{p['updates'] / p['seconds']:6.2f}" for p in run["phases"])
            print(f"  round {r}: {name_of(variant, k):11s} v={run['victim']} {run['updates']:5d} updates in "
                  f"{run['wall_s']:5.1f} s; lost at {run['killed_s']:5.2f} s, joined at "
                  f"{next(e['time_s'] for e in run['events'] if e['event'] == 'joined'):5.2f} s; upd/s per phase {rates}"
                  f"  (load {os.getloadavg()[0]:.1f})", flush=True)

    print(f"\n{'variant':11s} {'phase':8s} {'P':>2s} {'K':>5s} {'updates':>7s} {'seconds':>7s} {'upd/s':>7s}"
          f" {'closed':>7s} {'ratio':>6s} {'excess ms':>9s} {'per-round ratio':>23s} {'drawn ms':>8s} {'at drawn':>8s}"
          f" {'learners used':>13s}")
    for variant, k in VARIANTS:
        rows = runs[name_of(variant, k)]
        for i, phase in enumerate(PHASES):
            windows = [run["phases"][i] for run in rows]
            alive = windows[0]["alive"]
            closed = closed_form_rate(variant, k, alive, delay)
            updates, secs = sum(w["updates"] for w in windows), sum(w["seconds"] for w in windows)
            rate = updates / secs
            ks = sorted({x for w in windows for x in w["k"]})
            used = "all 4" if all(len(w["learners"]) == LEARNERS for w in windows) else (
                "3, not v" if all(run["victim"] not in w["learners"] and len(w["learners"]) == LEARNERS - 1
                                  for run, w in zip(rows, windows)) else "MIXED")
            per_round = " ".join(f"{w['updates'] / w['seconds'] / closed:.2f}" for w in windows)
            drawn = [value for w in windows for value in w["drawn"]]
            scale = sum(drawn) / len(drawn) / mean_delay  # the closed forms scale with an exponential's mean
            print(f"{name_of(variant, k):11s} {phase:8s} {alive:2d} {','.join(map(str, ks)):>5s} {updates:7d}"
                  f" {secs:7.1f} {rate:7.2f} {closed:7.2f} {rate / closed:6.3f} {1e3 * (1 / rate - 1 / closed):9.1f}"
                  f" {per_round:>23s} {1e3 * scale * mean_delay:8.1f} {rate / closed * scale:8.3f} {used:>13s}")
    print("P: learners alive; K: gradients per update seen in the phase's updates; upd/s: the phase's updates over its "
          "seconds, pooled over the rounds; closed: 1 / closed_form_time_per_update for the learners alive (async: "
          "E[X]/P; k_async: E[X_{2:P}]; sync: E[X_{P:P}]); ratio: upd/s over closed; excess: measured time per update "
          "minus the closed form; drawn: the mean of the injected delays the learners drew in the phase (every "
          "computation begun in it); at drawn: ratio against the closed form for exponential delays of that mean "
          "(ratio x drawn / mean delay), which takes the sampling of the delays out; learners used: every learner's "
          "gradients in the phase ('3, not v': all but the killed one)")

    print(f"\n== the loss and the join (seconds, mean over the {rounds} round(s) [min, max]; the server's clock)")
    keys = ("notice_s", "join_call_s", "to_joined_s", "first_use_after_joined_s", "to_first_use_s")
    print(f"{'variant':11s} " + " ".join(f"{key:>26s}" for key in keys))
    for name, rows in runs.items():
        costs = [join_costs(run) for run in rows]
        cells = []
        for key in keys:
            values = [c[key] for c in costs]
            cells.append(f"{sum(values) / len(values):8.3f} [{min(values):.3f}, {max(values):.3f}]")
        print(f"{name:11s} " + " ".join(f"{cell:>26s}" for cell in cells))
    print("notice: the launcher's SIGKILL to the server's 'lost' event; join_call: the new process's join() (store, "
          "request, the server's answer, its gloo channel); to_joined: the new process's start to the server's "
          "'joined' event (the server sends its START then); first_use_after_joined: from 'joined' to the first "
          "update that used its gradient (its first computation: about one delay, plus the update's wait); "
          "to_first_use: the process's start to that update")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per phase")
    parser.add_argument("--mean-delay", type=float, default=0.1, help="mean injected delay (s)")
    parser.add_argument("--transition", type=float, default=0.5, help="seconds dropped after and before each boundary")
    parser.add_argument("--quick", action="store_true", help="1 round of 3 s phases")
    parser.add_argument("--out", type=Path, help="also write the output there")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds = 1, 3.0
    torch.set_num_threads(1)
    logging.getLogger("lightning_echo.stragglers.processes").setLevel(logging.ERROR)  # the events say it
    tee = _Tee(args.out)
    started = time.perf_counter()
    print(f"load average at the start: {os.getloadavg()[0]:.1f} ({os.cpu_count()} cores); torch {torch.__version__}; "
          f"{datetime.date.today()}")
    bench(args.rounds, args.seconds, args.mean_delay, args.transition)
    print(f"\n({time.perf_counter() - started:.0f} s in all; load average at the end: {os.getloadavg()[0]:.1f})")
    tee.close()


class _Tee(io.TextIOBase):
    """stdout, and a copy in a file."""

    def __init__(self, path: Optional[Path]) -> None:
        self.stdout = sys.stdout
        self.file = None if path is None else path.open("w")
        sys.stdout = self

    def write(self, text: str) -> int:
        self.stdout.write(text)
        if self.file is not None:
            self.file.write(text)
        return len(text)

    def flush(self) -> None:
        self.stdout.flush()
        if self.file is not None:
            self.file.flush()

    def close(self) -> None:
        sys.stdout = self.stdout
        if self.file is not None:
            self.file.close()


if __name__ == "__main__":
    main()
