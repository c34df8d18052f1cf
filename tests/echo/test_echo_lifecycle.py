"""DataEchoing over the life of a real project (issue 10, cases 3, 4, 5 and 9): DataLoader worker
processes, the sampler's epoch under one device and DDP, ``overfit_batches`` and
``limit_train_batches``, what Lightning is told about an epoch's length (schedulers, validation
intervals), Lightning's tuner, ``ddp_spawn`` and a callback reused for a second ``fit``.
Every test is a real ``Trainer.fit`` on tiny data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.demos.boring_classes import BoringModel
from pytorch_lightning.tuner import Tuner
from torch.utils.data import DataLoader, IterableDataset, Sampler, TensorDataset
from torchdata.nodes import Loader

from conftest import SCRIPTS, quiet_trainer
from lightning_echo.core.echo_factor import steps_per_pass
from lightning_echo.data.nodes import IterableNode
from lightning_echo.echo import DataEchoing
from lightning_echo.echo.node import BatchEcho, PassLimit
from lightning_echo.errors import ConfigError

N, BATCH = 64, 8  # 8 fresh batches per epoch
SCRIPT = SCRIPTS / "ddp_echo_epochs.py"


def make_trainer(callbacks: list, **kwargs: Any) -> pl.Trainer:
    return quiet_trainer(callbacks, **{"max_epochs": 1, **kwargs})


def indexed_examples(n: int = N) -> TensorDataset:
    """Example i is the 32 features all equal to i, so a batch tells which examples it holds."""
    return TensorDataset(torch.arange(n, dtype=torch.float32).unsqueeze(1).repeat(1, 32))


class IndexModel(BoringModel):
    """Records, per epoch, the first feature of the examples of every batch it trains on (their
    indices, for :func:`indexed_examples`)."""

    def __init__(self) -> None:
        super().__init__()
        self.served: dict[int, list[tuple[int, ...]]] = {}

    def training_step(self, batch, batch_idx):
        (x,) = batch
        self.served.setdefault(self.current_epoch, []).append(tuple(round(v, 4) for v in x[:, 0].tolist()))
        return super().training_step(x, batch_idx)

    def validation_step(self, batch, batch_idx):
        (x,) = batch
        return super().validation_step(x, batch_idx)


def groups(batches: list[tuple[int, ...]]) -> list[tuple[tuple[int, ...], int]]:
    """Consecutive runs of the same batch: (batch, times served in a row)."""
    runs: list[tuple[tuple[int, ...], int]] = []
    for batch in batches:
        if runs and runs[-1][0] == batch:
            runs[-1] = (batch, runs[-1][1] + 1)
        else:
            runs.append((batch, 1))
    return runs


# -- case 3: no DataLoader worker process or thread outlives fit --------------------------------------
def child_processes() -> set[int]:
    """Live child processes of this process (from /proc; zombies are not alive)."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and fields[0] != "Z":
            found.add(int(entry))
    return found


def wait_until_gone(processes_before: set[int], threads_before: set[threading.Thread], deadline_s: float = 10.0):
    """The child processes and threads started since, once they stopped or the deadline passed."""
    end = time.monotonic() + deadline_s
    while True:
        processes = child_processes() - processes_before
        threads = {t for t in threading.enumerate() if t.is_alive()} - threads_before
        if (not processes and not threads) or time.monotonic() > end:
            return processes, sorted(t.name for t in threads)
        time.sleep(0.05)


class FailingModel(IndexModel):
    def training_step(self, batch, batch_idx):
        if batch_idx == 5:
            raise RuntimeError("step 5 failed")
        return super().training_step(batch, batch_idx)


class FailingValidation(IndexModel):
    def validation_step(self, batch, batch_idx):
        raise RuntimeError("validation failed")


@pytest.mark.parametrize(
    "factor, persistent, model_class, trainer_kwargs, error",
    [
        pytest.param(2, True, IndexModel, {"max_epochs": 2}, None, id="persistent-workers"),
        pytest.param(2, False, IndexModel, {"max_steps": 5}, None, id="max_steps-mid-epoch"),
        pytest.param("auto", True, IndexModel, {"max_steps": 5}, None, id="auto-persistent-max_steps"),
        pytest.param(2, False, FailingModel, {}, "step 5 failed", id="exception-in-training_step"),
        pytest.param(2, True, FailingValidation, {"limit_val_batches": 2}, "validation failed", id="exception-in-validation"),
    ],
)
def test_dataloader_workers_do_not_outlive_fit(factor, persistent, model_class, trainer_kwargs, error) -> None:
    processes_before = child_processes()
    threads_before = {t for t in threading.enumerate() if t.is_alive()}
    dataset = indexed_examples()
    loader = DataLoader(dataset, batch_size=BATCH, num_workers=2, persistent_workers=persistent)
    echo = DataEchoing(factor=factor)
    trainer = make_trainer([echo], **trainer_kwargs)
    val = DataLoader(dataset, batch_size=BATCH) if trainer_kwargs.get("limit_val_batches") else None
    if error is None:
        trainer.fit(model_class(), loader, val)
    else:
        with pytest.raises(RuntimeError, match=error):
            trainer.fit(model_class(), loader, val)
    assert echo.steps > 0
    processes, threads = wait_until_gone(processes_before, threads_before)
    assert not processes, f"worker processes outlived fit: {processes}"
    assert not threads, f"threads outlived fit: {threads}"


