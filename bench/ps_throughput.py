"""Benchmark: the parameter server (``lightning_echo.stragglers.processes``) on real processes, gloo on CPU.

1. Throughput: P = 4 learners, least squares with 20 features in plain torch at the ps core layer
   (``ParameterServer.run`` / ``run_learner``), injected exponential delays that dominate compute.
   Updates per second of k_batch_async (K = 2), async and k_sync (K = 2) against sync (K = P), each
   run for the same wall-clock time, the variants rotated in each round; the measured ratio
   (updates per second of the variant over sync's) next to Dutta et al.'s closed-form ratio (time
   per update of sync over that of the variant: Theorems 1-2, Lemmas 3-4), and measured over theory.
2. Training error (the least-squares objective above its optimum) against wall-clock time for the
   same runs.
3. Transport cost per update against model size, with P = 1, 2 and 4 learners sharing the server's
   link: async, no injected delay (each learner returns a fixed gradient at once), float32; updates
   per second and time per update at the server, bytes sent and received per update
   (``ServerReport``, checked to the byte against the message counts), and time per update at P
   over that at P = 1 (falling: the learners' exchanges overlap; flat: the server serialises the
   updates; growing: sharing costs more than serialising). Then the server's transport against the
   raw link: in each P = 1 world, both ranks also run ``measure_link`` (a plain gloo send/recv
   ping-pong of the same message, 48-byte header + payload, on a group built from a store of its
   own) just before and just after the server's run, as many round trips as the run has updates:
   one update moves one START out and one PUSH in, which is one round trip. Printed: the link's
   and the server's time per round trip and bytes per second (the server's over its updates after
   the first, the one-off start-up excluded as the link's warm-up is), and the server's bytes per
   second as a fraction of the link's (``link_fraction``; goal >= 0.8 at 1e6 elements and above).

Each world is P + 1 processes forked from this one (torch imported once), as in
``tests/scripts/ps_world.py``.

    python bench/ps_throughput.py [--rounds 4] [--seconds 10] [--mean-delay 0.1] [--sizes 1e3 1e5 1e6 1e7]
                                  [--transport-rounds 3] [--shared 1 2 4] [--buffer-learner] [--quick]
                                  [--only {throughput,transport}]
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing
import os
import socket
import statistics
import time
import traceback
from collections import defaultdict
from collections.abc import Callable
from typing import Any, Optional

import torch
import torch.distributed as dist

from lightning_echo.core.delays import ComputeTimes, DelayDistribution
from lightning_echo.core.runtimes import closed_form_time_per_update
from lightning_echo.core.schedule import variant_spec
from lightning_echo.stragglers.processes import (
    LearnerSession,
    ParameterServer,
    connect,
    learner_delays,
    learner_index,
    run_learner,
)
from lightning_echo.stragglers.processes.link import LinkMeasurement, link_fraction, measure_link, message_bytes
from lightning_echo.stragglers.processes.protocol import HEADER_BYTES

LEARNERS = 4
FEATURES, ROWS, BATCH, LR = 20, 1024, 16, 0.05
VARIANTS = (("sync", None), ("k_batch_async", 2), ("async", None), ("k_sync", 2))
ERROR_TIMES = (0.5, 1.0, 2.0, 4.0)
TIMEOUT = 60.0


# -- the problem ---------------------------------------------------------------------------------
def least_squares() -> tuple[torch.Tensor, torch.Tensor]:
    """The same data on every rank: ``A`` (ROWS x FEATURES) and ``y`` (float32)."""
    generator = torch.Generator().manual_seed(7)
    a = torch.randn(ROWS, FEATURES, generator=generator)
    truth = torch.randn(FEATURES, generator=generator)
    return a, a @ truth + 0.1 * torch.randn(ROWS, generator=generator)


def objective(a: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> float:
    """``0.5 * mean((A w - y)^2)``."""
    return float(0.5 * ((a @ w - y) ** 2).mean())


def optimum(a: torch.Tensor, y: torch.Tensor) -> float:
    w = torch.linalg.lstsq(a.double(), y.double().unsqueeze(1)).solution.squeeze(1)
    return objective(a.double(), y.double(), w)


# -- one world -----------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _rank(rank: int, world: int, port: int, role: Callable[[int], Any], results: Any) -> None:
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=TIMEOUT))
        results.put((rank, True, role(rank)))
    except BaseException:  # noqa: BLE001 - sent to the launcher, which raises it
        results.put((rank, False, traceback.format_exc()))
    if dist.is_initialized():
        dist.destroy_process_group()
    os._exit(0)  # skip interpreter teardown: a daemon receiver thread may still wait in gloo


def run_world(learners: int, role: Callable[[int], Any], deadline_s: float) -> dict[int, Any]:
    """Fork ``learners + 1`` ranks running ``role(rank)``; return each rank's result. Raises if a
    rank fails; kills whatever is left at the deadline."""
    world, port = learners + 1, _free_port()
    context = multiprocessing.get_context("fork")
    results = context.SimpleQueue()
    ranks = [context.Process(target=_rank, args=(r, world, port, role, results)) for r in range(world)]
    for process in ranks:
        process.start()
    out: dict[int, Any] = {}
    ends = time.monotonic() + deadline_s
    try:
        while len(out) < world and time.monotonic() < ends:
            if results.empty():
                time.sleep(0.01)
                continue
            rank, ok, value = results.get()
            if not ok:
                raise RuntimeError(f"rank {rank} failed:\n{value}")
            out[rank] = value
    finally:
        for process in ranks:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join()
    if len(out) < world:
        raise RuntimeError(f"the world did not finish within {deadline_s:g} s (results from ranks {sorted(out)})")
    return out


# -- 1 + 2. throughput and error against time ------------------------------------------------------
def training_role(variant: str, k: int | None, seconds: float, mean_delay: float, seed: int) -> Callable[[int], Any]:
    """Rank 0 serves ``variant`` for ``seconds`` and records the objective at every update; a
    learner computes mini-batch gradients after an exponential injected delay."""

    def role(rank: int) -> Any:
        a, y = least_squares()
        transport = connect(FEATURES, torch.float32, timeout=TIMEOUT)
        if rank == 0:
            server = ParameterServer(transport, variant_spec(variant, LEARNERS, k), torch.zeros(FEATURES))
            trace = [(0.0, objective(a, y, server.params))]

            def apply(gradient: torch.Tensor, staleness: list[int], stale: Any) -> None:
                server.params.add_(gradient, alpha=-LR)

            began = time.monotonic()
            report = server.run(apply, should_stop=lambda: time.monotonic() - began >= seconds,
                                on_update=lambda record: trace.append((record.time_s, objective(a, y, server.params))))
            return {"updates": report.updates, "wall_s": report.wall_s, "trace": trace,
                    "mean_staleness": report.mean_staleness, "cancelled": report.computations_cancelled}
        learner = learner_index(rank)
        batches = torch.Generator().manual_seed(seed * 101 + learner)

        def compute(params: torch.Tensor, version: int) -> torch.Tensor:
            rows = torch.randint(0, ROWS, (BATCH,), generator=batches)
            residual = a[rows] @ params - y[rows]
            return a[rows].T @ residual / BATCH

        times = ComputeTimes(DelayDistribution("exponential", scale=mean_delay), learners=LEARNERS)
        report = run_learner(transport, compute, learner_delays(times, learner, seed=seed))
        return {"compute_s": report.compute_s, "injected_s": report.injected_s, "pushed": report.pushed}

    return role


def name_of(variant: str, k: int | None) -> str:
    return variant if k is None else f"{variant} K={k}"


def throughput(rounds: int, seconds: float, mean_delay: float) -> None:
    delay = DelayDistribution("exponential", scale=mean_delay)
    print(f"== 1. updates per second, P = {LEARNERS} learners, exponential injected delays of mean {mean_delay:g} s, "
          f"least squares ({FEATURES} features, batch {BATCH}, lr {LR}), {seconds:g} s per run, {rounds} round(s), "
          f"variants rotated each round")
    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    learner_compute: list[float] = []
    for r in range(rounds):
        order = VARIANTS[r % len(VARIANTS):] + VARIANTS[:r % len(VARIANTS)]
        for variant, k in order:
            out = run_world(LEARNERS, training_role(variant, k, seconds, mean_delay, seed=r), deadline_s=seconds + 90)
            runs[name_of(variant, k)].append(out[0])
            learner_compute += [out[i]["compute_s"] / max(out[i]["pushed"], 1) for i in range(1, LEARNERS + 1)]
            print(f"  round {r}: {name_of(variant, k):16s} {out[0]['updates']:5d} updates in {out[0]['wall_s']:.2f} s"
                  f"  (load {os.getloadavg()[0]:.1f})", flush=True)

    def rate(name: str) -> float:  # pooled over the rounds
        return sum(run["updates"] for run in runs[name]) / sum(run["wall_s"] for run in runs[name])

    sync_name = name_of(*VARIANTS[0])
    sync_theory = closed_form_time_per_update(variant_spec("sync", LEARNERS), delay)
    print(f"\n{'variant':16s} {'upd/s':>7s} {'theory':>7s} {'per-round upd/s':>22s} {'staleness':>9s}"
          f" {'ratio vs sync':>13s} {'closed form':>11s} {'meas/theory':>11s} {'excess ms/upd':>13s}")
    for variant, k in VARIANTS:
        name = name_of(variant, k)
        theory = closed_form_time_per_update(variant_spec(variant, LEARNERS, k), delay)
        per_round = " ".join(f"{run['updates'] / run['wall_s']:.1f}" for run in runs[name])
        staleness = sum(run["mean_staleness"] for run in runs[name]) / len(runs[name])
        measured, closed = rate(name) / rate(sync_name), sync_theory / theory
        print(f"{name:16s} {rate(name):7.2f} {1 / theory:7.2f} {per_round:>22s} {staleness:9.2f}"
              f" {measured:13.2f} {closed:11.2f} {measured / closed:11.2f} {1e3 * (1 / rate(name) - theory):13.1f}")
    print(f"upd/s: updates / server wall time, pooled over the rounds; theory: 1 / closed-form time per update; "
          f"ratio vs sync: upd/s over sync's; closed form: E[T_sync] / E[T_variant]; excess: measured time per "
          f"update minus the closed form; "
          f"learner compute per gradient (excluding the injected delay): "
          f"{1e3 * sum(learner_compute) / len(learner_compute):.2f} ms on average")
    error_table(runs)


def error_table(runs: dict[str, list[dict[str, Any]]]) -> None:
    a, y = least_squares()
    best = optimum(a, y)
    print(f"\n== 2. training error against wall-clock (objective - optimum, optimum {best:.5f}; "
          f"median over the rounds; at t = 0: {runs[name_of(*VARIANTS[0])][0]['trace'][0][1] - best:.3f})")
    print(f"{'variant':16s} " + " ".join(f"{f't={t:g}s':>9s}" for t in ERROR_TIMES) + f" {'at end':>9s}")
    for name, rows in runs.items():
        cells = []
        for t in ERROR_TIMES:
            values = [at_time(run["trace"], t) - best for run in rows]
            cells.append(f"{sorted(values)[len(values) // 2]:9.4f}")
        ends = sorted(run["trace"][-1][1] - best for run in rows)
        print(f"{name:16s} " + " ".join(cells) + f" {ends[len(ends) // 2]:9.4f}")


def at_time(trace: list[tuple[float, float]], t: float) -> float:
    """The objective after the last update made by time ``t``."""
    value = trace[0][1]
    for when, objective_value in trace:
        if when > t:
            break
        value = objective_value
    return value


# -- 3. transport cost ------------------------------------------------------------------------------
SHARED_LEARNERS = (1, 2, 4)  # learners sharing the server's link in part 3 (--shared)


def transport_role(numel: int, updates: int, learners: int, link_port: Optional[int] = None,
                   buffer_learner: bool = False) -> Callable[[int], Any]:
    """Rank 0 serves async with ``learners`` learners for ``updates`` updates; a learner returns a
    fixed gradient at once, so the server and the channels are the bottleneck. With ``link_port``
    (P = 1), both ranks also time the raw link (``measure_link``, ``updates`` round trips of the
    same message) before and after the server's run, on a gloo group built from a TCPStore there.
    ``buffer_learner``: the learner writes its gradient into its PUSH buffer once and delivers it
    from there (``LearnerSession.deliver()``), instead of ``run_learner`` copying the returned
    gradient into that buffer at every PUSH (a memory pass of the payload on the round trip)."""

    def role(rank: int) -> Any:
        link_group = None if link_port is None else _link_group(rank, link_port)
        if link_group is not None:  # untimed: the forked processes' first work (copy-on-write pages, caches)
            measure_link(link_group, rank, numel, min_seconds=0.05)
        links = [] if link_group is None else [_link(link_group, rank, numel, updates)]
        transport = connect(numel, torch.float32, timeout=TIMEOUT)
        if rank == 0:
            server = ParameterServer(transport, variant_spec("async", learners), torch.zeros(numel))
            done = []  # time.monotonic() at each update's end (its STARTs sent)
            report = server.run(lambda g, s, p: server.params.add_(g, alpha=-1e-3), max_updates=updates,
                                on_update=lambda record: done.append(time.monotonic()))
            result = {"updates": report.updates, "wall_s": report.wall_s, "sent": report.bytes_sent,
                      "received": report.bytes_received, "pushes": sum(report.pushes_per_learner),
                      "unused": report.unused_at_stop, "clean": not report.lost and not report.no_goodbye,
                      "steady_s": (done[-1] - done[0]) / (len(done) - 1) if len(done) > 1 else None}
        elif buffer_learner:
            session = LearnerSession(transport)
            session.gradient_buffer.fill_(1e-3)
            try:
                while session.next_work() is not None:
                    session.deliver()
            finally:
                session.close()
            result = {}
        else:
            gradient = torch.full((numel,), 1e-3)
            run_learner(transport, lambda params, version: gradient)
            result = {}
        if link_group is not None:
            links.append(_link(link_group, rank, numel, updates))
        return result | {"links": links}

    return role


def _link_group(rank: int, port: int) -> Any:
    """A two-rank gloo group of its own, built from a store (not registered with torch.distributed)."""
    timeout = datetime.timedelta(seconds=TIMEOUT)
    store = dist.TCPStore("127.0.0.1", port, 2, rank == 0, timeout=timeout)
    return dist.ProcessGroupGloo(dist.PrefixStore("ps-link/", store), rank, 2, timeout)


def _link(group: Any, rank: int, numel: int, round_trips: int) -> LinkMeasurement:
    """``round_trips`` timed round trips of the server's message, whatever they take."""
    return measure_link(group, rank, numel, round_trips=round_trips, min_seconds=3600.0)


