"""Benchmark: ``stale.k=auto`` against a sweep of fixed K and against p_sync, on ``experiment=stragglers``.

The preset: P = 8 simulated learners with exponential compute times (mean 1), multinomial logistic
regression on the synthetic data, batch 32, SGD lr 0.1, a budget of 61440 fresh samples (240
fully synchronous updates), the simulated clock. For each variant (``--variants``) the command
line sweeps ``stale.k`` over ``--ks`` and ``auto``, and p_sync runs alone (it fixes K = P, so
``stale.k=auto`` is refused there); three seeds each. Every run is a ``lightning-echo`` job; the
table comes from the runs' records through the report's own aggregation
(:func:`lightning_echo.report.aggregate.compare_runs`): the target is p_sync's mean final val
loss times 1.01, time to target is the first validation at or below it (every 16 updates), in
simulated seconds, averaged over the seeds that reach it.

Printed: per configuration the seeds that reached the target, mean time to target, mean final val
loss with the seeds' range, and for ``auto`` the K it ended with per seed; then per variant whether
auto reached the target no later than the best fixed K, and whether its final loss is within
p_sync's seed range of p_sync's mean.

    python bench/adaptive_k.py [--variants k_async,k_batch_async] [--ks 1,2,4,8] [--seeds 0,1,2]
                               [--out DIR] [--reuse] [extra overrides, e.g. budget.fresh_samples=245760]

Where the noise floor matters (results/adaptive_k.txt, part 2):

    python bench/adaptive_k.py --variants k_async --ks 1,2,4 optimizer.lr=1.0 budget.fresh_samples=491520
"""

from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from lightning_echo.metric_names import Loss, Stale
from lightning_echo.report.aggregate import Configuration, compare_runs
from lightning_echo.report.runs import Run, find_runs


def sweep(out: Path, name: str, overrides: list[str], reuse: bool) -> Path:
    """Run one ``lightning-echo -m`` sweep into ``out/name`` (kept as is with ``reuse``)."""
    target = out / name
    if reuse and (target / "sweep.json").exists():
        return target
    shutil.rmtree(target, ignore_errors=True)
    command = [str(Path(sys.executable).with_name("lightning-echo")), "-m", "experiment=stragglers", *overrides,
               f"hydra.sweep.dir={target}", "report.after_sweep=false", "trainer.enable_progress_bar=false"]
    print("#", " ".join(command[1:]), flush=True)
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return target


def final_k(run: Run) -> Optional[int]:
    """The K of the last update a run logged (None when it logged none)."""
    with open(run.path / "csv" / "metrics.csv") as file:
        values = [row[Stale.K] for row in csv.DictReader(file) if row.get(Stale.K)]
    return int(float(values[-1])) if values else None


def k_of(configuration: Configuration) -> str:
    return str(configuration.runs[0].config.get("stale_k", "P"))


def finals(configuration: Configuration) -> list[float]:
    return [run.series[Loss.VAL][-1].value for run in configuration.counted]


def row(configuration: Configuration, seeds: int) -> str:
    values = finals(configuration)
    to_target = configuration.mean_to_target("elapsed_s")
    shown = "-" if to_target is None else f"{to_target:.1f}"
    ks = ""
    if k_of(configuration) == "auto":
        ks = "/".join(str(final_k(run)) for run in sorted(configuration.counted, key=lambda r: r.config.get("seed", 0)))
    return (f"{configuration.label:<32} {len(configuration.reached)}/{seeds:<6} {shown:>12} "
            f"{sum(values) / len(values):>10.4f}  {min(values):.4f}..{max(values):.4f}  {ks}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="k_async,k_batch_async")
    parser.add_argument("--ks", default="1,2,4,8")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "lightning_echo_bench" / "adaptive_k")
    parser.add_argument("--reuse", action="store_true", help="keep sweeps already in --out")
    args, extra = parser.parse_known_args()
    started = time.monotonic()
    seeds = len(args.seeds.split(","))
    variants = args.variants.split(",")
    dirs = [sweep(args.out, "p_sync", ["algorithm=p_sync", f"seed={args.seeds}", *extra], args.reuse)]
    for variant in variants:
        for name, ks in ((f"{variant}_fixed", args.ks), (f"{variant}_auto", "auto")):
            dirs.append(sweep(args.out, name, [f"algorithm={variant}", f"stale.k={ks}", f"seed={args.seeds}", *extra],
                              args.reuse))
    comparison = compare_runs(find_runs(dirs), Loss.VAL)
    print(f"\n{len(comparison.runs)} runs, {time.monotonic() - started:.0f} s wall; target: {comparison.target_rule} "
          f"= {comparison.target:.4f}; time on the simulated clock")
    print(f"{'configuration':<32} {'reached':<8} {'to target s':>12} {'final val':>10}  {'seeds range':<14}  final K (auto)")
    print("-" * 100)
    by_variant: dict[str, list[Configuration]] = {}
    for configuration in comparison.configurations:
        by_variant.setdefault(str(configuration.runs[0].config.get("algorithm")), []).append(configuration)
    sync = by_variant["p_sync"][0]
    print(row(sync, seeds))
    sync_finals = finals(sync)
    sync_mean, sync_range = sum(sync_finals) / len(sync_finals), max(sync_finals) - min(sync_finals)
    verdicts = []
    for variant in variants:
        members = sorted(by_variant.get(variant, []), key=lambda c: (k_of(c) == "auto", int(k_of(c)) if k_of(c).isdigit() else 0))
        for configuration in members:
            print(row(configuration, seeds))
        fixed = [c for c in members if k_of(c) != "auto" and len(c.reached) == seeds]
        auto = next((c for c in members if k_of(c) == "auto"), None)
        if auto is None or not fixed:
            continue
        best = min(fixed, key=lambda c: c.mean_to_target("elapsed_s") or float("inf"))
        best_s, auto_s = best.mean_to_target("elapsed_s"), auto.mean_to_target("elapsed_s")
        auto_finals = finals(auto)
        auto_mean = sum(auto_finals) / len(auto_finals)
        in_time = len(auto.reached) == seeds and auto_s is not None and best_s is not None and auto_s <= best_s
        verdicts.append(
            f"{variant}: auto {'reached' if len(auto.reached) == seeds else 'did not reach'} the target on all seeds"
            + (f" in {auto_s:.1f} s, best fixed {best.label} in {best_s:.1f} s "
               f"({auto_s / best_s:.2f}x): {'met' if in_time else 'NOT met'}" if auto_s and best_s else "")
            + f"; final {auto_mean:.4f} vs p_sync {sync_mean:.4f} (p_sync seed range {sync_range:.4f}): "
            + ("met" if auto_mean - sync_mean <= sync_range else "NOT met"))
    print()
    for verdict in verdicts:
        print(verdict)
    for warning in comparison.warnings:
        print("warning:", warning)


if __name__ == "__main__":
    main()