# -- case 4: every epoch has a new order ----------------------------------------------------------------
class EpochShuffle(Sampler):
    """Shuffles by the epoch it was told last (like DistributedSampler); records every set_epoch."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.epoch = 0
        self.told: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.told.append(epoch)
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        return iter(torch.randperm(self.n, generator=torch.Generator().manual_seed(self.epoch)).tolist())

    def __len__(self) -> int:
        return self.n


def test_every_epoch_tells_the_sampler_its_epoch_and_gets_a_new_order() -> None:
    sampler = EpochShuffle(N)
    model = IndexModel()
    trainer = make_trainer([DataEchoing(factor=2)], max_epochs=3)
    trainer.fit(model, DataLoader(indexed_examples(), batch_size=BATCH, sampler=sampler))
    assert sampler.told == [0, 1, 2]
    for epoch in range(3):
        order = torch.randperm(N, generator=torch.Generator().manual_seed(epoch)).tolist()
        expected = [tuple(order[i: i + BATCH]) for i in range(0, N, BATCH)]
        assert groups(model.served[epoch]) == [(batch, 2) for batch in expected]
    assert model.served[0] != model.served[1] != model.served[2]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "ddp_spawn"])
def test_every_rank_tells_its_sampler_the_epoch_under_ddp(tmp_path: Path, strategy: str) -> None:
    """Also covers case 9 under ddp_spawn: the launching process reports rank 0's counters."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("LOCAL_RANK", None)
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path), strategy], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for rank in ranks:
        assert rank["epochs_told"] == [0, 1]
        assert rank["global_step"] == 16 and rank["counters"] == [16, 8, 8]
        epochs = [groups([tuple(b) for b in rank["served"][str(e)]]) for e in (0, 1)]
        assert all(times == 2 for epoch in epochs for _, times in epoch)  # each fresh batch echoed once
        fresh = [[i for batch, _ in epoch for i in batch] for epoch in epochs]
        assert fresh[0] != fresh[1]  # a new order in the second epoch
    for epoch in ("0", "1"):  # the ranks split every epoch between them
        seen = [{i for batch in rank["served"][epoch] for i in batch} for rank in ranks]
        assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(64))
    launcher = json.loads((tmp_path / "launcher.json").read_text())
    assert launcher["counters"] == ranks[0]["counters"]


def test_overfit_batches_serves_whole_echo_groups_of_the_same_batches_every_epoch() -> None:
    model = IndexModel()
    echo = DataEchoing(factor=3)
    trainer = make_trainer([echo], max_epochs=2, overfit_batches=2)
    with pytest.warns(UserWarning, match="shuffling"):  # Lightning's own warning; it turns shuffling off
        trainer.fit(model, DataLoader(indexed_examples(), batch_size=BATCH, shuffle=True))
    first_two = [tuple(range(0, 8)), tuple(range(8, 16))]
    for epoch in (0, 1):
        assert groups(model.served[epoch]) == [(batch, 3) for batch in first_two]
    assert trainer.global_step == echo.steps == 12 and echo.fresh_batches == 4


# -- case 9: limit_train_batches counts fresh batches ---------------------------------------------------
@pytest.mark.parametrize("limit", [5, 0.625])
def test_limit_train_batches_counts_fresh_batches(limit) -> None:
    model = IndexModel()
    echo = DataEchoing(factor=3)
    trainer = make_trainer([echo], max_epochs=2, limit_train_batches=limit)
    trainer.fit(model, DataLoader(indexed_examples(), batch_size=BATCH))
    first_five = [tuple(range(i, i + BATCH)) for i in range(0, 5 * BATCH, BATCH)]
    for epoch in (0, 1):
        assert groups(model.served[epoch]) == [(batch, 3) for batch in first_five]  # no group cut short
    assert trainer.global_step == echo.steps == 30 and echo.fresh_batches == 10
    assert trainer.limit_train_batches == limit  # the Trainer's setting is back after fit


