"""Recipe: data echoing in an existing Lightning project, a three-line change.

Everything below is a plain PyTorch Lightning script (its own LightningModule, a DataLoader whose
collate function is slow, as when decoding or augmenting on the CPU). The lines marked
``lightning_echo`` are the whole change: import, create the callback, pass it to the Trainer.

    python recipes/existing_project.py              # with echoing
    python recipes/existing_project.py --no-echo    # the unchanged script, for comparison
"""

from __future__ import annotations

import argparse
import time

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_echo import DataEchoing  # lightning_echo (1/3): import


class Classifier(pl.LightningModule):
    """A user's model: nothing in it knows about echoing."""

    def __init__(self, features: int = 32, classes: int = 4) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, 64), nn.ReLU(), nn.Linear(64, classes))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def slow_collate(samples, seconds: float = 0.03):
    """Stands in for expensive per-batch preprocessing."""
    time.sleep(seconds)
    return torch.utils.data.default_collate(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-echo", action="store_true", help="run the script without the change")
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(8192, 32, generator=generator)
    y = (x[:, :4] * 2).argmax(dim=1)
    loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True, collate_fn=slow_collate)

    callbacks = [] if args.no_echo else [DataEchoing(factor="auto")]  # lightning_echo (2/3): the callback
    trainer = pl.Trainer(max_steps=args.steps, callbacks=callbacks,  # lightning_echo (3/3): pass it in
                         accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    started = time.perf_counter()
    trainer.fit(Classifier(), train_dataloaders=loader)
    elapsed = time.perf_counter() - started
    fresh = callbacks[0].fresh_batches if callbacks else trainer.global_step
    print(f"{trainer.global_step} optimizer steps on {fresh} fresh batches in {elapsed:.1f} s "
          f"({trainer.global_step / elapsed:.0f} steps/s); final train/loss {float(trainer.callback_metrics['train/loss']):.4f}")


if __name__ == "__main__":
    main()
