"""Benchmark: the parameter server (``lightning_echo.ps``) on real processes, gloo on CPU.

1. Throughput: P = 4 learners, least squares with 20 features in plain torch at the ps core layer
   (``ParameterServer.run`` / ``run_learner``), injected exponential delays that dominate compute.
   Updates per second of k_batch_async (K = 2), async and k_sync (K = 2) against sync (K = P), each
   run for the same wall-clock time, the variants rotated in each round; the measured ratio
   (updates per second of the variant over sync's) next to Dutta et al.'s closed-form ratio (time
   per update of sync over that of the variant: Theorems 1-2, Lemmas 3-4), and measured over theory.
2. Training error (the least-squares objective above its optimum) against wall-clock time for the
   same runs.
3. Transport cost per update against model size: one learner, async, no injected delay, float32;
   bytes moved per update (``ServerReport``) and wall time per exchange (one START out, one PUSH in).

Each world is P + 1 processes forked from this one (torch imported once), as in
``tests/scripts/ps_world.py``.

    python bench/ps_throughput.py [--rounds 4] [--seconds 10] [--mean-delay 0.1] [--quick]
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing
import os
import socket
import time
import traceback
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from lightning_echo.core.delays import ComputeTimes, DelayDistribution
from lightning_echo.core.runtimes import closed_form_time_per_update
from lightning_echo.core.schedule import variant_spec
from lightning_echo.ps import (
    ParameterServer,
    connect,
    learner_delays,
    learner_index,
    run_learner,
)

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
def transport_role(numel: int, updates: int) -> Callable[[int], Any]:
    def role(rank: int) -> Any:
        transport = connect(numel, torch.float32, timeout=TIMEOUT)
        if rank == 0:
            server = ParameterServer(transport, variant_spec("async", 1), torch.zeros(numel))
            report = server.run(lambda g, s, p: server.params.add_(g, alpha=-1e-3), max_updates=updates)
            return {"updates": report.updates, "wall_s": report.wall_s,
                    "bytes": report.bytes_sent + report.bytes_received}
        gradient = torch.full((numel,), 1e-3)
        run_learner(transport, lambda params, version: gradient)
        return None

    return role


def transport_cost(sizes: list[int], rounds: int) -> None:
    print("\n== 3. transport cost per update against model size: 1 learner, async, no injected delay, float32 "
          f"(median of {rounds} worlds; the time runs from the first START to the last update; the bytes include the START sent after the last update and the gradient it may bring back before STOP)")
    print(f"{'parameters':>10s} {'bytes/update':>13s} {'(2 x (4n + 40))':>16s} {'ms/update':>10s} {'MB/s':>8s} {'updates':>8s}")
    for numel in sizes:
        updates = max(20, min(1000, int(4e8 / (numel * 4 * 2))))
        per_update, moved = [], 0
        for _ in range(rounds):
            out = run_world(1, transport_role(numel, updates), deadline_s=120)[0]
            per_update.append(out["wall_s"] / out["updates"])
            moved = out["bytes"] / out["updates"]
        seconds = sorted(per_update)[len(per_update) // 2]
        print(f"{numel:10.0e} {moved:13.0f} {2 * (4 * numel + 40):16d} {seconds * 1e3:10.3f}"
              f" {moved / seconds / 1e6:8.1f} {updates:8d}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0, help="wall-clock seconds per training run")
    parser.add_argument("--mean-delay", type=float, default=0.1, help="mean injected delay (s)")
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e3, 1e5, 1e6])
    parser.add_argument("--quick", action="store_true", help="1 round of 3 s, one world per model size")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds = 1, 3.0
    torch.set_num_threads(1)
    started = time.perf_counter()
    print(f"load average at the start: {os.getloadavg()[0]:.1f} ({os.cpu_count()} cores); torch {torch.__version__}")
    throughput(args.rounds, args.seconds, args.mean_delay)
    transport_cost([int(s) for s in args.sizes], 1 if args.quick else 3)
    print(f"\n({time.perf_counter() - started:.0f} s in all; load average at the end: {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
