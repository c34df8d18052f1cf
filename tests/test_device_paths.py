"""The paths that matter on an accelerator, each run on the CPU and, marked ``cuda``, on a CUDA
device when there is one (``pytest -m cuda``; ``bench/gpu_run.py`` runs them on the device):
data echoing moves a fresh batch to the device once and its echoes reuse it, under bf16-mixed and
a compiled module too, and resumes mid-group exactly; ``auto`` echoing decides on the device; the simulated learners' snapshots
live on the device; the parameter server's exchange copies a device gradient into its host
message buffer and the parameters back.

On CUDA the host runs ahead of the kernels, so "the next fresh batch is ready" is decided on the
host side, where the loader delivers it (a batch the loader has handed over is ready; the kernels
of the current step need not have finished): echoing never waits for the device to drain.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.demos.boring_classes import BoringModel, RandomDataset
from torch.utils.data import DataLoader

from conftest import quiet_trainer
from lightning_echo.echo import DataEchoing
from lightning_echo.stragglers import SimulatedLearnersStrategy
from lightning_echo.stragglers.processes.exchange import FlatExchange

CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not CUDA, reason="no CUDA device")])]
FEATURES, ROWS, BATCH = 32, 64, 8


def accelerator(device: str) -> str:
    return "gpu" if device == "cuda" else "cpu"


class Transfers(BoringModel):
    """Counts the transfers to the device and records each step's batch storage."""

    def __init__(self) -> None:
        super().__init__()
        self.transfers = 0
        self.pointers: list[int] = []
        self.devices: set[str] = set()

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        self.transfers += 1
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        self.pointers.append(batch.data_ptr())
        self.devices.add(batch.device.type)
        return super().training_step(batch, batch_idx)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_a_fresh_batch_goes_to_the_device_once_and_its_echoes_reuse_it(device: str, precision: str) -> None:
    model, echo = Transfers(), DataEchoing(factor=3)
    trainer = quiet_trainer([echo], accelerator=accelerator(device), devices=1, precision=precision, max_epochs=1)
    trainer.fit(model, DataLoader(RandomDataset(FEATURES, ROWS), batch_size=BATCH))
    fresh = ROWS // BATCH
    assert echo.fresh_batches == fresh and echo.steps == 3 * fresh and model.devices == {device}
    assert model.transfers == fresh  # one host-to-device copy per fresh batch, none per echo
    groups = [model.pointers[i:i + 3] for i in range(0, len(model.pointers), 3)]
    assert all(len(set(group)) == 1 for group in groups)  # each echo trains on the fresh batch's device memory


@pytest.mark.parametrize("device", DEVICES)
def test_auto_echoing_decides_on_the_device(device: str) -> None:
    echo = DataEchoing(factor="auto", max_factor=4)
    trainer = quiet_trainer([echo], accelerator=accelerator(device), devices=1, max_epochs=1)
    trainer.fit(Transfers(), DataLoader(RandomDataset(FEATURES, ROWS), batch_size=BATCH))
    assert echo.fresh_batches == ROWS // BATCH and 1.0 <= echo.effective_factor <= 4.0


@pytest.mark.parametrize("device", DEVICES)
def test_a_compiled_module_echoes(device: str) -> None:
    model = Transfers()
    model.layer = torch.compile(model.layer, backend="aot_eager" if device == "cpu" else "inductor")
    echo = DataEchoing(factor=2)
    trainer = quiet_trainer([echo], accelerator=accelerator(device), devices=1, max_epochs=1)
    trainer.fit(model, DataLoader(RandomDataset(FEATURES, ROWS), batch_size=BATCH))
    assert echo.steps == 2 * (ROWS // BATCH) and model.transfers == ROWS // BATCH


@pytest.mark.parametrize("device", DEVICES)
def test_simulated_learners_keep_their_snapshots_on_the_device(device: str) -> None:
    strategy = SimulatedLearnersStrategy("async", learners=4, device=device)
    kept: set[str] = set()

    class Watch(pl.Callback):
        def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
            kept.update(t.device.type for ts in strategy.store.snapshots.values() for t in ts)

    trainer = pl.Trainer(strategy=strategy, accelerator=accelerator(device), max_steps=12, callbacks=[Watch()],
                         logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    model = BoringModel()
    trainer.fit(model, DataLoader(RandomDataset(FEATURES, 16 * BATCH), batch_size=BATCH))
    assert trainer.global_step == 12 and kept == {device}  # stale copies where the parameters are
    assert {p.device.type for p in model.parameters()} == {device}


@pytest.mark.parametrize("device", DEVICES)
def test_the_parameter_servers_exchange_copies_device_tensors_through_its_host_buffer(device: str) -> None:
    torch.manual_seed(0)
    layer = torch.nn.Linear(FEATURES, 4).to(device)
    params = list(layer.parameters())
    exchange = FlatExchange(params)
    flat = torch.empty(exchange.numel)  # the message buffer: host memory, as the gloo channels need
    layer(torch.randn(8, FEATURES, device=device)).sum().backward()
    exchange.pack_gradient([p.grad for p in params], loss=0.5, samples=8, flat=flat)
    grads = [torch.empty_like(p) for p in params]
    assert exchange.unpack_gradient(flat, grads) == (0.5, 8.0)
    assert all(g.device.type == device and torch.equal(g, p.grad) for g, p in zip(grads, params))
    exchange.pack_parameters(params, flat)
    with torch.no_grad():
        for p in params:
            p.zero_()
    exchange.unpack_parameters(flat, params)
    assert all(p.device.type == device for p in params) and float(torch.cat([p.detach().abs().reshape(-1) for p in params]).sum()) > 0


class Logistic(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(5, 2)
        self.served: list[tuple[float, ...]] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        self.served.append(tuple(x[:, 0].tolist()))
        return torch.nn.functional.cross_entropy(self.layer(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.3, momentum=0.9)


@pytest.mark.parametrize("device", DEVICES)
def test_a_resume_in_the_middle_of_an_echo_group_on_the_device_matches_the_uninterrupted_run(device: str, tmp_path) -> None:
    from lightning_echo.data.pipeline import throttled_loader

    def fit(max_steps: int, model: Logistic, ckpt_in: Any = None, ckpt_out: Any = None) -> Logistic:
        pl.seed_everything(0, verbose=False)
        x = torch.randn(96, 5, generator=torch.Generator().manual_seed(1))
        loader = throttled_loader(torch.utils.data.TensorDataset(x, (x.sum(dim=1) > 0).long()), batch_size=8, seed=5)
        trainer = quiet_trainer([DataEchoing(factor=2.5, seed=7)], accelerator=accelerator(device), devices=1,
                                max_steps=max_steps)
        trainer.fit(model, loader, ckpt_path=ckpt_in)
        if ckpt_out is not None:
            trainer.save_checkpoint(ckpt_out)
        return model

    whole = fit(40, Logistic())
    first = fit(17, Logistic(), ckpt_out=tmp_path / "mid.ckpt")  # 17: inside a group of 2 or 3 serves
    resumed = fit(40, Logistic(), ckpt_in=str(tmp_path / "mid.ckpt"))
    assert first.served + resumed.served == whole.served  # every fresh batch served as often, in order
    for a, b in zip(whole.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b)
