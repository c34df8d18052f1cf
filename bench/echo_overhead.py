"""Benchmark 1: overhead of DataEchoing(factor=1) against no callback, fast in-memory loader.

Runs the two configurations alternately, several rounds each, and prints the ratio of the
median training throughputs (steps per second of training time). Two model sizes are timed:
the recipes' logistic regression (steps of well under a millisecond, where any per-step
Python cost shows most) and an MLP.

    python bench/echo_overhead.py [--rounds 7] [--steps 600]
"""

from __future__ import annotations

import argparse
from functools import partial

import torch
from torch.utils.data import DataLoader

from common import median, quiet, timed_fit
from lightning_echo.data import SyntheticDataModule
from lightning_echo.echo import DataEchoing
from lightning_echo.models import MLP, LogisticRegression


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=600)
    args = parser.parse_args()
    quiet()
    data = SyntheticDataModule(n_examples=16384, n_features=64, n_classes=10, batch_size=256)
    optimizer = partial(torch.optim.SGD, lr=0.05)
    models = {
        "logreg (64->10), batch 256": lambda: LogisticRegression(data.spec, optimizer),
        "MLP (64->512->512->10), batch 256": lambda: MLP(data.spec, optimizer, hidden_sizes=[512, 512]),
    }
    print(f"{'model':36s} {'no callback':>12s} {'factor=1':>12s} {'ratio':>7s}   (median steps/s over {args.rounds} rounds)")
    for name, make_model in models.items():
        plain, echoed = [], []
        timed_fit(make_model(), DataLoader(data.train_dataset, batch_size=256, shuffle=True), 50)  # warm-up
        for _ in range(args.rounds):
            torch.manual_seed(0)
            loader = DataLoader(data.train_dataset, batch_size=256, shuffle=True)
            plain.append(timed_fit(make_model(), loader, args.steps).steps_per_s)
            loader = DataLoader(data.train_dataset, batch_size=256, shuffle=True)
            echoed.append(timed_fit(make_model(), loader, args.steps, [DataEchoing(factor=1)]).steps_per_s)
        a, b = median(plain), median(echoed)
        print(f"{name:36s} {a:12.1f} {b:12.1f} {b / a:7.3f}")


if __name__ == "__main__":
    main()
