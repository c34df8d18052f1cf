"""Benchmark: momentum under stale gradients, with and without the implicit-momentum correction.

Asynchronous SGD acts as momentum SGD with an implicit momentum of about ``1 - K/P``
(Mitliagkas et al. 2016), so an optimizer's own momentum of 0.9 on top of it can diverge where
plain SGD converges. For each variant and P, the same MLP (four-class prototypes plus noise, 16
features, 512 training and 256 validation rows, batch 8, SGD lr 0.1, 4 epochs) trains on
simulated learners (exponential compute times) with momentum 0, with momentum 0.9, and with
momentum 0.9 under ``momentum_correction="implicit"``; the table gives the final validation
loss and accuracy, the median over seeds. ``sync`` (no stale gradient) is the reference.

    python bench/momentum_staleness.py [--seeds 3] [--epochs 4]
"""

from __future__ import annotations

import argparse
import math
import statistics
from typing import Any, Optional

import pytorch_lightning as pl
import torch
from common import quiet
from torch.utils.data import DataLoader, TensorDataset

from lightning_echo import SimulatedLearnersStrategy

FEATURES, CLASSES = 16, 4


def dataset(rows: int, seed: int) -> TensorDataset:
    prototypes = torch.randn(CLASSES, FEATURES, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(rows) % CLASSES
    noise = torch.randn(rows, FEATURES, generator=torch.Generator().manual_seed(seed))
    return TensorDataset(prototypes[labels] + 1.5 * noise, labels)


class Classifier(pl.LightningModule):
    def __init__(self, momentum: float, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = torch.nn.Sequential(torch.nn.Linear(FEATURES, 32), torch.nn.ReLU(), torch.nn.Linear(32, CLASSES))
        self.momentum = momentum

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self.net(x)
        self.log("val_loss", torch.nn.functional.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=self.momentum)


def final_validation(variant: str, learners: int, k: Optional[int], momentum: float, correction: str,
                     seed: int, epochs: int) -> tuple[float, float]:
    strategy = SimulatedLearnersStrategy(variant, learners=learners, k=k, momentum_correction=correction, seed=seed)
    trainer = pl.Trainer(strategy=strategy, max_epochs=epochs, logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False)
    train = DataLoader(dataset(512, seed=1 + 10 * seed), batch_size=8, shuffle=True,
                       generator=torch.Generator().manual_seed(seed))
    trainer.fit(Classifier(momentum, seed), train, DataLoader(dataset(256, seed=2 + 10 * seed), batch_size=64))
    return float(trainer.callback_metrics["val_loss"]), float(trainer.callback_metrics["val_acc"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    quiet()
    cases = [("sync", None), ("async", None), ("k_async", 2), ("ringmaster", None)]
    settings = [("momentum 0", 0.0, "none"), ("momentum 0.9", 0.9, "none"), ("0.9, implicit", 0.9, "implicit")]
    print(f"{'variant':<16s} {'P':>3s} {'implicit':>8s}" + "".join(f" {name:>24s}" for name, _, _ in settings))
    for learners in (4, 8):
        for variant, k in cases:
            k_used = learners if variant == "sync" else (k or 1)
            implicit = 0.0 if variant == "sync" else 1 - k_used / learners
            cells = []
            for _, momentum, correction in settings:
                runs = [final_validation(variant, learners, k, momentum, correction, seed, args.epochs)
                        for seed in range(args.seeds)]
                loss = statistics.median(r[0] for r in runs)
                accuracy = statistics.median(r[1] for r in runs)
                shown = "diverged" if not math.isfinite(loss) or loss > 10 else f"{loss:.3f}"
                cells.append(f"{shown:>10s} (acc {accuracy:.3f})")
            label = variant + (f" K={k}" if k else "")
            print(f"{label:<16s} {learners:>3d} {implicit:>8.3f}" + "".join(f" {c:>24s}" for c in cells), flush=True)
    print("\nval loss (val accuracy) after the last epoch, median over seeds; 'diverged': loss > 10 or not finite")


if __name__ == "__main__":
    main()