def test_a_fraction_limit_on_a_loader_without_length_is_refused_in_one_line() -> None:
    class Stream(IterableDataset):
        def __iter__(self):
            return iter(torch.randn(N, 32))

    model = IndexModel()
    trainer = make_trainer([DataEchoing(factor=2)], limit_train_batches=0.5)
    with pytest.raises(ConfigError, match=r"^limit_train_batches=0\.5 is not allowed: a fraction needs .* \(an int\)$"):
        trainer.fit(model, DataLoader(Stream(), batch_size=BATCH))
    assert model.served == {}


# -- case 5: what Lightning is told about an epoch's length ---------------------------------------------
class OneCycleModel(IndexModel):
    """The standard recipe: a OneCycleLR over ``trainer.estimated_stepping_batches``, stepped every step."""

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        self.total_steps = self.trainer.estimated_stepping_batches
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=self.total_steps)
        return [optimizer], [{"scheduler": scheduler, "interval": "step"}]


def test_a_non_integer_factor_gives_lightning_the_exact_epoch_length() -> None:
    model = OneCycleModel()
    echo = DataEchoing(factor=2.5, seed=1)
    trainer = make_trainer([echo], max_epochs=3)
    trainer.fit(model, DataLoader(indexed_examples(), batch_size=BATCH))
    # 8 fresh batches per epoch: 4 served 3 times, 4 served twice -> 20 steps, every epoch.
    assert model.total_steps == 60 == trainer.global_step == echo.steps
    patterns = [[times for _, times in groups(model.served[epoch])] for epoch in range(3)]
    assert all(sorted(pattern) == [2] * 4 + [3] * 4 for pattern in patterns)
    assert patterns[0] != patterns[1]  # which batches get the third serve is drawn afresh every epoch


def test_auto_factor_bounds_the_steps_for_the_scheduler() -> None:
    model = OneCycleModel()
    echo = DataEchoing(factor="auto", max_factor=3)
    trainer = make_trainer([echo], max_epochs=2)
    trainer.fit(model, DataLoader(indexed_examples(), batch_size=BATCH))
    assert model.total_steps == 2 * 8 * 3  # max_epochs x fresh batches x max_factor
    assert 16 <= trainer.global_step == echo.steps <= model.total_steps
    assert trainer.max_steps == -1  # the bound was only for the run


def test_auto_factor_bound_follows_the_fresh_batch_budget() -> None:
    model = OneCycleModel()
    echo = DataEchoing(factor="auto", max_factor=3, max_fresh_batches=5)
    trainer = make_trainer([echo], max_epochs=10)
    trainer.fit(model, DataLoader(indexed_examples(), batch_size=BATCH))
    assert model.total_steps == 5 * 3 and echo.fresh_batches == 5


class CountValidations(pl.Callback):
    def __init__(self) -> None:
        self.at_steps: list[int] = []

    def on_validation_end(self, trainer, pl_module):
        self.at_steps.append(trainer.global_step)


def test_val_check_interval_fraction_works_with_a_non_integer_factor() -> None:
    count = CountValidations()
    trainer = make_trainer([DataEchoing(factor=2.5), count], max_epochs=2, val_check_interval=0.25, limit_val_batches=1)
    dataset = indexed_examples()
    trainer.fit(IndexModel(), DataLoader(dataset, batch_size=BATCH), DataLoader(dataset, batch_size=BATCH))
    assert count.at_steps == [5, 10, 15, 20, 25, 30, 35, 40]  # a quarter of each 20-step epoch


@pytest.mark.parametrize("echo", [DataEchoing(factor="auto"), DataEchoing(factor=2, kind="example")], ids=["auto", "example"])
def test_val_check_interval_fraction_is_refused_up_front_where_an_epoch_has_no_known_length(echo) -> None:
    model = IndexModel()
    trainer = make_trainer([echo], val_check_interval=0.25, limit_val_batches=1)
    dataset = indexed_examples()
    with pytest.raises(ConfigError, match=r"^val_check_interval=0\.25 is not allowed: .*val_check_interval=N, an int"):
        trainer.fit(model, DataLoader(dataset, batch_size=BATCH), DataLoader(dataset, batch_size=BATCH))
    assert model.served == {}
    assert trainer.limit_train_batches == 1.0 and trainer.val_check_interval == 0.25


# -- case 9: the tuner, a reused callback --------------------------------------------------------------
class LRModel(IndexModel):
    def __init__(self) -> None:
        super().__init__()
        self.lr = 0.01

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def _lr_find(with_echo: bool, tmp_path: Path) -> tuple[Any, LRModel, pl.Trainer, DataEchoing]:
    pl.seed_everything(0)
    model = LRModel()
    echo = DataEchoing(factor=4)
    trainer = make_trainer([echo] if with_echo else [], default_root_dir=tmp_path, max_epochs=3)
    loader = DataLoader(TensorDataset(torch.randn(256, 32)), batch_size=4)
    finder = Tuner(trainer).lr_find(model, loader, num_training=20, early_stop_threshold=None)
    return finder, model, trainer, echo


