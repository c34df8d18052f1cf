"""Two-process (gloo) run with batch echoing over a DistributedSampler, two epochs; writes what happened.

Run as `python ddp_echo_epochs.py OUT_DIR STRATEGY` with STRATEGY `ddp` or `ddp_spawn`; Lightning
starts the second process itself. Each rank writes `rank<r>.json`: the epochs its sampler was told,
the example indices it trained on per epoch and its echo counters. The launching process writes
`launcher.json`: the counters its own DataEchoing reports after `fit` returns.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from lightning_echo.echo import DataEchoing

EXAMPLES, BATCH, FACTOR, EPOCHS = 64, 8, 2, 2


class RecordingSampler(DistributedSampler):
    """A DistributedSampler that remembers every epoch it is told."""

    def __init__(self, dataset, num_replicas: int, rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=0)
        self.epochs_told: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epochs_told.append(epoch)
        super().set_epoch(epoch)


class Model(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.served: dict[int, list[list[int]]] = {}

    def training_step(self, batch, batch_idx):
        (x,) = batch
        self.served.setdefault(self.current_epoch, []).append(x[:, 0].long().tolist())
        return self.layer(x).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class Data(pl.LightningDataModule):
    def train_dataloader(self):
        dataset = TensorDataset(torch.arange(EXAMPLES, dtype=torch.float32).unsqueeze(1))
        sampler = RecordingSampler(dataset, self.trainer.world_size, self.trainer.global_rank)
        return DataLoader(dataset, batch_size=BATCH, sampler=sampler)


class WriteRank(pl.Callback):
    """Writes this rank's record at the end of fit (in the worker, also under ddp_spawn)."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def on_train_end(self, trainer, pl_module):
        echo = next(c for c in trainer.callbacks if isinstance(c, DataEchoing))
        record = {
            "epochs_told": trainer.train_dataloader.sampler.epochs_told,
            "served": {str(epoch): batches for epoch, batches in pl_module.served.items()},
            "global_step": trainer.global_step,
            "counters": [echo.steps, echo.fresh_batches, echo.echoed_steps],
        }
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


def main() -> None:
    out, strategy = Path(sys.argv[1]), sys.argv[2]
    echo = DataEchoing(factor=FACTOR)
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy=strategy, max_epochs=EPOCHS, callbacks=[echo, WriteRank(out)],
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(Model(), datamodule=Data())
    if trainer.global_rank == 0:
        (out / "launcher.json").write_text(json.dumps({"counters": [echo.steps, echo.fresh_batches, echo.echoed_steps]}))


if __name__ == "__main__":
    main()
