"""Benchmark: data echoing on the parameter server's learners (real processes, gloo on CPU).

A server and P = 4 learner processes (``ParameterServerStrategy``, Lightning's own launcher:
this script is re-run for ranks 1..4) train multinomial logistic regression on synthetic data.
Each learner's compute time is injected (exponential, mean ``--compute`` seconds, learner ``i``
slowed by ``SPEEDS[i]``) and its loader is throttled to ``LOADER_SLOWDOWNS[i]`` (2 to 6) times its
mean compute time, so every learner is data-bound, the slowest the most. Four runs, one world:
p_sync (variant ``sync``), async, and both with ``DataEchoing(factor="auto")`` on the learners
(echo while the next fresh batch loads, at most ``max_factor`` gradients per batch), all with the
same budget of fresh samples (``TrainingProgress(max_fresh_samples=...)`` on the server; the run
ends at the update that reaches it). The server evaluates the loss on a held-out set every
``--every`` seconds of wall-clock time. Printed per run: wall time, time to the target loss
(p_sync's final loss plus ``--gap``), fresh samples used, server updates, gradients used and how
many were echoes, the learners' data wait, final loss.

    python bench/ps_echo.py [--budget 12800] [--compute 0.02] [--lr 0.5] [--gap 0.01] [--every 0.25]
"""

from __future__ import annotations

import argparse
import math
import os
import time
from typing import Any, Optional

import torch
from torch.utils.data import DataLoader, TensorDataset

from common import quiet
from lightning_echo.callbacks import TrainingProgress
from lightning_echo.data.modules.synthetic import make_classification
from lightning_echo.data.pipeline import throttled_loader
from lightning_echo.echo import DataEchoing
from lightning_echo.lightning_namespace import pl
from lightning_echo.stragglers.processes.strategy import ParameterServerStrategy

LEARNERS = 4
SPEEDS = (1.0, 1.0, 1.5, 2.0)  # compute slowdowns (StragglerSettings' delay speeds)
LOADER_SLOWDOWNS = (2.0, 3.0, 4.0, 6.0)  # each learner's seconds per batch over its mean compute time
FEATURES, CLASSES, TRAIN_ROWS, VAL_ROWS, BATCH = 32, 4, 16384, 4096, 32
RUNS = (("sync", False), ("async", False), ("sync", True), ("async", True))


def rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))  # one node: the local rank is the global rank


def datasets() -> tuple[TensorDataset, tuple[torch.Tensor, torch.Tensor]]:
    x, y = make_classification(TRAIN_ROWS + VAL_ROWS, FEATURES, CLASSES, noise=0.5, condition_number=10.0,
                               generator_seed=0)
    return TensorDataset(x[:TRAIN_ROWS], y[:TRAIN_ROWS]), (x[TRAIN_ROWS:], y[TRAIN_ROWS:])