def bytes_accounted(numel: int, learners: int, run: dict[str, Any]) -> bool:
    """Whether every byte the server counted is one of: a START per update plus the P first ones,
    a PUSH per gradient received (the updates' plus those that came after the last update), a
    header-only STOP out and BYE in per learner (the design note's ``README.md``, "Bytes per update")."""
    payload, header = 4 * numel + HEADER_BYTES, HEADER_BYTES
    return (run["clean"] and run["pushes"] == run["updates"] + run["unused"]
            and run["sent"] == (run["updates"] + learners) * payload + learners * header
            and run["received"] == run["pushes"] * payload + learners * header)


def transport_cost(sizes: list[int], rounds: int, buffer_learner: bool = False,
                   shared: tuple[int, ...] = SHARED_LEARNERS) -> None:
    print(f"\n== 3. transport cost per update against model size and learners sharing the server's link: "
          f"P = {', '.join(map(str, shared))} learners, async, no injected delay, each learner returns a "
          f"fixed gradient at once{' from its PUSH buffer (no copy per PUSH)' if buffer_learner else ''}, float32 "
          f"(median of {rounds} world(s) per row, P rotated each round; the time "
          f"runs from the first START to the last update). This host has {os.cpu_count()} cores: P = "
          f"{max(shared)} is {max(shared) + 1} processes on them, so beyond P = "
          f"{max((os.cpu_count() or 1) - 1, 1)} the learners time-share cores with the server, which caps what "
          f"can be measured")
    link_rows: dict[int, list[dict[str, Any]]] = {}
    print(f"{'parameters':>10s} {'P':>2s} {'upd/s':>8s} {'ms/update':>10s} {'x P=1':>6s} {'sent/upd':>10s}"
          f" {'recv/upd':>10s} {f'2(4n+{HEADER_BYTES})':>10s} {'exact':>5s} {'MB/s':>7s} {'updates':>7s}")
    for numel in sizes:
        updates = max(20, min(1000, int(4e8 / (numel * 4 * 2))))
        runs: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for r in range(rounds):
            order = shared[r % len(shared):] + shared[:r % len(shared)]
            for learners in order:
                port = _free_port() if learners == 1 else None
                out = run_world(learners, transport_role(numel, updates, learners, port, buffer_learner),
                                deadline_s=180)
                runs[learners].append(out[0] | {"links_agree": out[0]["links"] == out[1]["links"]})
        if 1 in runs:
            link_rows[numel] = runs[1]
        median = {p: sorted(rows, key=lambda run: run["wall_s"] / run["updates"])[len(rows) // 2]
                  for p, rows in runs.items()}
        alone = median[shared[0]]["wall_s"] / median[shared[0]]["updates"]
        for learners in shared:
            run = median[learners]
            seconds = run["wall_s"] / run["updates"]
            exact = all(bytes_accounted(numel, learners, each) for each in runs[learners])
            print(f"{numel:10.0e} {learners:2d} {1 / seconds:8.1f} {seconds * 1e3:10.3f} {seconds / alone:6.2f}"
                  f" {run['sent'] / run['updates']:10.0f} {run['received'] / run['updates']:10.0f}"
                  f" {2 * (4 * numel + HEADER_BYTES):10d} {'yes' if exact else 'NO':>5s}"
                  f" {(run['sent'] + run['received']) / run['wall_s'] / 1e6:7.1f} {updates:7d}", flush=True)
    print(f"upd/s and ms/update: at the server, over the median world; x P=1: time per update over P = 1's at the same "
          f"size (below 1: the learners' exchanges overlap, one learner's round trip hidden behind another's; about 1: "
          f"the server serialises the updates, so each of P learners waits about P times longer for its exchange; "
          f"above 1: sharing the link and the cores costs more than serialising); sent/upd, recv/upd: "
          f"ServerReport.bytes_sent / bytes_received over the updates; 2(4n+{HEADER_BYTES}): one PUSH in and one START out per "
          f"update; exact: in every world "
          f"the server sent (updates + P) STARTs and P STOPs ({HEADER_BYTES} B each) and received one PUSH per "
          f"gradient (the updates' plus those that arrived after the last update) and P BYEs, to the byte, so the "
          f"bytes per update are 2(4n+{HEADER_BYTES}) plus those START/STOP/BYE overheads spread over the run; MB/s: bytes sent "
          f"and received by rank 0 over the server's wall time")
    if link_rows:
        link_table(link_rows)


def link_table(rows_by_size: dict[int, list[dict[str, Any]]]) -> None:
    """The server's transport (P = 1) against the raw link measured in the same worlds."""
    print(f"\n== 3b. the server's transport against the raw link: P = 1, async, float32; in each world both ranks "
          f"time measure_link (gloo send/recv ping-pong of the same {HEADER_BYTES}-byte header + payload, as many "
          f"round trips as the server's updates) just before and just after the server's run")
    print(f"{'parameters':>10s} {'msg bytes':>10s} {'link ms/rt':>10s} {'link MB/s':>9s} {'server ms/upd':>13s}"
          f" {'server MB/s':>11s} {'fraction':>8s}  {'per world':>20s} {'agree':>5s}")
    for numel, rows in rows_by_size.items():
        size = message_bytes(numel)
        fractions, link_s, server_s = [], [], []
        for run in rows:
            link_rt = statistics.mean(link.round_trip_s for link in run["links"])  # before and after, as one
            link = LinkMeasurement(size, 1, link_rt)
            fractions.append(link_fraction(2 * size / run["steady_s"], link))
            link_s.append(link_rt)
            server_s.append(run["steady_s"])
        link_rt, server_rt = statistics.median(link_s), statistics.median(server_s)
        agree = all(run["links_agree"] for run in rows)
        print(f"{numel:10.0e} {size:10d} {link_rt * 1e3:10.3f} {2 * size / link_rt / 1e6:9.1f} {server_rt * 1e3:13.3f}"
              f" {2 * size / server_rt / 1e6:11.1f} {statistics.median(fractions):8.2f}"
              f"  {' '.join(f'{f:.2f}' for f in fractions):>20s} {'yes' if agree else 'NO':>5s}", flush=True)
    print("link ms/rt, link MB/s: one round trip of measure_link and the bytes it moves both ways per second (median over "
          "the worlds of each world's mean of its two measurements); server ms/upd, server MB/s: the server's time "
          "per update over its updates after the first, and its START + PUSH bytes per second; fraction: "
          "link_fraction(server bytes/s, link), the median of the worlds' (each world's own pair in 'per world'); "
          "agree: both ranks returned the same link measurements in every world")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0, help="wall-clock seconds per training run")
    parser.add_argument("--mean-delay", type=float, default=0.1, help="mean injected delay (s)")
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e3, 1e5, 1e6, 1e7])
    parser.add_argument("--transport-rounds", type=int, default=3,
                        help="worlds per model size and P in part 3 (its medians are over these)")
    parser.add_argument("--shared", type=int, nargs="+", default=list(SHARED_LEARNERS),
                        help="part 3: the numbers of learners sharing the server's link (1 for the raw-link comparison)")
    parser.add_argument("--buffer-learner", action="store_true",
                        help="part 3: the learners deliver their fixed gradient from the PUSH buffer (no copy per PUSH)")
    parser.add_argument("--quick", action="store_true", help="1 round of 3 s, one world per model size and P")
    parser.add_argument("--only", choices=("throughput", "transport"),
                        help="run only parts 1-2 (throughput) or only part 3 (transport)")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds = 1, 3.0
    torch.set_num_threads(1)
    started = time.perf_counter()
    print(f"load average at the start: {os.getloadavg()[0]:.1f} ({os.cpu_count()} cores); torch {torch.__version__}")
    if args.only != "transport":
        throughput(args.rounds, args.seconds, args.mean_delay)
    if args.only != "throughput":
        transport_cost([int(s) for s in args.sizes], 1 if args.quick else args.transport_rounds, args.buffer_learner,
                       tuple(sorted(set(args.shared))))
    print(f"\n({time.perf_counter() - started:.0f} s in all; load average at the end: {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
