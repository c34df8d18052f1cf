"""Benchmark 2: does echoing keep the optimizer busy when the loader is 4x slower?

Optimizer steps per second and the share of training time spent waiting for data, for:
the unthrottled loader (reference), the loader throttled to ``slowdown=4`` without echoing,
with ``DataEchoing(factor=4)`` and with ``DataEchoing(factor="auto")``. Ratios are against the
unthrottled reference measured in the same run (medians over rounds, configurations alternated).

    python bench/echo_utilisation.py [--rounds 5] [--steps 400] [--slowdown 4]
"""

from __future__ import annotations

import argparse
from functools import partial

import torch

from common import median, quiet, timed_fit
from lightning_echo.data import SyntheticDataModule
from lightning_echo.data.pipeline import throttled_loader
from lightning_echo.callbacks import TrainingProgress
from lightning_echo.echo import DataEchoing
from lightning_echo.models import MLP


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--slowdown", type=float, default=4.0)
    args = parser.parse_args()
    quiet()
    data = SyntheticDataModule(n_examples=16384, n_features=64, n_classes=10, batch_size=256)
    make_model = lambda: MLP(data.spec, partial(torch.optim.SGD, lr=0.05), hidden_sizes=[512, 512])  # noqa: E731

    def run(config: str):
        throttle = {} if config == "unthrottled" else {"slowdown": args.slowdown}
        loader = throttled_loader(data.train_dataset, 256, seed=0, **throttle)
        # The same measure for every configuration: the training loop's own wait between steps.
        progress = TrainingProgress()
        callbacks: list = [progress]
        if config.startswith("echo"):
            factor = 4 if config == "echo factor=4" else "auto"
            callbacks.append(DataEchoing(factor=factor, max_factor=8))
        return timed_fit(make_model(), loader, args.steps, callbacks, wait_of=lambda: progress.data_wait_s)

    configs = ["unthrottled", "sync, throttled", "echo factor=4", "echo factor=auto"]
    ratios: dict[str, list[float]] = {c: [] for c in configs}
    rates: dict[str, list[float]] = {c: [] for c in configs}
    waits: dict[str, list[float]] = {c: [] for c in configs}
    run("unthrottled")  # warm-up
    for round_index in range(args.rounds):
        # Every round measures its own unthrottled reference, right next to the others.
        order = configs if round_index % 2 == 0 else configs[::-1]
        results = {config: run(config) for config in order}
        for config in configs:
            rates[config].append(results[config].steps_per_s)
            ratios[config].append(results[config].steps_per_s / results["unthrottled"].steps_per_s)
            waits[config].append(results[config].wait_s / results[config].elapsed_s)
    print(f"loader slowdown={args.slowdown:g}, MLP 64->512->512->10, batch 256, {args.steps} steps, {args.rounds} rounds")
    print(f"{'configuration':20s} {'steps/s':>8s} {'vs unthrottled':>15s} {'range':>14s} {'waiting for data':>17s}")
    for config in configs:
        pairs = sorted(ratios[config])
        spread = f"{pairs[0]:.2f} .. {pairs[-1]:.2f}"
        print(f"{config:20s} {median(rates[config]):8.1f} {median(pairs):15.3f} {spread:>14s} {median(waits[config]):16.1%}")
    print("(medians over rounds; 'vs unthrottled' = median of per-round ratios, range = min .. max)")


if __name__ == "__main__":
    main()
