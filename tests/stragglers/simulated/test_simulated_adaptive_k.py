"""``stale.k=auto`` on SimulatedLearnersStrategy: K chosen per update from the simulated compute
times and the training loss, logged as ``stale/k``, continued bit for bit by a resumed run; the
settings and Trainer limits it refuses, in one line; the command line."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Optional

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from conftest import main_error, run_cli, single_run_overrides
from lightning_echo.callbacks import TrainingProgress
from lightning_echo.core.adaptive_k import AdaptiveK
from lightning_echo.errors import ConfigError
from lightning_echo.metric_names import Stale
from lightning_echo.stragglers import SimulatedLearnersStrategy, StragglerSettings

LEARNERS = 4
WINDOW = 40  # updates per loss window: K rises within a few hundred updates (the default, 64 P, takes thousands)


class Linear(pl.LightningModule):
    """Least squares on noisy (x, y) batches, plain SGD: the loss reaches its floor in a few hundred updates."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(6, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return 0.5 * ((self.layer(x).squeeze(-1) - y) ** 2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def data() -> DataLoader:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(400, 6, generator=generator)
    y = x @ torch.arange(1.0, 7.0) + 0.5 * torch.randn(400, generator=generator)
    return DataLoader(TensorDataset(x, y), batch_size=4)


def strategy(variant: str = "k_async", window: Optional[int] = None, **kwargs) -> SimulatedLearnersStrategy:
    """Four learners, one five times slower; ``window``: the rule's, in updates (None: its default, 64 P)."""
    options = dict(learners=LEARNERS, k="auto", delay={"distribution": "exponential", "speeds": [1, 1, 1, 5]}, seed=3)
    options.update(kwargs)
    rule = None if window is None else AdaptiveK(variant, options["learners"], window=window)
    return SimulatedLearnersStrategy(variant, adaptive_k=rule, **options)


def trainer(strategy_: SimulatedLearnersStrategy, max_steps: int, **kwargs) -> pl.Trainer:
    options = dict(max_steps=max_steps, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                   enable_model_summary=False, limit_val_batches=0)
    options.update(kwargs)
    return pl.Trainer(strategy=strategy_, **options)


def logged_k(log_dir: str) -> list[int]:
    with open(Path(log_dir) / "metrics.csv") as file:
        return [int(float(row[Stale.K])) for row in csv.DictReader(file) if row.get(Stale.K)]


@pytest.mark.slow
@pytest.mark.parametrize("variant, steps, checkpoint_at", [("k_async", 700, 240), ("k_batch_sync", 400, 171)])
def test_auto_logs_k_per_update_and_a_resumed_run_equals_the_uninterrupted_one(
        tmp_path: Path, variant: str, steps: int, checkpoint_at: int) -> None:
    whole, whole_model = strategy(variant, WINDOW), Linear()
    logger = CSVLogger(tmp_path, name="whole")
    trainer(whole, steps, logger=logger, log_every_n_steps=1, callbacks=[TrainingProgress()]).fit(whole_model, data())
    changes = whole.adaptive.changes
    assert len(changes) >= 3 and changes[-1][1] > changes[1][1]  # the warm-up's K, the speeds', then more
    # Every update averaged the K the rule had chosen when it was planned, and is logged with it.
    ks = logged_k(logger.log_dir)
    assert len(ks) == steps and [k for _, k in changes] == [k for i, k in enumerate(ks) if i == 0 or k != ks[i - 1]]
    assert any(0 < seen < checkpoint_at for seen, _ in changes) and any(seen > checkpoint_at for seen, _ in changes)

    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=checkpoint_at, save_top_k=-1)
    trainer(strategy(variant, WINDOW), checkpoint_at, enable_checkpointing=True, callbacks=[checkpoints]).fit(Linear(), data())
    (path,) = sorted((tmp_path / "ckpt").glob("*.ckpt"))
    resumed, resumed_model = strategy(variant, WINDOW), Linear()
    trainer(resumed, steps).fit(resumed_model, data(), ckpt_path=str(path))
    assert resumed.clock_s == whole.clock_s
    assert resumed.adaptive.state_dict() == whole.adaptive.state_dict()
    assert all(torch.equal(a, b) for a, b in zip(resumed_model.parameters(), whole_model.parameters()))


def test_the_first_k_leaves_out_two_very_slow_learners(tmp_path: Path) -> None:
    fast_and_slow = {"distribution": "constant", "value": 1.0, "speeds": [1, 1, 1, 1, 1, 1, 10, 10]}
    simulated = strategy("k_async", learners=8, delay=fast_and_slow)
    logger = CSVLogger(tmp_path, name="speeds")
    trainer(simulated, 120, logger=logger, log_every_n_steps=1, callbacks=[TrainingProgress()]).fit(Linear(), data())
    ks = logged_k(logger.log_dir)
    # K = 1 for the warm-up's 8 P = 64 updates (the slow learners delivered once, at t = 10, not the 4 times
    # that would end it earlier), then 6; update 65 is the first planned once the rule has seen 64.
    first = ks.index(6)
    assert first == 65 and set(ks[:first]) == {1} and set(ks[first:]) == {6}
    assert simulated.adaptive.base == 6


