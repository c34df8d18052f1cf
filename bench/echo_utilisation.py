"""Benchmark 2: does echoing keep the optimizer busy when the loader is 4x slower?

Optimizer steps per second and the share of training time spent waiting for data, for:
the unthrottled loader (reference), the loader throttled to ``slowdown=4`` without echoing,
with ``DataEchoing(factor=4)`` and with ``DataEchoing(factor="auto")``. Ratios are against the
unthrottled reference measured in the same run (medians over rounds, configurations alternated).

    python bench/echo_utilisation.py [--rounds 3] [--steps 400] [--slowdown 4]
"""

from __future__ import annotations

import argparse
from functools import partial

import torch

from common import median, quiet, timed_fit
from lightning_echo.data import SyntheticDataModule
from lightning_echo.data.pipeline import throttled_loader
from lightning_echo.echo import DataEchoing
from lightning_echo.models import MLP


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--slowdown", type=float, default=4.0)
    args = parser.parse_args()
    quiet()
    data = SyntheticDataModule(n_examples=16384, n_features=64, n_classes=10, batch_size=256)
    make_model = lambda: MLP(data.spec, partial(torch.optim.SGD, lr=0.05), hidden_sizes=[512, 512])  # noqa: E731

    def run(config: str):
        throttle = {} if config == "unthrottled" else {"slowdown": args.slowdown}
        loader = throttled_loader(data.train_dataset, 256, seed=0, **throttle)
        callbacks, wait = [], (lambda: loader.wait_s)
        if config.startswith("echo"):
            factor = 4 if config == "echo factor=4" else "auto"
            echo = DataEchoing(factor=factor, max_factor=8)
            callbacks, wait = [echo], (lambda: echo.data_wait_s)
        return timed_fit(make_model(), loader, args.steps, callbacks, wait_of=wait)

    configs = ["unthrottled", "sync, throttled", "echo factor=4", "echo factor=auto"]
    rates: dict[str, list[float]] = {c: [] for c in configs}
    waits: dict[str, list[float]] = {c: [] for c in configs}
    run("unthrottled")  # warm-up
    for _ in range(args.rounds):
        for config in configs:
            result = run(config)
            rates[config].append(result.steps_per_s)
            waits[config].append(result.wait_s / result.elapsed_s)
    reference = median(rates["unthrottled"])
    print(f"loader slowdown={args.slowdown:g}, MLP 64->512->512->10, batch 256, {args.steps} steps, median of {args.rounds} rounds")
    print(f"{'configuration':20s} {'steps/s':>8s} {'vs unthrottled':>15s} {'waiting for data':>17s}")
    for config in configs:
        rate = median(rates[config])
        print(f"{config:20s} {rate:8.1f} {rate / reference:15.3f} {median(waits[config]):16.1%}")


if __name__ == "__main__":
    main()
