"""Benchmark: real-time overhead and snapshot memory of ``SimulatedLearnersStrategy``.

1. Time per consumed gradient under the strategy (P = 8 learners, exponential compute times;
   ``async`` and ``k_sync`` with K = 4) against a plain Lightning step (default strategy) on the
   same MLP and batch size. Each round runs the three configurations back to back (rotating which
   goes first); the ratio is the median of the per-round ratios
   ``(strategy time / gradients consumed) / (plain time / steps)``, on process CPU time and on
   wall-clock time. Then, where the time goes: the parts timed with CPU-time wrappers in
   separate instrumented runs, and the inline parts of the strategy's ``training_step``
   (parameter swaps, gradient accumulation) and the schedule simulation timed alone.
2. Snapshot memory: for several variants and P in {2, 4, 8, 16}, ``strategy.store.peak`` (parameter
   copies held at once) against the distinct versions still in flight, the bytes it means, the
   bytes the store's tensors actually held, and the process RSS above a run that keeps no
   snapshot (``k_sync``); plus the store's peak over a long schedule-only run.

    python bench/stale_overhead.py [--rounds 9] [--gradients 240] [--memory-updates 64]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import os
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from functools import partial
from typing import Any

import pytorch_lightning as pl
import torch
from common import CpuClock, median, quiet
from pytorch_lightning.strategies import Strategy
from torch.utils.data import DataLoader

from lightning_echo.core.schedule import ScheduleSimulation, variant_spec
from lightning_echo.data import SyntheticDataModule
from lightning_echo.models import MLP
from lightning_echo.stragglers import SimulatedLearnersStrategy
from lightning_echo.stragglers.delay_config import compute_times_from_config
from lightning_echo.stragglers.simulated.loader import SnapshotStore
from lightning_echo.stragglers.optim import StalenessAwareOptimizer

BATCH = 64
LEARNERS = 8
DELAY = {"distribution": "exponential", "scale": 1.0}
# name -> (variant, K); None: the default strategy (one learner, no simulation)
CONFIGS: dict[str, tuple[str, int] | None] = {"plain": None, "async": ("async", 1), "k_sync": ("k_sync", 4)}


class WallClock(pl.Callback):
    """Wall-clock and this thread's CPU seconds between the start and the end of the training loop."""

    def __init__(self) -> None:
        self.wall_s = self.thread_s = 0.0
        self._start = (0.0, 0.0)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = (time.perf_counter(), time.thread_time())

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.wall_s = time.perf_counter() - self._start[0]
        self.thread_s = time.thread_time() - self._start[1]


def make_strategy(variant: str, learners: int, k: int, **settings: Any) -> SimulatedLearnersStrategy:
    return SimulatedLearnersStrategy(variant, learners=learners, k=k, delay=DELAY, seed=0, **settings)


def fit(model: pl.LightningModule, loader: DataLoader, max_steps: int,
        strategy: SimulatedLearnersStrategy | None = None, callbacks: list[pl.Callback] | None = None) -> pl.Trainer:
    """Fit for ``max_steps`` optimizer steps without validation, logging or checkpoints."""
    extra = {} if strategy is None else {"strategy": strategy}
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=max_steps, max_epochs=-1, callbacks=callbacks or [], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, num_sanity_val_steps=0, **extra,
    )
    trainer.fit(model, train_dataloaders=loader)
    return trainer


