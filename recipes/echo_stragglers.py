"""Slow data and slow learners together: data echoing on the learners of a simulated cluster.

P = 8 simulated learners; learner i computes a mini-batch in ``speed_i * Exp(1)`` (speeds 1, 1, 1, 1,
2, 2, 2, 2) and its own loader takes ``2 * loader_i`` times its mean compute time per fresh batch
(loader_i 1, 1.5, 2, 3, 1, 1.5, 2, 3: loaders 2-6x slower than their compute, with a shifted-exponential
jitter). Logistic regression on the command line's default synthetic data, batch 32, SGD lr 0.1.
Fully synchronous SGD, asynchronous SGD, K-async (K = 2) and K-batch-async (K = 4), each alone and with
``DataEchoing(factor="auto", max_factor=4)`` on the learners (a learner computes on its current
mini-batch again while its next fresh one is not ready), three seeds. Time on the simulated clock and
fresh samples to the synchronous runs' target loss (their final mean + 0.01); then the same on a
data-rich cluster (every loader 4x faster than its compute), where echoing must cost nothing.

    python recipes/echo_stragglers.py --points 750   # recipes/results/echo_stragglers.{md,png,json} (2 s resolution)
    python recipes/echo_stragglers.py --out /tmp/e --horizon-scale 0.05 --seeds 1 --points 4   # a quick smoke run
"""

from __future__ import annotations

import functools
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
import torch

from lightning_echo import TrainingProgress
from lightning_echo.data import SyntheticDataModule
from lightning_echo.echo import DataEchoing
from lightning_echo.models import LogisticRegression
from lightning_echo.stragglers import SimulatedLearnersStrategy

from simulated_runs import (Curve, Method, Recorder, command_lines, full_objective, pyplot, recipe_arguments,
                            save_curves, save_figure, start)

LEARNERS = 8
COMPUTE_SPEEDS = [1, 1, 1, 1, 2, 2, 2, 2]
LOADER_SPEEDS = [1, 1.5, 2, 3, 1, 1.5, 2, 3]
DATA_BOUND = {"slowdown": 2.0, "speeds": LOADER_SPEEDS, "jitter": "shifted_exponential"}
DATA_RICH = {"slowdown": 0.25, "jitter": "shifted_exponential"}
LR, BATCH, TARGET_GAP = 0.1, 32, 0.01
HORIZON = 1500.0  # simulated seconds: the synchronous runs' loss has flattened by then
ECHO = {"factor": "auto", "max_factor": 4}
METHODS = [Method("sync", "p_sync (waits for all 8)", "sync", LR),
           Method("async", "async", "async", LR),
           Method("k_async", "k_async K=2", "k_async", LR, k=2),
           Method("k_batch_async", "k_batch_async K=4", "k_batch_async", LR, k=4)]
COLORS = {"sync": "tab:blue", "async": "tab:red", "k_async": "tab:green", "k_batch_async": "tab:orange"}


@dataclass
class Run:
    """One fit: the method, whether its learners echoed, the cluster, the seed and what it recorded."""

    method: Method
    echo: bool
    cluster: str
    seed: int
    curve: Curve
    echoed_gradients: int
    data_wait_s: float

    @property
    def key(self) -> str:
        return self.method.key + ("+echo" if self.echo else "")