def test_settings_and_limits_auto_refuses_in_one_line(tmp_path: Path) -> None:
    for variant in ("sync", "async", "ringmaster"):
        with pytest.raises(ConfigError, match="stale.k='auto'"):
            SimulatedLearnersStrategy(variant, learners=LEARNERS, k="auto")
    with pytest.raises(ConfigError, match="stale.k='abc'.*positive integer, auto"):
        StragglerSettings("k_async", k="abc")
    with pytest.raises(ConfigError, match="stale.momentum_correction"):
        StragglerSettings("k_async", k="auto", momentum_correction="implicit")
    with pytest.raises(ConfigError) as error:
        trainer(strategy(), -1, max_epochs=1).fit(Linear(), data())
    assert "trainer.max_steps=-1" in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="adaptive_k.*this run's variant and learners: k_async, 4"):
        SimulatedLearnersStrategy("k_async", learners=LEARNERS, k="auto", adaptive_k=AdaptiveK("k_async", 8))
    with pytest.raises(ConfigError, match="adaptive_k.*given with k='auto'"):
        SimulatedLearnersStrategy("k_async", learners=LEARNERS, k=2, adaptive_k=AdaptiveK("k_async", LEARNERS))


def test_a_checkpoint_resumes_only_with_the_same_kind_of_k(tmp_path: Path) -> None:
    checkpoints = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=5, save_top_k=-1)
    trainer(strategy(k=2), 5, enable_checkpointing=True, callbacks=[checkpoints]).fit(Linear(), data())
    (path,) = sorted(tmp_path.glob("*.ckpt"))
    with pytest.raises(ValueError, match="saved without stale.k=auto"):
        trainer(strategy(), 10).fit(Linear(), data(), ckpt_path=str(path))


def test_labels_and_report_keys_say_auto() -> None:
    from lightning_echo.stragglers.labels import effective_k, is_synchronous, straggler_label

    assert straggler_label(StragglerSettings("k_async", k="auto"), 8) == "k_async K=auto of P=8"
    assert straggler_label(StragglerSettings("rennala", k="auto"), 8, backend="processes") == "rennala B=auto, P=8 (processes)"
    assert effective_k(StragglerSettings("k_sync", k="auto"), 8) == "auto"
    assert not is_synchronous(StragglerSettings("k_sync", k="auto"), 8)  # its first updates wait for all, its later ones may not


@pytest.mark.slow
def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    result = run_cli(["algorithm=k_async", "stale.learners=4", "stale.k=auto", "trainer.max_steps=20",
                      "trainer.log_every_n_steps=1", *single_run_overrides()], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "le_outputs" / "runs").iterdir()
    record = json.loads((run_dir / "run.json").read_text())
    assert record["config"]["label"] == "k_async K=auto of P=4" and record["config"]["stale_k"] == "auto"
    assert Stale.K in (run_dir / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "stale.k='abc' is not allowed" in main_error(capsys, ["algorithm=k_async", "stale.k=abc", *single_run_overrides()])
    refused = main_error(capsys, ["algorithm=async", "stale.k=auto", *single_run_overrides()])
    assert "stale.k='auto' is not allowed: async fixes K at 1" in refused


def test_a_plan_carried_into_the_next_epoch_is_saved_as_plain_data(tmp_path: Path) -> None:
    # K changing mid-epoch often leaves an update whose mini-batches the epoch could not give: its plan is
    # saved with the loader and must load with torch.load(weights_only=True), as Lightning loads checkpoints.
    from lightning_echo.core.delays import ComputeTimes, DelayDistribution
    from lightning_echo.core.learner_data import DataTimes, LearnerDataStreams
    from lightning_echo.core.schedule import ScheduleSimulation, variant_spec
    from lightning_echo.stragglers.simulated.loader import plan_from_state, plan_state

    times = ComputeTimes(DelayDistribution("exponential"))
    data = LearnerDataStreams(4, DataTimes(slowdown=2.0).source(times, 4), None, seed=1)
    simulation = ScheduleSimulation(variant_spec("ringmaster", 4, max_delay=2), times, seed=2, data=data)
    plans = [simulation.next_update() for _ in range(12)]
    torch.save([plan_state(plan) for plan in plans], tmp_path / "plans.pt")
    loaded = torch.load(tmp_path / "plans.pt", weights_only=True)
    assert [plan_from_state(state) for state in loaded] == plans and plan_from_state(None) is None
