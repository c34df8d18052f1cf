"""Benchmark: what ``StepTimeRecorder`` costs per training step (the budget: 2% of a step).

1. Side by side in one run: each workload is fitted once, and every ``--block`` steps the callback
   slot changes, in turn: no callback, an empty ``Callback`` (what Lightning's loop costs for any
   callback: it calls every hook of every callback) and the recorder (set up at the start of the
   fit, as a user's). Each block's process CPU time and wall-clock time are taken from the
   module's ``on_train_batch_start`` (where the callbacks list may change); the cost per step of a
   configuration is the median over its blocks. Short interleaved blocks share the machine's
   load, which on a busy machine swamps whole fits run one after the other.
2. The end of ``fit``: turning 10,000 recorded steps into rows and writing the three trace files.
3. Under DDP the recorder also hooks every trainable parameter's gradient accumulation: a backward
   pass of a deep MLP with and without those hooks, side by side.

Workloads: ``boring`` (Lightning's BoringModel, a 32x2 linear layer on batches of 2: a step that is
almost all Lightning's own loop, the worst case), ``mlp`` (the library's MLP, 64 features, hidden
256-256, batches of 64), ``mlp_deep`` (8 hidden layers of 128, 18 parameter tensors).

    python bench/record_overhead.py [--blocks 30] [--block 40] [--rounds 9]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch.utils.data import DataLoader

from lightning_echo.advisor.record import StepTimeRecorder, _hook_gradients
from lightning_echo.data import SyntheticDataModule
from lightning_echo.lightning_namespace import import_lightning, pl
from lightning_echo.models import MLP

boring = import_lightning("demos.boring_classes")
CONFIGS = ("none", "empty callback", "recorder")


def _mlp_workload(hidden: list[int]) -> Callable[[], tuple[pl.LightningModule, DataLoader]]:
    data = SyntheticDataModule(n_examples=8192, n_features=64, n_classes=4, batch_size=64)
    data.setup("fit")

    def make() -> tuple[pl.LightningModule, DataLoader]:
        torch.manual_seed(0)
        return MLP(data.spec, hidden_sizes=hidden), data.train_dataloader()

    return make


def _boring() -> tuple[pl.LightningModule, DataLoader]:
    torch.manual_seed(0)
    return boring.BoringModel(), DataLoader(boring.RandomDataset(32, 4096), batch_size=2)


WORKLOADS: dict[str, Callable[[], Callable[[], tuple[pl.LightningModule, DataLoader]]]] = {
    "boring": lambda: _boring,
    "mlp": lambda: _mlp_workload([256, 256]),
    "mlp_deep": lambda: _mlp_workload([128] * 8),
}


class Interleave:
    """Swap the callback slot every ``block`` steps (from the module's ``on_train_batch_start``,
    where Lightning is not iterating over the callbacks) and time each block."""

    def __init__(self, trainer: pl.Trainer, slots: dict[str, Optional[pl.Callback]], block: int) -> None:
        self.trainer, self.slots, self.block = trainer, slots, block
        self.cpu_s: dict[str, list[float]] = {name: [] for name in slots}
        self.wall_s: dict[str, list[float]] = {name: [] for name in slots}
        self._turn, self._mark, self._steps = -1, (0.0, 0.0), -1

    def __call__(self, batch: Any, batch_idx: int) -> None:
        self._steps += 1
        if self._steps % self.block:
            return
        now = (time.process_time(), time.perf_counter())
        names = list(self.slots)
        if self._turn >= 1:  # the first block warms up
            name = names[self._turn % len(names)]
            self.cpu_s[name].append((now[0] - self._mark[0]) / self.block)
            self.wall_s[name].append((now[1] - self._mark[1]) / self.block)
        self._turn += 1
        callbacks = self.trainer.callbacks
        callbacks[:] = [c for c in callbacks if c not in self.slots.values()]
        chosen = self.slots[names[self._turn % len(names)]]
        if chosen is not None:
            callbacks.append(chosen)
        self._mark = (time.process_time(), time.perf_counter())


def interleaved(name: str, blocks: int, block: int, directory: Path) -> None:
    model, loader = WORKLOADS[name]()()
    recorder = StepTimeRecorder(dirpath=directory / name)
    slots = {"none": None, "empty callback": pl.Callback(), "recorder": recorder}
    trainer = pl.Trainer(accelerator="cpu", max_steps=block * (len(slots) * blocks + 2), max_epochs=-1,
                         callbacks=[recorder], logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0)
    interleave = Interleave(trainer, slots, block)
    model.on_train_batch_start = interleave  # type: ignore[method-assign]
    trainer.fit(model, train_dataloaders=loader)
    cpu = {config: 1e6 * statistics.median(values) for config, values in interleave.cpu_s.items()}
    wall = {config: 1e6 * statistics.median(values) for config, values in interleave.wall_s.items()}
    base = cpu["none"]
    print(f"{name:9s} {base / 1000:8.3f} {cpu['empty callback'] - base:+9.1f} {cpu['recorder'] - base:+9.1f} "
          f"{100 * (cpu['recorder'] / base - 1):+8.2f}% {100 * (wall['recorder'] / wall['none'] - 1):+8.2f}% "
          f"{100 * (cpu['recorder'] / cpu['empty callback'] - 1):+8.2f}% {len(recorder.records) + len(recorder._ended):8d}")


def end_of_fit_ms(steps: int = 10_000) -> float:
    """Turning ``steps`` raw steps into rows and writing the trace (one device)."""
    recorder = StepTimeRecorder(dirpath=tempfile.mkdtemp())
    recorder._role, recorder._directory = "single", Path(recorder.dirpath or ".")
    now = time.perf_counter()
    recorder._ended.extend((now, now + 1e-4, None, None, now + 1e-3, 64, True) for _ in range(steps))
    start = time.perf_counter()
    recorder._stop_recording()
    recorder._finish(recorder.records)
    return 1000 * (time.perf_counter() - start)


def gradient_hooks(rounds: int, repeats: int = 200) -> None:
    torch.manual_seed(0)
    data = SyntheticDataModule(n_examples=512, n_features=64, n_classes=4, batch_size=64)
    data.setup("fit")
    model = MLP(data.spec, hidden_sizes=[128] * 8)
    x, y = next(iter(data.train_dataloader()))
    tensors = sum(1 for p in model.parameters() if p.requires_grad)
    calls = [0]

    def backward_s() -> float:
        start = time.process_time()
        for _ in range(repeats):
            model.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
        return (time.process_time() - start) / repeats

    backward_s()
    ratios, plain_ms, per_tensor_us = [], [], []
    for round_ in range(rounds):
        times = {}
        for hooked in ([False, True] if round_ % 2 == 0 else [True, False]):
            undo = _hook_gradients(model, lambda: calls.__setitem__(0, calls[0] + 1)) if hooked else None
            times[hooked] = backward_s()
            if undo is not None:
                undo()
        ratios.append(times[True] / times[False] - 1)
        plain_ms.append(1000 * times[False])
        per_tensor_us.append(1e6 * (times[True] - times[False]) / tensors)
    print(f"3. DDP only: a backward pass of mlp_deep ({tensors} parameter tensors, {statistics.median(plain_ms):.3f} ms "
          f"of CPU time) with the gradient hooks: {100 * statistics.median(ratios):+.2f}% (median of {rounds} rounds "
          f"of {repeats}, [{100 * min(ratios):+.1f}%, {100 * max(ratios):+.1f}%]), about "
          f"{statistics.median(per_tensor_us):.2f} us per parameter tensor")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=30, help="blocks per configuration")
    parser.add_argument("--block", type=int, default=40, help="steps per block")
    parser.add_argument("--rounds", type=int, default=9, help="rounds of the gradient-hook measurement")
    parser.add_argument("--only", choices=sorted(WORKLOADS), nargs="*")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    for logger in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(logger).setLevel(logging.ERROR)
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {pl.__name__} {pl.__version__}, python {sys.version.split()[0]}; one device "
          f"(CPU, 1 thread; {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}); {args.blocks} blocks of "
          f"{args.block} steps per configuration, interleaved in one fit")
    print("1. per step, median over blocks: the step's CPU time without callbacks; CPU time added by an empty Callback "
          "and by the recorder; the recorder's overhead on CPU and wall-clock time; the recorder over the empty "
          "Callback; batches the recorder recorded (its blocks)")
    print(f"{'workload':9s} {'step ms':>8s} {'empty us':>9s} {'rec us':>9s} {'rec cpu':>9s} {'rec wall':>9s} "
          f"{'rec/empty':>9s} {'recorded':>8s}")
    with tempfile.TemporaryDirectory() as directory:
        for name in args.only or list(WORKLOADS):
            interleaved(name, args.blocks, args.block, Path(directory))
    print(f"2. end of fit: 10,000 steps into rows and the three files written: {end_of_fit_ms():.0f} ms")
    gradient_hooks(args.rounds)


if __name__ == "__main__":
    main()