def fit(method: Method, echo: bool, data_delay: dict, cluster: str, datamodule: SyntheticDataModule, objective: Any,
        horizon: float, points: int, seed: int) -> Run:
    """Train ``method`` on the simulated clock until ``horizon``, its learners echoing or not."""
    pl.seed_everything(seed, verbose=False)
    model = LogisticRegression(datamodule.spec, optimizer=functools.partial(torch.optim.SGD, lr=method.lr))
    strategy = SimulatedLearnersStrategy(method.variant, learners=LEARNERS, k=method.k, seed=seed,
                                         delay={"distribution": "exponential", "speeds": COMPUTE_SPEEDS},
                                         data_delay=data_delay)
    curve = Curve(method)
    callbacks: list[pl.Callback] = [TrainingProgress(), Recorder(curve, objective, horizon, points)]
    if echo:
        callbacks.append(DataEchoing(**ECHO, seed=seed))
    trainer = pl.Trainer(strategy=strategy, max_steps=-1, max_epochs=-1, callbacks=callbacks, logger=False,
                         enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                         limit_val_batches=0, num_sanity_val_steps=0, accelerator="cpu")
    started = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    curve.wall_s = time.perf_counter() - started
    metrics = strategy.progress_metrics(callbacks[0].ledger)  # type: ignore[attr-defined]
    run = Run(method, echo, cluster, seed, curve, int(metrics.get("stale/echoed_gradients", 0)),
              float(metrics.get("stale/data_wait_s", 0.0)))
    print(f"  {cluster:9s} {run.key:20s} seed {seed}: {curve.total_updates} updates, {curve.total_gradients} fresh "
          f"batches, {run.echoed_gradients} echoed gradients, objective {curve.final:.4f}, {curve.wall_s:.0f} s wall",
          flush=True)
    return run


@dataclass
class Row:
    """A method's mean over seeds on one cluster."""

    key: str
    label: str
    cluster: str
    time_to_target: Optional[float]  # None: some seed never reached it
    fresh_to_target: Optional[float]
    final: float
    echoed_share: float
    seeds_reached: int
    seeds: int


def summarise(runs: list[Run], cluster: str) -> tuple[float, list[Row]]:
    """The cluster's target (the synchronous runs' final mean + gap) and each method's mean over seeds."""
    mine = [r for r in runs if r.cluster == cluster]
    target = statistics.fmean(r.curve.final for r in mine if r.key == "sync") + TARGET_GAP
    rows = []
    for key in dict.fromkeys(r.key for r in mine):
        group = [r for r in mine if r.key == key]
        times = [r.curve.first_time(target) for r in group]
        fresh = [r.curve.first_gradients(target) for r in group]
        reached = [t for t in times if t is not None]
        gradients = sum(r.curve.total_gradients + r.echoed_gradients for r in group)
        rows.append(Row(key, group[0].method.label + (" + echo auto" if group[0].echo else ""), cluster,
                        statistics.fmean(reached) if len(reached) == len(group) else None,
                        statistics.fmean(f * BATCH for f in fresh) if all(f is not None for f in fresh) else None,
                        statistics.fmean(r.curve.final for r in group),
                        sum(r.echoed_gradients for r in group) / gradients if gradients else 0.0, len(reached), len(group)))
    return target, rows


def spread(runs: list[Run], key: str, cluster: str, target: float) -> str:
    times = [r.curve.first_time(target) for r in runs if r.key == key and r.cluster == cluster]
    known = [t for t in times if t is not None]
    return f"{seconds(min(known))}-{seconds(max(known))}" if known else "-"


def seconds(value: Optional[float]) -> str:
    """Simulated seconds as the tables write them: whole seconds from 100 on, three digits below."""
    if value is None:
        return "-"
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def write(out: Path, runs: list[Run], elapsed: float, horizon: float) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, cluster in zip(axes, ("data-bound", "data-rich")):
        for run in (r for r in runs if r.cluster == cluster and r.seed == runs[0].seed):
            ax.plot(run.curve.times, run.curve.values, color=COLORS[run.method.key], linestyle="-" if run.echo else "--",
                    label=run.key)
        ax.set(title=f"{cluster} cluster (seed {runs[0].seed})", xlabel="simulated time (s)", ylabel="training loss")
        ax.legend(fontsize=8)
    save_figure(fig, out / "echo_stragglers.png", "Data echoing on straggling learners: dashed alone, solid with echo auto")
    lines = ["# Slow data and slow learners together: echoing on the learners", "", *command_lines(), "",
             __doc__.split("\n\n")[1].replace("\n", " "), ""]
    for cluster in ("data-bound", "data-rich"):
        target, rows = summarise(runs, cluster)
        lines += [f"## {cluster} cluster: target loss {target:.4f} (p_sync's final mean + {TARGET_GAP})", "",
                  "| method | time to target (simulated s, mean) | range over seeds | fresh samples to target | "
                  "echoed share of gradients | final loss |", "|---|---|---|---|---|---|"]
        for row in rows:
            lines.append(f"| {row.label} | {seconds(row.time_to_target)} | {spread(runs, row.key, cluster, target)} | "
                         f"{'-' if row.fresh_to_target is None else f'{row.fresh_to_target:.0f}'} | "
                         f"{row.echoed_share:.0%} | {row.final:.4f} |")
        lines.append("")
        lines += findings(rows, cluster)
    lines += [f"Measured runtime: {elapsed:.0f} s wall-clock for {len(runs)} fits (horizon {horizon:g} simulated s)."]
    (out / "echo_stragglers.md").write_text("\n".join(lines) + "\n")
    save_curves(out / "echo_stragglers.json", [thinned(r.curve, 100) for r in runs], {
        "runs": [{"key": r.key, "cluster": r.cluster, "seed": r.seed, "echoed_gradients": r.echoed_gradients,
                  "data_wait_s": r.data_wait_s, "final": r.curve.final} for r in runs]})


