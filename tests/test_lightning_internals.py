"""Every private Lightning attribute lightning_echo relies on (all of them are used in
lightning_echo/lightning_internals.py) still exists and still does what the package needs.

A Lightning upgrade that renames or changes one fails here, loudly, with the attribute's name, and
at run time with :class:`LightningInternalsChanged` instead of training silently without echoing."""

from __future__ import annotations

import inspect
import logging
import os
import time
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.demos.boring_classes import BoringModel, RandomDataset
from pytorch_lightning.utilities.combined_loader import CombinedLoader
from torch.utils.data import DataLoader, SequentialSampler

from conftest import quiet_trainer
from lightning_echo import lightning_internals as internals


def make_trainer(callbacks: list, **kwargs: Any) -> pl.Trainer:
    return quiet_trainer(callbacks, **{"max_steps": 3, **kwargs})


def loader(n: int = 64, **kwargs: Any) -> DataLoader:
    return DataLoader(RandomDataset(32, n), batch_size=8, **kwargs)


class Probe(pl.Callback):
    """Runs ``on_setup(trainer, pl_module)`` in ``setup`` (and the undo it may return in
    ``teardown``) and records the train loader the fit then used."""

    def __init__(self, on_setup) -> None:
        self.on_setup = on_setup
        self.undo: Any = None
        self.train_dataloader: Any = None

    def setup(self, trainer, pl_module, stage):
        self.undo = self.on_setup(trainer, pl_module)

    def teardown(self, trainer, pl_module, stage):
        if callable(self.undo):
            self.undo()

    def on_train_start(self, trainer, pl_module):
        self.train_dataloader = trainer.train_dataloader


def test_a_missing_internal_is_a_loud_error_naming_it() -> None:
    with pytest.raises(internals.LightningInternalsChanged, match=r"needs object\._combined_loader, which (pytorch_lightning|lightning\.pytorch) 2\.\d+\.\d+ does not have \(supported: pytorch-lightning / lightning 2\.2-2\.6\)"):
        internals._require(object(), "_combined_loader")


def test_seeding_is_quiet_on_every_supported_release(monkeypatch: pytest.MonkeyPatch) -> None:
    # Lightning 2.2's seed_everything has no verbose flag: its logger is silenced for the call.
    monkeypatch.setenv("PL_GLOBAL_SEED", "0")
    monkeypatch.setenv("PL_SEED_WORKERS", "0")
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append  # type: ignore[method-assign]
    seed_logger = logging.getLogger(pl.seed_everything.__module__)
    seed_logger.addHandler(handler)
    try:
        internals.seed_everything_quietly(7)
        first = torch.rand(3)
        internals.seed_everything_quietly(7)
        assert torch.equal(first, torch.rand(3)) and records == []
        pl.seed_everything(7, workers=True)  # the line it hides
        assert [record.getMessage() for record in records] == ["Seed set to 7"]
    finally:
        seed_logger.removeHandler(handler)
    assert seed_logger.level == logging.NOTSET and os.environ["PL_SEED_WORKERS"] == "1"


def test_the_fit_loop_has_the_train_source_and_combined_loader_attributes() -> None:
    trainer = make_trainer([])
    fit_loop = trainer.fit_loop
    assert hasattr(fit_loop, "_combined_loader") and fit_loop._combined_loader is None
    source = fit_loop._data_source
    for name in ("dataloader", "is_defined", "is_module", "instance"):
        assert hasattr(source, name), f"fit_loop._data_source.{name} is gone"
    assert hasattr(fit_loop.epoch_loop.val_loop._data_source, "instance")
    assert isinstance(fit_loop.epoch_loop.max_steps, int)


def test_wrapping_the_train_source_hands_lightning_the_wrapped_loader_on_every_fit() -> None:
    wrapped: list[Any] = []

    class Marked(list):
        """A list of the loader's batches, so it is a different object Lightning iterates."""

    def wrap(original):
        marked = Marked(original)
        wrapped.append(marked)
        return marked

    probe = Probe(lambda trainer, pl_module: internals.wrap_train_source(trainer, wrap))
    trainer = make_trainer([probe])
    trainer.fit(BoringModel(), loader())
    assert len(wrapped) == 1 and probe.train_dataloader is wrapped[0]
    trainer.fit_loop.epoch_loop.max_steps = 6
    trainer.fit(BoringModel(), loader())  # _combined_loader = None made Lightning request the loader again
    assert len(wrapped) == 2 and probe.train_dataloader is wrapped[1]


def test_the_validation_source_instance_is_what_fit_was_given() -> None:
    val = loader(16)
    found: list[Any] = []
    trainer = make_trainer([Probe(lambda trainer, pl_module: found.append(internals.validation_loader(trainer)))])
    trainer.fit(BoringModel(), loader(), val)
    assert found == [val]


def test_lightning_calls_on_before_batch_transfer_and_batch_to_device_through_the_wrapped_attributes() -> None:
    calls = {"before": 0, "to_device": 0}

    def counting(key):
        def wrapper(original):
            def call(*args, **kwargs):
                calls[key] += 1
                return original(*args, **kwargs)

            return call

        return wrapper

    def install(trainer, pl_module):
        internals.wrap_before_batch_transfer(pl_module, counting("before"))
        internals.wrap_batch_to_device(trainer, counting("to_device"))

    trainer = make_trainer([Probe(install)], max_steps=5)
    trainer.fit(BoringModel(), loader())
    assert calls == {"before": 5, "to_device": 5}