def test_lr_find_searches_on_fresh_batches_then_fit_echoes(tmp_path: Path) -> None:
    plain, _, _, _ = _lr_find(False, tmp_path)
    echoed, model, trainer, echo = _lr_find(True, tmp_path)
    searched = model.served[0]
    assert len(searched) == 20 and len(set(searched)) == 20  # no batch served twice while searching
    assert echoed.results == plain.results and echoed.suggestion() == plain.suggestion()
    assert echo.steps == 0  # the search is not counted
    model.served.clear()
    trainer.fit(model, DataLoader(indexed_examples(), batch_size=BATCH))
    assert echo.steps == trainer.global_step == 3 * 8 * 4 and echo.fresh_batches == 24


def test_a_reused_callback_counts_like_global_step() -> None:
    loader = DataLoader(indexed_examples(), batch_size=BATCH)
    echo = DataEchoing(factor=2)
    trainer = make_trainer([echo], max_epochs=1)
    trainer.fit(IndexModel(), loader)
    assert echo.steps == trainer.global_step == 16
    trainer.fit_loop.max_epochs = 2  # the same Trainer trains on: both keep counting
    trainer.fit(IndexModel(), loader)
    assert echo.steps == trainer.global_step == 32 and echo.fresh_batches == 16
    fresh_trainer = make_trainer([echo], max_epochs=1)  # a new Trainer starts from zero: both do
    fresh_trainer.fit(IndexModel(), loader)
    assert echo.steps == fresh_trainer.global_step == 16 and echo.fresh_batches == 8


# -- the echo stage behind the exact epoch length (non-integer factors) -----------------------------------
def _serve_passes(node, passes: int) -> list[list[int]]:
    """Fresh index of every served batch, pass by pass (as a Loader restarts the node each epoch)."""
    loader, served = Loader(node), []
    for _ in range(passes):
        served.append([int(batch[0]) for batch in loader])
    return served


def test_every_pass_of_a_non_integer_factor_has_the_same_length_and_its_own_draw() -> None:
    source = IterableNode([torch.tensor([float(i)]) for i in range(10)])
    served = _serve_passes(BatchEcho(source, factor=2.3, seed=4, pass_batches=10), 3)
    assert [len(p) for p in served] == [steps_per_pass(2.3, 10)] * 3 == [23] * 3
    per_pass = [[p.count(i) for i in range(10)] for p in served]
    assert all(sorted(counts) == [2] * 7 + [3] * 3 for counts in per_pass)
    assert per_pass[0] != per_pass[1]  # which batches get the extra serve is drawn afresh each pass


def test_a_pass_limit_serves_the_first_batches_of_every_pass() -> None:
    source = IterableNode([torch.tensor([float(i)]) for i in range(10)])
    assert _serve_passes(BatchEcho(PassLimit(source, 3), factor=2), 2) == [[0, 0, 1, 1, 2, 2]] * 2


def test_resuming_in_the_middle_of_a_pass_serves_what_the_uninterrupted_pass_serves() -> None:
    def echo() -> BatchEcho:
        return BatchEcho(IterableNode([torch.tensor([float(i)]) for i in range(10)]), factor=2.5, seed=9, pass_batches=10)

    whole = _serve_passes(echo(), 2)
    loader = Loader(echo())
    first = [int(b[0]) for b in loader]
    iterator = iter(loader)
    second = [int(next(iterator)[0]) for _ in range(7)]
    state = loader.state_dict()
    resumed = Loader(echo())
    resumed.load_state_dict(state)
    second += [int(b[0]) for b in resumed]
    assert [first, second] == whole


def test_scale_batch_size_searches_on_fresh_batches_then_fit_echoes() -> None:
    class Sized(IndexModel):
        def __init__(self) -> None:
            super().__init__()
            self.batch_size = 2

        def train_dataloader(self):
            return DataLoader(indexed_examples(), batch_size=self.batch_size)

    model = Sized()
    echo = DataEchoing(factor=3)
    trainer = make_trainer([echo])
    found = Tuner(trainer).scale_batch_size(model, mode="power", steps_per_trial=2, max_trials=3)
    searched = model.served[0]
    assert found == 8 and [len(b) for b in searched] == [2, 2, 4, 4, 8, 8] and len(set(searched)) == 6
    model.served.clear()
    trainer.fit(model)
    assert echo.steps == trainer.global_step == 24 and echo.fresh_batches == 8
