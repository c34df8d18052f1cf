"""Data echoing on simulated learners: each learner echoes its own mini-batch while its loader lags."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger

from torch.utils.data import DataLoader

from lightning_echo.callbacks import TrainingProgress
from lightning_echo.echo import DataEchoing
from lightning_echo.errors import ConfigError
from lightning_echo.metric_names import LearnerData
from lightning_echo.stragglers import SimulatedLearnersStrategy
from test_simulated_strategy import Linear, data, parameters, trainer

LEARNERS = 4


def shuffled(n: int = 98, batch_size: int = 4) -> DataLoader:
    """A shuffling loader whose pass does not divide by K (the leftover batches stay unread)."""
    base = data(n, batch_size)
    return DataLoader(base.dataset, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(7))
SLOW_LOADERS = {"slowdown": 3.0, "speeds": [1, 1, 2, 2]}  # loaders 3-6x slower than the mean compute time


def strategy(variant: str = "k_async", data_delay=None, **kwargs) -> SimulatedLearnersStrategy:
    k = None if variant in ("sync", "async") else 2
    return SimulatedLearnersStrategy(variant, learners=LEARNERS, k=k, delay={"distribution": "exponential"},
                                     data_delay=data_delay, seed=3, **kwargs)


@pytest.mark.parametrize("variant", ["sync", "k_sync", "k_async", "async", "rennala"])
@pytest.mark.parametrize("factor", ["auto", 1])
@pytest.mark.parametrize("loader", [data, shuffled])
def test_without_data_delay_echoing_changes_nothing_bit_for_bit(variant: str, factor, loader) -> None:
    alone_model, alone = Linear(per_step_schedule=True), strategy(variant)
    trainer(alone, 30).fit(alone_model, loader())  # 24 batches per epoch: several epochs
    echoed_model, echoed = Linear(per_step_schedule=True), strategy(variant)
    progress = TrainingProgress()
    trainer(echoed, 30, callbacks=[progress, DataEchoing(factor=factor)]).fit(echoed_model, loader())
    assert all(torch.equal(a, b) for a, b in zip(parameters(echoed_model), parameters(alone_model)))
    assert echoed.clock_s == alone.clock_s
    assert sum(echoed.counts.echoed_gradients) == 0
    assert progress.fresh_samples == sum(alone.counts.fresh_samples)
    assert progress.fresh_batches == 30 * alone.spec.k  # every gradient fresh


@pytest.mark.parametrize("variant", ["sync", "k_async", "async"])
def test_auto_echo_on_slow_loaders_trains_faster_on_the_clock_and_uses_less_data(variant: str) -> None:
    plain = strategy(variant, SLOW_LOADERS)
    plain_progress = TrainingProgress()
    trainer(plain, 40, callbacks=[plain_progress]).fit(Linear(), data())
    echoed = strategy(variant, SLOW_LOADERS)
    progress, echo = TrainingProgress(), DataEchoing(factor="auto", max_factor=4)
    trainer(echoed, 40, callbacks=[progress, echo]).fit(Linear(), data())
    assert echoed.clock_s < 0.7 * plain.clock_s  # the learners compute while their loaders lag
    assert progress.fresh_samples < plain_progress.fresh_samples
    assert sum(echoed.counts.echoed_gradients) > 0 and sum(plain.counts.echoed_gradients) == 0
    # what the ledger counted is what each learner's batches brought
    assert progress.fresh_samples == sum(echoed.counts.fresh_samples)
    assert echo.fresh_samples == progress.fresh_samples and echo.steps == 40
    gradients = 40 * echoed.spec.k
    assert progress.fresh_batches + sum(echoed.counts.echoed_gradients) >= gradients


def test_a_number_as_factor_uses_each_fresh_batch_that_many_times() -> None:
    echoed = strategy("async", SLOW_LOADERS)
    progress = TrainingProgress()
    trainer(echoed, 40, callbacks=[progress, DataEchoing(factor=2)]).fit(Linear(), data(batch_size=4))
    echoes = sum(echoed.counts.echoed_gradients)
    assert progress.fresh_batches + echoes == 40  # async: one gradient per update
    assert abs(progress.fresh_batches - echoes) <= LEARNERS  # pairs, except groups cut at the end
    assert progress.fresh_samples == 4 * progress.fresh_batches


@pytest.mark.parametrize("variant", ["k_async", "k_batch_async"])  # k_batch_async: a learner's gradients share updates
def test_each_echo_computes_on_its_learners_own_batch(variant: str) -> None:
    seen: dict[tuple[int, int], list[torch.Tensor]] = {}

    echoed = strategy(variant, SLOW_LOADERS)
    model = Linear()
    original = echoed.training_step

    def recording_step(*args, **kwargs):
        bundle = args[0]
        for gradient, batch in zip(bundle.plan.gradients, bundle.batches):
            seen.setdefault((gradient.learner, gradient.fresh_index), []).append(batch[0].clone())
        return original(*args, **kwargs)

    echoed.training_step = recording_step
    trainer(echoed, 40, callbacks=[DataEchoing(factor="auto")]).fit(model, data())
    repeated = [batches for batches in seen.values() if len(batches) > 1]
    assert repeated, "no learner echoed"
    assert all(torch.equal(b, batches[0]) for batches in repeated for b in batches)
    firsts = [batches[0] for batches in seen.values()][:24]  # the loader's first epoch: 24 distinct batches
    assert len({tuple(b.flatten().tolist()) for b in firsts}) == len(firsts)  # each fresh batch is a new one


@pytest.mark.parametrize("variant, factor, loader", [("k_async", "auto", data), ("k_sync", 2, data), ("ringmaster", 1.5, data),
                                                     ("async", "auto", shuffled), ("k_batch_async", 2, shuffled)])
def test_resume_mid_run_equals_the_uninterrupted_run(tmp_path: Path, variant: str, factor, loader) -> None:
    def run(max_steps: int, ckpt_path=None, **kwargs):
        model = Linear()
        built = SimulatedLearnersStrategy(variant, learners=LEARNERS, k=None if variant == "ringmaster" else 2,
                                          max_delay=3 if variant == "ringmaster" else None,
                                          data_delay={"slowdown": 2.0, "jitter": "exponential", "speeds": [1, 2, 2, 3]}, seed=4)
        progress = TrainingProgress()
        trainer(built, max_steps, callbacks=[progress, DataEchoing(factor=factor), *kwargs.pop("callbacks", [])],
                **kwargs).fit(model, loader(), ckpt_path=ckpt_path)
        return model, built, progress

    whole_model, whole, whole_progress = run(60)  # several passes over the loader
    checkpoints = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=23, save_top_k=-1, save_last=False)
    run(23, enable_checkpointing=True, callbacks=[checkpoints])
    (path,) = sorted(tmp_path.glob("*.ckpt"))
    resumed_model, resumed, resumed_progress = run(60, ckpt_path=str(path))
    assert resumed.clock_s == whole.clock_s
    assert all(torch.equal(a, b) for a, b in zip(parameters(resumed_model), parameters(whole_model)))
    assert resumed.counts == whole.counts
    assert resumed_progress.fresh_samples == whole_progress.fresh_samples


def test_the_fresh_data_budget_counts_the_clusters_fresh_samples() -> None:
    echoed = strategy("k_async", SLOW_LOADERS)
    progress = TrainingProgress(max_fresh_samples=40)
    fit = trainer(echoed, 1000, callbacks=[progress, DataEchoing(factor="auto")])
    fit.fit(Linear(), data())
    assert 40 <= progress.fresh_samples < 40 + 2 * 4  # stops at the update that uses the budget up
    assert fit.global_step * echoed.spec.k > progress.fresh_batches  # echoes took steps beyond the fresh data
    tight = strategy("k_async", SLOW_LOADERS)
    tight_progress = TrainingProgress()
    trainer(tight, 1000, callbacks=[tight_progress, DataEchoing(factor="auto", max_fresh_batches=6)]).fit(Linear(), data())
    assert 6 <= tight_progress.fresh_batches < 6 + 2


def test_learner_data_metrics_are_logged(tmp_path: Path) -> None:
    echoed = strategy("async", SLOW_LOADERS)
    logger = CSVLogger(tmp_path, name="run")
    trainer(echoed, 24, logger=logger, log_every_n_steps=4,
            callbacks=[TrainingProgress(), DataEchoing(factor="auto")]).fit(Linear(), data())
    import csv

    rows = list(csv.DictReader(open(Path(logger.log_dir) / "metrics.csv")))
    last = {k: v for row in rows for k, v in row.items() if v not in ("", None)}
    assert float(last[LearnerData.ECHOED_GRADIENTS]) == sum(echoed.counts.echoed_gradients)
    assert float(last[LearnerData.DATA_WAIT_S]) > 0
    for learner in range(LEARNERS):
        fresh = LearnerData.LEARNER_FRESH_SAMPLES.format(learner=learner)
        assert float(last[fresh]) == echoed.counts.fresh_samples[learner]
        assert LearnerData.LEARNER_DATA_WAIT_S.format(learner=learner) in last


def test_data_delay_alone_slows_the_clock_without_echoing() -> None:
    fast, slow = strategy("async"), strategy("async", {"seconds_per_batch": 5.0})
    trainer(fast, 20).fit(Linear(), data())
    trainer(slow, 20).fit(Linear(), data())
    assert slow.clock_s > 2 * fast.clock_s
    assert sum(slow.counts.echoed_gradients) == 0


@pytest.mark.parametrize("kwargs, key", [
    ({"data_delay": {"slowdown": 2, "speeds": [1, 2]}}, "data_delay.speeds"),
    ({"data_delay": {"slowdown": -2}}, "data_delay.slowdown"),
    ({"data_delay": {"slowness": 2}}, "data_delay.slowness"),
])
def test_bad_data_delay_is_one_line(kwargs, key) -> None:
    with pytest.raises(ConfigError) as error:
        trainer(SimulatedLearnersStrategy("async", learners=LEARNERS, **kwargs), 3).fit(Linear(), data())
    assert error.value.key == key


def test_example_echoing_and_before_augmentation_are_refused() -> None:
    with pytest.raises(ConfigError, match="echo.placement"):
        trainer(strategy(), 3, callbacks=[DataEchoing(factor=2, placement="before_augmentation")]).fit(Linear(), data())