def test_prepare_train_dataloader_uses_lightnings_processing_signatures() -> None:
    for function, first in ((internals._process_dataloader, "trainer"), (internals._resolve_overfit_batches, "combined_loader")):
        assert next(iter(inspect.signature(function).parameters)) == first
    trainer = make_trainer([], overfit_batches=2)
    with pytest.warns(UserWarning, match="shuffling"):
        prepared = internals.prepare_train_dataloader(trainer, loader(shuffle=True))
    assert isinstance(prepared.sampler, SequentialSampler)


def test_requested_devices_reads_the_accelerator_connectors_devices_flag() -> None:
    trainer = make_trainer([])
    assert trainer._accelerator_connector._devices_flag in (1, "1", "auto", [0])
    assert internals.requested_devices(trainer) == 1


def test_lightning_resets_a_loader_by_setting_its_iterator_to_none() -> None:
    class Closing(internals.ClosedWhenLightningResets):
        def __init__(self) -> None:
            self.closed = 0

        def close(self) -> None:
            self.closed += 1

        def __iter__(self):
            return iter(loader())

        def __len__(self) -> int:
            return 8

    direct = Closing()
    CombinedLoader(direct).reset()
    assert direct.closed == 1
    in_fit = Closing()
    make_trainer([]).fit(BoringModel(), in_fit)
    assert in_fit.closed == 1  # when fit ends


def _alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.append(pid)
    return alive


def test_stop_dataloader_workers_stops_persistent_workers() -> None:
    workers = loader(num_workers=1, persistent_workers=True)
    next(iter(workers))
    pids = [worker.pid for worker in workers._iterator._workers]
    assert _alive(pids)
    internals.stop_dataloader_workers(workers)
    assert workers._iterator is None
    deadline = time.monotonic() + 10
    while _alive(pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pids)


def test_taking_the_batch_limit_lets_lightning_serve_every_batch() -> None:
    taken: list[Any] = []
    probe = Probe(lambda trainer, pl_module: taken.append(internals.take_train_batch_limit(trainer)))
    trainer = make_trainer([probe], max_steps=-1, max_epochs=1, limit_train_batches=3)
    trainer.fit(BoringModel(), loader())
    limit, undo = taken[0]
    assert limit == 3 and trainer.global_step == 8  # Lightning saw no limit
    undo()
    assert trainer.limit_train_batches == 3


def test_a_max_steps_bound_is_what_lightning_estimates_for_a_loader_without_length() -> None:
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(torch.randn(16, 32))

    estimates: list[Any] = []

    class Estimating(BoringModel):
        def configure_optimizers(self):
            estimates.append(self.trainer.estimated_stepping_batches)
            return super().configure_optimizers()

    undo: list[Any] = []
    trainer = make_trainer([Probe(lambda trainer, pl_module: undo.append(internals.bound_max_steps(trainer, 40)))],
                           max_steps=-1, max_epochs=2)
    trainer.fit(Estimating(), DataLoader(Stream(), batch_size=4))
    assert estimates == [40] and trainer.global_step == 8  # a bound: the epochs still end the run
    undo[0]()
    assert trainer.max_steps == -1


def test_the_multiprocessing_iterator_has_the_attributes_lightning_stops_workers_with() -> None:
    workers = loader(num_workers=1)
    iterator = iter(workers)
    assert callable(getattr(iterator, "_shutdown_workers", None)) and iterator._workers
    del iterator


def test_lifted_fit_limits_let_only_should_stop_end_the_fit() -> None:
    class StopAt(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            trainer.should_stop = trainer.global_step >= 12

    undo: list[Any] = []
    probe = Probe(lambda trainer, pl_module: undo.append(internals.lift_fit_limits(trainer)))
    trainer = make_trainer([probe, StopAt()], max_steps=2, max_epochs=1, min_steps=20)
    trainer.fit(BoringModel(), loader())  # 8 batches per epoch
    assert trainer.global_step == 12  # past max_steps, max_epochs, and stopped before min_steps
    undo[0]()
    assert (trainer.max_steps, trainer.max_epochs, trainer.min_steps) == (2, 1, 20)


def test_the_launcher_without_observer_is_lightnings_subprocess_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    from pytorch_lightning.strategies import DDPStrategy
    from pytorch_lightning.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    assert callable(getattr(_SubprocessScriptLauncher, "_call_children_scripts", None))
    monkeypatch.setenv("LOCAL_RANK", "0")  # as in a process a launcher started: nothing to start here
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))  # the launcher leaves the threads alone
    strategy = make_trainer([], devices=1, strategy=DDPStrategy()).strategy
    internals.use_launcher_that_outlives_its_children(strategy, num_processes=1, num_nodes=1)
    assert isinstance(strategy.launcher, _SubprocessScriptLauncher)
    assert strategy.launcher.launch(lambda value: value * 2, 21) == 42 and strategy.launcher.procs == []
