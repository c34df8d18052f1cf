"""Two-process (gloo) DDP run with adaptive echoing; each rank writes what it did to a JSON file.

Run as `python ddp_adaptive_echo.py OUT_DIR`; Lightning launches the second process itself.
Rank 1's loader is three times slower than rank 0's, so the ranks' local "fresh batch ready"
flags disagree and only the agreement keeps their optimizer steps in lockstep.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import TensorDataset

from lightning_echo.data.pipeline import throttled_loader
from lightning_echo.echo import DataEchoing


class Model(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(8, 2)
        self.served: list[list[float]] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.served.append(x[:, 0].tolist())
        return torch.nn.functional.cross_entropy(self.layer(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Data(pl.LightningDataModule):
    def train_dataloader(self):
        rank = self.trainer.global_rank
        x = torch.randn(256, 8, generator=torch.Generator().manual_seed(0))
        y = (x[:, 0] > 0).long()
        return throttled_loader(TensorDataset(x, y), batch_size=8, seconds_per_batch=0.1 * (1 + 2 * rank))


class RecordAgreement(pl.Callback):
    """Records the local flag each rank brings to every echo decision and the agreed answer."""

    def __init__(self) -> None:
        self.decisions: list[list[bool]] = []

    def setup(self, trainer, pl_module, stage):
        original = trainer.strategy.reduce_boolean_decision

        def recording(decision: bool, all: bool = True) -> bool:
            agreed = original(decision, all=all)
            self.decisions.append([bool(decision), bool(agreed)])
            return agreed

        trainer.strategy.reduce_boolean_decision = recording


def main() -> None:
    out = Path(sys.argv[1])
    echo = DataEchoing(factor="auto", max_factor=4)
    record = RecordAgreement()
    model = Model()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_steps=60,
        callbacks=[record, echo],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=Data())
    weights = [p.detach().flatten().tolist() for p in model.parameters()]
    result = {
        "rank": trainer.global_rank,
        "global_step": trainer.global_step,
        "fresh_batches": echo.fresh_batches,
        "echoed_steps": echo.echoed_steps,
        "decisions": record.decisions,
        "steps_trained": len(model.served),
        "weights": weights,
    }
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