def timed(config: str, make_model, data: SyntheticDataModule, gradients: int,
          callbacks: list[pl.Callback] | None = None) -> tuple[float, float, int, float]:
    """(wall s, process cpu s, gradients consumed, main thread's cpu s) of one fit of ``config``."""
    torch.manual_seed(0)
    loader = DataLoader(data.train_dataset, batch_size=BATCH, shuffle=True)
    wall, cpu = WallClock(), CpuClock()
    setting = CONFIGS[config]
    strategy = None if setting is None else make_strategy(setting[0], LEARNERS, setting[1])
    k = 1 if setting is None else setting[1]
    trainer = fit(make_model(), loader, gradients // k, strategy, [wall, cpu] + (callbacks or []))
    return wall.wall_s, cpu.cpu_s, trainer.global_step * k, wall.thread_s


def quartiles(values: list[float]) -> str:
    ordered = sorted(values)
    return f"{ordered[len(ordered) // 4]:.2f}..{ordered[(3 * len(ordered)) // 4]:.2f}"


# -- 1. overhead -------------------------------------------------------------------------------------
def overhead(models: dict[str, Any], data: SyntheticDataModule, rounds: int, gradients: int) -> None:
    print(f"== 1. time per consumed gradient, P={LEARNERS}, exponential compute times, batch {BATCH} "
          f"({rounds} rounds x {gradients} gradients per configuration)")
    print(f"{'model':24s} {'clock':5s} {'plain ms/step':>13s} {'async ms/grad':>13s} {'k_sync K=4':>10s}"
          f" {'async ratio (quartiles)':>24s} {'k_sync ratio (quartiles)':>25s}")
    names = list(CONFIGS)
    for model_name, make_model in models.items():
        for config in names:  # warm-up
            timed(config, make_model, data, 40)
        per_grad: dict[str, dict[str, list[float]]] = {c: {"wall": [], "cpu": []} for c in names}
        ratios: dict[str, dict[str, list[float]]] = {c: {"wall": [], "cpu": []} for c in names[1:]}
        for round_index in range(rounds):
            order = names[round_index % len(names):] + names[:round_index % len(names)]
            for config in order:
                wall_s, cpu_s, used, _ = timed(config, make_model, data, gradients)
                per_grad[config]["wall"].append(wall_s / used)
                per_grad[config]["cpu"].append(cpu_s / used)
            for config in names[1:]:
                for clock in ("wall", "cpu"):
                    ratios[config][clock].append(per_grad[config][clock][-1] / per_grad["plain"][clock][-1])
        for clock in ("cpu", "wall"):
            cells = [f"{median(per_grad[c][clock]) * 1e3:13.3f}" for c in names[:2]] + [f"{median(per_grad['k_sync'][clock]) * 1e3:10.3f}"]
            print(f"{model_name:24s} {clock:5s} {' '.join(cells)}"
                  f" {median(ratios['async'][clock]):10.3f} ({quartiles(ratios['async'][clock]):>11s})"
                  f" {median(ratios['k_sync'][clock]):11.3f} ({quartiles(ratios['k_sync'][clock]):>11s})")
    print("(ms per consumed gradient, medians over rounds; ratio = median of per-round ratios "
          "(strategy time / gradients) / (plain time / steps); goal <= 1.2)")


# -- 1b. where the time goes ----------------------------------------------------------------------
class Timers:
    """Adds the CPU time of this thread (``time.thread_time``: descheduled time on a shared host
    does not count) spent in calls to patched methods, per label."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    @contextlib.contextmanager
    def patch(self, owner: Any, attribute: str, label: str) -> Iterator[None]:
        had_own = attribute in vars(owner)
        original = getattr(owner, attribute)
        seconds, calls = self.seconds, self.calls

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.thread_time()
            try:
                return original(*args, **kwargs)
            finally:
                seconds[label] += time.thread_time() - started
                calls[label] += 1

        setattr(owner, attribute, wrapper)
        try:
            yield
        finally:
            if had_own:
                setattr(owner, attribute, original)
            else:
                delattr(owner, attribute)


class PatchUserStep(pl.Callback):
    """Times the user's ``training_step`` (forward, loss, ``self.log``) by wrapping it on the instance."""

    def __init__(self, timers: Timers) -> None:
        self.timers = timers
        self._stack = contextlib.ExitStack()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stack.enter_context(self.timers.patch(pl_module, "training_step", "user"))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stack.close()


def instrumented(config: str, make_model, data: SyntheticDataModule, gradients: int) -> dict[str, float]:
    """Microseconds per consumed gradient of each part, from one instrumented fit."""
    timers = Timers()
    simulated = CONFIGS[config] is not None
    patches = [(Strategy, "backward", "backward")]
    if simulated:
        patches += [
            (SimulatedLearnersStrategy, "training_step", "strategy_step"),
            (SimulatedLearnersStrategy, "batch_to_device", "to_device"),
            (SimulatedLearnersStrategy, "_after_update", "after_update"),
            (ScheduleSimulation, "next_update", "schedule"),
            (SnapshotStore, "keep", "keep"),
            (SnapshotStore, "release_all_but", "release"),
            (SnapshotStore, "get", "get"),
            (StalenessAwareOptimizer, "tell", "tell"),
        ]
    else:
        patches += [(Strategy, "training_step", "strategy_step"), (Strategy, "batch_to_device", "to_device")]
    with contextlib.ExitStack() as stack:
        for owner, attribute, label in patches:
            stack.enter_context(timers.patch(owner, attribute, label))
        _, _, used, thread_s = timed(config, make_model, data, gradients, [PatchUserStep(timers)])
    us = {label: seconds / used * 1e6 for label, seconds in timers.seconds.items()}
    us["total"] = thread_s / used * 1e6
    # In the strategy's training_step, what is not forward / backward / store / tell is inline:
    # parameter swaps, gradient accumulation and averaging, the loss stack.
    us["inline"] = us.get("strategy_step", 0.0) - sum(us.get(x, 0.0) for x in ("user", "backward", "keep", "get", "tell"))
    if not simulated:  # Lightning's own wrapper around the user's step
        us["inline"] = us.get("strategy_step", 0.0) - us.get("user", 0.0)
    else:  # _after_update releases the snapshots: counted under release only
        us["after_update"] = us.get("after_update", 0.0) - us.get("release", 0.0)
    return us


BREAKDOWN_ROWS = [
    ("total", "total (training loop, CPU time of the thread)"),
    ("user", "user training_step (forward, loss, log)"),
    ("backward", "autograd backward"),
    ("inline", "strategy training_step inline: swaps, grad sums, averaging"),
    ("keep", "snapshot copies (store.keep)"),
    ("release", "snapshot release (store.release_all_but)"),
    ("get", "snapshot lookups (store.get)"),
    ("schedule", "schedule simulation (next_update)"),
    ("tell", "staleness tell (optimizer.tell)"),
    ("after_update", "after-update bookkeeping (totals, metrics)"),
    ("to_device", "batch_to_device"),
    ("rest", "rest: Lightning loop, data loading, optimizer step, hooks"),
]


def breakdown(models: dict[str, Any], data: SyntheticDataModule, gradients: int, rounds: int = 3) -> None:
    print(f"\n== 1b. where the time goes: us per consumed gradient (medians of {rounds} instrumented runs per configuration)")
    names = list(CONFIGS)
    for model_name, make_model in models.items():
        runs: dict[str, list[dict[str, float]]] = {c: [] for c in names}
        for round_index in range(rounds):
            order = names[round_index % len(names):] + names[:round_index % len(names)]
            for config in order:
                us = instrumented(config, make_model, data, gradients)
                us["rest"] = us["total"] - sum(us.get(key, 0.0) for key, _ in BREAKDOWN_ROWS[1:-1])
                runs[config].append(us)
        print(f"{model_name:60s} {'plain':>8s} {'async':>8s} {'k_sync':>8s}")
        for key, label in BREAKDOWN_ROWS:
            cells = []
            for config in names:
                values = [run.get(key) for run in runs[config] if key in run]
                cells.append(f"{median(values):8.1f}" if values else f"{'-':>8s}")
            print(f"  {label:58s} {' '.join(cells)}")
        parts = inline_parts(make_model(), data, LEARNERS)
        print(f"  timed alone on this model: parameter swap in+out {parts['swap']:.1f} us per stale gradient;"
              f" gradient sum {parts['first']:.1f} us (first: clone) + {parts['next']:.1f} us (each further: add_);"
              f" averaging (s / K) {parts['divide']:.1f} us; one snapshot copy {parts['snapshot']:.1f} us;"
              f" forward + backward at the live parameters {parts['fwd_bwd_live']:.0f} us, at one of {LEARNERS}"
              f" stale copies {parts['fwd_bwd_stale']:.0f} us")
    schedule_alone()


def inline_parts(model: MLP, data: SyntheticDataModule, snapshots: int, repeats: int = 1000) -> dict[str, float]:
    """The strategy's inline loops timed alone on ``model``'s parameters (us of thread CPU time), and
    one forward + backward at a stale parameter copy (a different one of ``snapshots`` each time)
    against one at the live parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    store = [[p.detach().clone() for p in params] for _ in range(snapshots)]
    grads = [torch.randn_like(p) for p in params]
    live = [p.data for p in params]
    x, y = data.train_dataset.tensors[0][:BATCH], data.train_dataset.tensors[1][:BATCH]

    def per_call(body, calls: int = repeats) -> float:
        times = []
        for _ in range(5):
            started = time.thread_time()
            for i in range(calls // 5):
                body(i)
            times.append((time.thread_time() - started) / (calls // 5) * 1e6)
        return median(times)

    def swap(i: int) -> None:
        for p, value in zip(params, store[i % snapshots]):
            p.data = value
        for p, value in zip(params, live):
            p.data = value

    sums: list[torch.Tensor | None] = [None] * len(params)

    def first(i: int) -> None:
        for j, g in enumerate(grads):
            sums[j] = g.detach().clone()

    def add(i: int) -> None:
        for j, g in enumerate(grads):
            sums[j].add_(g)  # type: ignore[union-attr]

    def divide(i: int) -> None:
        [s / 4 for s in sums]  # type: ignore[operator]

    def snapshot(i: int) -> None:
        [p.detach().clone() for p in params]

    def gradient(stale: bool):
        def body(i: int) -> None:
            if stale:
                for p, value in zip(params, store[i % snapshots]):
                    p.data = value
            model.objective(model(x), y).backward()
            for p, value in zip(params, live):
                p.data = value
                p.grad = None
                value.mul_(1.0)  # the optimizer step touches the live parameters between gradients
        return body

    result = {"swap": per_call(swap), "first": per_call(first), "next": per_call(add), "divide": per_call(divide),
              "snapshot": per_call(snapshot)}
    live_times, stale_times = [], []
    for _ in range(4):  # alternated
        live_times.append(per_call(gradient(False), 100))
        stale_times.append(per_call(gradient(True), 100))
    result["fwd_bwd_live"], result["fwd_bwd_stale"] = median(live_times), median(stale_times)
    return result


def schedule_alone(updates: int = 3000, repeats: int = 5) -> None:
    """``ScheduleSimulation.next_update()`` alone, without training."""
    cells = []
    for config in list(CONFIGS)[1:]:
        variant, k = CONFIGS[config]  # type: ignore[misc]
        spec = variant_spec(variant, LEARNERS, k)
        times = []
        for seed in range(repeats):
            simulation = ScheduleSimulation(spec, compute_times_from_config(DELAY), seed=seed)
            started = time.thread_time()
            for _ in range(updates):
                simulation.next_update()
            times.append((time.thread_time() - started) / updates * 1e6)
        cells.append(f"{config} {median(times):.1f} us per update ({median(times) / k:.1f} per gradient)")
    print(f"schedule simulation alone (median of {repeats} x {updates} updates): " + "; ".join(cells))


# -- 2. snapshot memory --------------------------------------------------------------------------
def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


MMAP_THRESHOLD = 64 * 1024


def pin_mmap_threshold(limit: int = MMAP_THRESHOLD) -> bool:
    """Make glibc serve (and return to the OS) every block above ``limit`` with mmap, so RSS follows
    live tensors; by default glibc raises the threshold after frees and keeps freed blocks. Only
    exact in a fresh process (blocks already freed into the heap are reused without mmap): the
    memory part runs in its own process, started with ``MALLOC_MMAP_THRESHOLD_`` set."""
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(-3, limit))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


class MemoryProbe(pl.Callback):
    """Samples the store (bytes of its tensors) and RSS inside every update, once the gradients are
    summed and averaged (at ``optimizer.tell``) and right after a snapshot copy, and at each step's
    end; records the in-flight versions each update leaves to the store."""

    def __init__(self, strategy: SimulatedLearnersStrategy) -> None:
        self.strategy = strategy
        self.store = strategy.store
        self.rss_start = 0
        self.rss_max = 0
        self.store_bytes_max = 0
        self.held_max = 0

    def _sample(self) -> None:
        held = sum(t.untyped_storage().nbytes() for ts in self.store.snapshots.values() for t in ts)
        self.store_bytes_max = max(self.store_bytes_max, held)
        self.rss_max = max(self.rss_max, rss_bytes())

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        store, keep, release = self.store, self.store.keep, self.store.release_all_but
        optimizer = self.strategy.optimizers[0]
        tell = optimizer.tell

        def sampled_keep(*args: Any, **kwargs: Any) -> None:
            keep(*args, **kwargs)
            self._sample()

        def sampled_tell(*args: Any, **kwargs: Any) -> float:
            factor = tell(*args, **kwargs)
            self._sample()
            return factor

        def counted_release(held: Any) -> None:
            held = frozenset(held)
            self.held_max = max(self.held_max, len(held))
            release(held)

        # on these instances only
        store.keep, store.release_all_but, optimizer.tell = sampled_keep, counted_release, sampled_tell
        gc.collect()
        self.rss_start = self.rss_max = rss_bytes()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._sample()


MEMORY_VARIANTS = ("k_sync", "async", "k_async", "k_batch_async", "rennala", "ringmaster")


def memory_settings(variant: str, learners: int) -> dict[str, Any]:
    if variant in ("async",):
        return {"k": 1}
    if variant == "ringmaster":
        return {"k": 1, "max_delay": learners, "stop_stale": True}
    return {"k": max(1, learners // 2)}


def schedule_peak(variant: str, learners: int, updates: int) -> int:
    """The store's peak over a schedule-only run: the strategy's keep / release calls, without training."""
    settings = memory_settings(variant, learners)
    spec = variant_spec(variant, learners, settings["k"], settings.get("max_delay"), settings.get("stop_stale", False))
    simulation = ScheduleSimulation(spec, compute_times_from_config(DELAY), seed=0)
    store, dummy = SnapshotStore(), [torch.zeros(1)]
    for _ in range(updates):
        plan = simulation.next_update()
        if plan.version in plan.held_versions:
            store.keep(plan.version, dummy)
        store.release_all_but(plan.held_versions)
    return store.peak


def memory_run(variant: str, learners: int, make_model, data: SyntheticDataModule, updates: int) -> dict[str, int]:
    """One fit under ``variant`` with a :class:`MemoryProbe`; plain numbers, so nothing of the run outlives it."""
    settings = memory_settings(variant, learners)
    strategy = make_strategy(variant, learners, **settings)
    probe = MemoryProbe(strategy)
    torch.manual_seed(0)
    gc.collect()
    fit(make_model(), DataLoader(data.train_dataset, batch_size=BATCH, shuffle=True), updates, strategy, [probe])
    return {"k": settings["k"], "held": probe.held_max, "peak": strategy.store.peak, "store": probe.store_bytes_max,
            "rss": probe.rss_max - probe.rss_start}


def memory(updates: int, schedule_updates: int) -> None:
    pinned = pin_mmap_threshold()
    data = SyntheticDataModule(n_examples=8192, n_features=256, n_classes=10, batch_size=BATCH)
    optimizer = partial(torch.optim.SGD, lr=0.01)
    make_model = lambda: MLP(data.spec, optimizer, hidden_sizes=[1024, 1024])
    param_bytes = sum(p.numel() * p.element_size() for p in make_model().parameters())
    mb = 1024 * 1024
    print(f"\n== 2. snapshot memory: MLP 256->1024->1024->10 ({param_bytes / mb:.2f} MiB of parameters), "
          f"batch {BATCH}, {updates} updates per run; exponential compute times")
    print(f"(RSS sampled inside every update after the gradients are averaged, after every snapshot copy and at every step's end; "
          f"glibc mmap threshold pinned at 64 KiB: {pinned})")
    print(f"{'variant':14s} {'P':>3s} {'K':>3s} {'in-flight':>9s} {'store.peak':>10s} {'peak MiB':>9s} {'store MiB':>9s}"
          f" {'RSS+ MiB':>9s} {'RSS-base':>9s} {'peak, ' + str(schedule_updates) + ' upd':>14s} {'P':>4s} {'<=P':>3s}")
    fit(make_model(), DataLoader(data.train_dataset, batch_size=BATCH), 5)  # warm-up
    for learners in (2, 4, 8, 16):
        baseline = 0.0
        for variant in MEMORY_VARIANTS:
            row = memory_run(variant, learners, make_model, data, updates)
            if variant == "k_sync":  # keeps no snapshot: the strategy's other copies (grads, sums, activations)
                baseline = row["rss"]
            long_peak = schedule_peak(variant, learners, schedule_updates)
            bounded = max(row["peak"], long_peak) <= learners
            print(f"{variant:14s} {learners:3d} {row['k']:3d} {row['held']:9d} {row['peak']:10d}"
                  f" {row['peak'] * param_bytes / mb:9.1f} {row['store'] / mb:9.1f}"
                  f" {row['rss'] / mb:9.1f} {(row['rss'] - baseline) / mb:9.1f} {long_peak:14d} {learners:4d} {'yes' if bounded else 'NO':>3s}")
    print("in-flight: most distinct read versions still running after an update (stored, older than the live "
          "parameters); store.peak: most parameter copies held at once (plus the live parameters: at most P + 1); "
          "peak MiB = store.peak x parameter bytes; store MiB: bytes of the store's tensors at their largest; "
          "RSS+: process RSS above its value at the start of training, at its largest; RSS-base: RSS+ minus the "
          "same P's k_sync run (no snapshots); ringmaster: R = P with stop_stale; K-variants: K = P/2")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--gradients", type=int, default=240, help="gradients per timed run")
    parser.add_argument("--memory-updates", type=int, default=64)
    parser.add_argument("--schedule-updates", type=int, default=3000)
    parser.add_argument("--skip", choices=("overhead", "memory"), action="append", default=[])
    parser.add_argument("--no-summary", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    quiet()
    started = time.perf_counter()
    if not args.no_summary:
        print(f"load average at the start: {os.getloadavg()[0]:.1f} ({os.cpu_count()} cores)")
    data = SyntheticDataModule(n_examples=16384, n_features=64, n_classes=10, batch_size=BATCH)
    optimizer = partial(torch.optim.SGD, lr=0.05)
    models = {
        "MLP 64->128->10": lambda: MLP(data.spec, optimizer, hidden_sizes=[128]),
        "MLP 64->512->512->10": lambda: MLP(data.spec, optimizer, hidden_sizes=[512, 512]),
    }
    if "overhead" not in args.skip:
        overhead(models, data, args.rounds, args.gradients)
        breakdown(models, data, args.gradients)
    if "memory" not in args.skip:
        if "overhead" in args.skip:
            memory(args.memory_updates, args.schedule_updates)
        else:  # a fresh process, so that RSS follows the live tensors (see pin_mmap_threshold)
            sys.stdout.flush()
            subprocess.run([sys.executable, __file__, "--skip", "overhead", "--memory-updates", str(args.memory_updates),
                            "--schedule-updates", str(args.schedule_updates), "--no-summary"], check=True,
                           env={**os.environ, "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)})
    if not args.no_summary:
        print(f"\n({time.perf_counter() - started:.0f} s in all; load average at the end: {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
