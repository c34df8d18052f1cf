"""Benchmark 1: overhead of DataEchoing(factor=1) against no callback, fast in-memory loader.

Runs the two configurations back to back in each round (alternating which goes first) and
prints the median of the per-round throughput ratios (steps per second of training time). Two model sizes are timed:
the recipes' logistic regression (steps of well under a millisecond, where any per-step
Python cost shows most) and an MLP.

    python bench/echo_overhead.py [--rounds 12] [--steps 400]
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import torch
from torch.utils.data import DataLoader

from common import median, quiet, timed_fit
from lightning_echo.data import SyntheticDataModule
from lightning_echo.echo import DataEchoing
from lightning_echo.models import MLP, LogisticRegression


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--steps", type=int, default=400)
    args = parser.parse_args()
    quiet()
    data = SyntheticDataModule(n_examples=16384, n_features=64, n_classes=10, batch_size=256)
    optimizer = partial(torch.optim.SGD, lr=0.05)
    models = {
        "logreg (64->10), batch 256": lambda: LogisticRegression(data.spec, optimizer),
        "MLP (64->512->512->10), batch 256": lambda: MLP(data.spec, optimizer, hidden_sizes=[512, 512]),
    }
    print(f"{'model':36s} {'clock':5s} {'no callback':>12s} {'factor=1':>10s} {'ratio':>7s} {'quartiles of ratios':>20s}")
    for name, make_model in models.items():
        runs: dict[str, dict[str, list[float]]] = {c: {"wall": [], "cpu": []} for c in ("plain", "echo")}
        ratios: dict[str, list[float]] = {"wall": [], "cpu": []}
        timed_fit(make_model(), DataLoader(data.train_dataset, batch_size=256, shuffle=True), 50)  # warm-up
        for round_index in range(args.rounds):
            # Each round runs both back to back, in alternating order: the machine's drift
            # between rounds cancels in the per-round ratio.
            result = {}
            for config in (("plain", "echo") if round_index % 2 == 0 else ("echo", "plain")):
                torch.manual_seed(0)
                loader = DataLoader(data.train_dataset, batch_size=256, shuffle=True)
                callbacks = [DataEchoing(factor=1)] if config == "echo" else []
                result[config] = timed_fit(make_model(), loader, args.steps, callbacks)
                runs[config]["wall"].append(result[config].steps_per_s)
                runs[config]["cpu"].append(result[config].steps_per_cpu_s)
            ratios["wall"].append(result["echo"].steps_per_s / result["plain"].steps_per_s)
            ratios["cpu"].append(result["echo"].steps_per_cpu_s / result["plain"].steps_per_cpu_s)
        for clock in ("cpu", "wall"):
            pairs = sorted(ratios[clock])
            spread = f"{pairs[len(pairs) // 4]:.3f} .. {pairs[(3 * len(pairs)) // 4]:.3f}"
            print(
                f"{name:36s} {clock:5s} {median(runs['plain'][clock]):12.1f} {median(runs['echo'][clock]):10.1f}"
                f" {median(pairs):7.3f} {spread:>20s}"
            )
    print(f"(steps per second of training time, medians over {args.rounds} rounds; ratio = median of per-round ratios)")
    stage_cost(data)


def stage_cost(data: SyntheticDataModule, rounds: int = 15) -> None:
    """Per-batch cost of the echo stage alone: iterate the loaders without training, alternating."""
    from lightning_echo.data.nodes import IterableNode
    from lightning_echo.echo import BatchEcho, EchoLoader

    def per_batch_us(make) -> float:
        loader = make()
        started = time.perf_counter()
        count = sum(1 for _ in loader)
        return (time.perf_counter() - started) / count * 1e6

    def echo_loader() -> EchoLoader:
        inner = DataLoader(data.train_dataset, batch_size=256, shuffle=True)
        node = BatchEcho(IterableNode(inner), factor=1)
        return EchoLoader(node, node, length=len(inner))

    plain, echoed = [], []
    for _ in range(rounds):
        plain.append(per_batch_us(lambda: DataLoader(data.train_dataset, batch_size=256, shuffle=True)))
        echoed.append(per_batch_us(echo_loader))
    extra = median([e - p for e, p in zip(echoed, plain)])
    print(f"echo stage alone: DataLoader {median(plain):.0f} us/batch, with the echo stage {median(echoed):.0f} us/batch"
          f" (+{extra:.0f} us per batch, median of {rounds} paired passes)")


if __name__ == "__main__":
    main()