def thinned(curve: Curve, points: int) -> Curve:
    """``curve`` with at most ``points`` evaluations (evenly picked, the last kept), for the JSON file."""
    step = max(1, -(-len(curve.times) // points))
    keep = sorted(set(range(0, len(curve.times), step)) | {len(curve.times) - 1})
    pick = lambda values: [values[i] for i in keep]  # noqa: E731
    return Curve(curve.method, times=pick(curve.times), gradients=pick(curve.gradients), updates=pick(curve.updates),
                 values=pick(curve.values), step_lr=pick(curve.step_lr), staleness=curve.staleness,
                 staleness_sum=curve.staleness_sum, staleness_max=curve.staleness_max, lr_sum=curve.lr_sum,
                 diverged_at=curve.diverged_at, wall_s=curve.wall_s, discarded=curve.discarded, cancelled=curve.cancelled)


def findings(rows: list[Row], cluster: str) -> list[str]:
    """What the table says, computed from it."""
    by_key = {row.key: row for row in rows}

    def speedup(key: str, base: str = "sync") -> Optional[float]:
        a, b = by_key.get(key), by_key.get(base)
        if a is None or b is None or a.time_to_target is None or b.time_to_target is None:
            return None
        return b.time_to_target / a.time_to_target

    out = []
    for key in ("async", "k_async", "k_batch_async", "sync+echo", "async+echo", "k_async+echo", "k_batch_async+echo"):
        value = speedup(key)
        if value is not None:
            out.append(f"- {by_key[key].label}: {value:.2f}x faster than p_sync to the target.")
        elif key in by_key:
            out.append(f"- {by_key[key].label}: did not reach the target in every seed "
                       f"({by_key[key].seeds_reached}/{by_key[key].seeds}).")
    for key in ("sync", "async", "k_async", "k_batch_async"):
        gain = speedup(f"{key}+echo", key)
        if gain is not None:
            out.append(f"- echo on {key}: {gain:.2f}x its own time to target"
                       + (f", {by_key[key + '+echo'].fresh_to_target / by_key[key].fresh_to_target:.2f}x its fresh samples."
                          if by_key[key].fresh_to_target and by_key[key + '+echo'].fresh_to_target else "."))
    return out + [""]


def main() -> None:
    parser = recipe_arguments(__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    start(args)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    datamodule = SyntheticDataModule(batch_size=args.batch_size or BATCH, seed=args.seed)
    datamodule.prepare_data()
    datamodule.setup("fit")
    objective = full_objective(datamodule.splits.x_train, datamodule.splits.y_train)
    horizon = HORIZON * args.horizon_scale
    started = time.perf_counter()
    runs = []
    for cluster, data_delay, methods in (("data-bound", DATA_BOUND, METHODS), ("data-rich", DATA_RICH, METHODS[:2])):
        for seed in range(args.seed, args.seed + args.seeds):
            for method in methods:
                for echo in (False, True):
                    runs.append(fit(method, echo, data_delay, cluster, datamodule, objective, horizon, args.points, seed))
    write(out, runs, time.perf_counter() - started, horizon)
    print((out / "echo_stragglers.md").read_text())


if __name__ == "__main__":
    main()