class Logistic(pl.LightningModule):
    def __init__(self, lr: float) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(FEATURES, CLASSES)
        self.lr = lr

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.cross_entropy(self.linear(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class LossOverTime(pl.Callback):
    """Rank 0: the held-out loss every ``every`` seconds of training, and at the end."""

    def __init__(self, val: tuple[torch.Tensor, torch.Tensor], every: float) -> None:
        self.x, self.y = val
        self.every = every
        self.points: list[tuple[float, float]] = []  # (seconds since the first update began, loss)
        self.wall_s = 0.0
        self._start = 0.0
        self._next = 0.0

    def _loss(self, module: pl.LightningModule) -> float:
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(module.linear(self.x), self.y))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()
        self.points = [(0.0, self._loss(pl_module))]
        self._next = self.every

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        now = time.perf_counter() - self._start
        if now >= self._next:
            self.points.append((now, self._loss(pl_module)))
            self._next = now + self.every

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.wall_s = time.perf_counter() - self._start
        self.points.append((self.wall_s, self._loss(pl_module)))

    def time_to(self, target: float) -> Optional[float]:
        return next((t for t, loss in self.points if loss <= target), None)


def learner_loader(train: TensorDataset, compute: float) -> Any:
    """Rank 0 reads no batch (its loader only sizes its epochs); learner ``i`` its own throttled shard."""
    if rank() == 0:
        return DataLoader(train, batch_size=BATCH)
    i = rank() - 1
    seconds = LOADER_SLOWDOWNS[i] * SPEEDS[i] * compute
    return throttled_loader(train, BATCH, seconds_per_batch=seconds, rank=i, world_size=LEARNERS, seed=i)


def one_run(variant: str, echo: bool, args: argparse.Namespace, train: TensorDataset,
            val: tuple[torch.Tensor, torch.Tensor]) -> Optional[dict[str, Any]]:
    delay = {"distribution": "exponential", "scale": args.compute, "speeds": list(SPEEDS)}
    strategy = ParameterServerStrategy(variant, timeout=60.0, delay=delay, seed=1)
    curve = LossOverTime(val, args.every)
    callbacks: list[pl.Callback] = [TrainingProgress(max_fresh_samples=args.budget), curve]
    if echo:
        callbacks.append(DataEchoing(factor="auto", max_factor=4))
    fit = pl.Trainer(devices=LEARNERS + 1, accelerator="cpu", strategy=strategy, max_steps=-1, max_epochs=-1,
                     callbacks=callbacks, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False)
    fit.fit(Logistic(args.lr), train_dataloaders=learner_loader(train, args.compute))
    if rank() != 0:
        return None
    report = strategy.server_report
    assert report is not None
    progress = callbacks[0]
    assert isinstance(progress, TrainingProgress)
    return {"name": f"{'echo + ' if echo else ''}{'p_sync' if variant == 'sync' else variant}", "curve": curve,
            "fresh": progress.fresh_samples, "updates": report.updates, "gradients": report.gradients_used,
            "echoed": report.echoed_gradients, "echoed_per_learner": report.echoed_gradients_per_learner,
            "wait": report.data_wait_s_per_learner}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=12800, help="fresh samples per run")
    parser.add_argument("--compute", type=float, default=0.02, help="mean injected compute time of a speed-1 learner (s)")
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--gap", type=float, default=0.01, help="target = p_sync's final loss + gap")
    parser.add_argument("--every", type=float, default=0.25, help="seconds between held-out evaluations")
    args = parser.parse_args()
    quiet()
    train, val = datasets()
    results = [one_run(variant, echo, args, train, val) for variant, echo in RUNS]
    if rank() != 0:
        return
    rows = [r for r in results if r is not None]
    target = rows[0]["curve"].points[-1][1] + args.gap
    loaders = ", ".join(f"{LOADER_SLOWDOWNS[i] * SPEEDS[i] * args.compute * 1000:.0f}" for i in range(LEARNERS))
    print(f"P = {LEARNERS} learners, logistic regression ({FEATURES} features, {CLASSES} classes, {TRAIN_ROWS} rows), "
          f"batch {BATCH}, SGD lr {args.lr}; compute exp(mean {args.compute * 1000:.0f} ms) x speeds {list(SPEEDS)}; "
          f"loaders {loaders} ms per batch ({'/'.join(f'{s:g}' for s in LOADER_SLOWDOWNS)} x mean compute); "
          f"budget {args.budget} fresh samples; echo: DataEchoing(factor='auto', max_factor=4)")
    print(f"target loss = p_sync's final loss + {args.gap} = {target:.4f}\n")
    header = (f"{'run':<15}{'wall s':>8}{'to target s':>13}{'fresh samples':>15}{'updates':>9}{'gradients':>11}"
              f"{'echoed':>8}  {'echoed per learner':<20}{'data wait s per learner':<26}{'final loss':>10}")
    print(header)
    print("-" * len(header))
    for r in rows:
        curve = r["curve"]
        to_target = curve.time_to(target)
        echoed = "/".join(str(e) for e in r["echoed_per_learner"])
        wait = "/".join(f"{w:.1f}" for w in r["wait"])
        print(f"{r['name']:<15}{curve.wall_s:>8.1f}{'never' if to_target is None else f'{to_target:.1f}':>13}"
              f"{r['fresh']:>15}{r['updates']:>9}{r['gradients']:>11}{r['echoed']:>8}  {echoed:<20}{wait:<26}"
              f"{curve.points[-1][1]:>10.4f}")
    print("\nloss against wall-clock time (s: loss), every ~1 s:")
    for r in rows:
        points = r["curve"].points
        shown, last = [], -math.inf
        for t, loss in points:
            if t - last >= 1.0 or (t, loss) == points[-1]:
                shown.append(f"{t:.1f}: {loss:.3f}")
                last = t
        print(f"  {r['name']:<15}" + "  ".join(shown))


if __name__ == "__main__":
    main()
