"""StepTimeRecorder: real fits on one device, under two-rank DDP (gloo), on a parameter server's
learners and from the command line; the trace files round-trip through the advisor's reader and
the delay models' trace replay. Injected sleeps are compared with the other parts of the step, or
used as lower bounds (a sleep lasts at least its time), never as wall-clock limits."""

from __future__ import annotations

import csv
import json
import statistics
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader

from conftest import SCRIPTS, main_error, quiet_trainer, single_run_overrides
from lightning_echo.advisor import record
from lightning_echo.advisor.record import PARTS_DIR, StepTimeRecorder, _Clock, _continued
from lightning_echo.advisor.trace import (
    COMPUTE_FILE,
    STEPS_FILE,
    SUMMARY_FILE,
    StepRecord,
    StepTrace,
    read_step_trace,
    summarise,
)
from lightning_echo.core.delays import TraceComputeTimes
from lightning_echo.errors import ConfigError
from lightning_echo.lightning_namespace import import_lightning, pl
from lightning_echo.metric_names import StepTimes
from process_worlds import metrics_rows, run_world

boring = import_lightning("demos.boring_classes")
SLEEP_S = 0.1


class Model(boring.BoringModel):
    """BoringModel (batches of 2 random vectors), optionally sleeping in ``training_step`` or its
    collate, or in ``validation_step``."""

    def __init__(self, step_sleep_s: float = 0.0, collate_sleep_s: float = 0.0, val_sleep_s: float = 0.0) -> None:
        super().__init__()
        self.step_sleep_s, self.collate_sleep_s, self.val_sleep_s = step_sleep_s, collate_sleep_s, val_sleep_s

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        if self.step_sleep_s:
            time.sleep(self.step_sleep_s)
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch: Any, batch_idx: int) -> Any:
        if self.val_sleep_s:
            time.sleep(self.val_sleep_s)
        return super().validation_step(batch, batch_idx)

    def train_dataloader(self) -> DataLoader:
        def collate(items: list) -> torch.Tensor:
            if self.collate_sleep_s:
                time.sleep(self.collate_sleep_s)
            return torch.stack(items)

        return DataLoader(boring.RandomDataset(32, 64), batch_size=2, collate_fn=collate)


def _fit(tmp_path: Path, model: pl.LightningModule, steps: int = 12, **kwargs: Any) -> StepTimeRecorder:
    recorder = StepTimeRecorder(dirpath=tmp_path / "trace")
    quiet_trainer([recorder], max_steps=steps, **kwargs).fit(model)
    return recorder


def _median(records: list[Any], column: str) -> float:
    return statistics.median(r[column] if isinstance(r, dict) else getattr(r, column) for r in records)


# -- one device ---------------------------------------------------------------------------------
def test_every_step_is_recorded_and_the_files_round_trip(tmp_path: Path) -> None:
    model = Model()
    recorder = _fit(tmp_path, model)
    records = recorder.records
    assert [r.step for r in records] == list(range(12)) and {r.rank for r in records} == {0}
    assert all(r.compute_s > 0 and r.data_wait_s >= 0 and r.sync_wait_s == 0 and r.batch_size == 2 for r in records)
    trace = read_step_trace(tmp_path / "trace")
    assert trace.kind == "single" and trace.records == records
    assert trace.meta == {"model": "Model", "batch_size": 2}
    replay = TraceComputeTimes.from_csv(tmp_path / "trace" / COMPUTE_FILE)
    assert replay.learners == 1
    summary = json.loads((tmp_path / "trace" / SUMMARY_FILE).read_text())
    assert summary["kind"] == "single" and summary["clock"] == "wall_clock"
    assert summary["ranks"] == recorder.summary["ranks"]
    assert recorder.summary["ranks"]["0"]["steps"] == 12 and recorder.summary["slowest_over_median"] == 1.0
    assert recorder.written == tmp_path / "trace" / STEPS_FILE
    # Nothing of the recorder stays on the module.
    assert "training_step" not in vars(model)


def test_steps_are_worked_out_in_bulk_the_same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(record, "READ_EVERY", 5)
    recorder = _fit(tmp_path, Model(step_sleep_s=0.01))
    assert [r.step for r in recorder.records] == list(range(12))
    assert all(r.compute_s >= 0.01 for r in recorder.records)


def test_a_slow_collate_shows_as_data_wait_and_a_slow_training_step_as_compute(tmp_path: Path) -> None:
    loader_bound = _fit(tmp_path / "loader", Model(collate_sleep_s=SLEEP_S)).records
    compute_bound = _fit(tmp_path / "compute", Model(step_sleep_s=SLEEP_S)).records
    assert _median(loader_bound, "data_wait_s") >= SLEEP_S
    assert _median(loader_bound, "compute_s") < _median(loader_bound, "data_wait_s") / 2
    assert _median(compute_bound, "compute_s") >= SLEEP_S
    assert _median(compute_bound, "data_wait_s") < _median(compute_bound, "compute_s") / 2


def test_validation_is_no_step_s_wait(tmp_path: Path) -> None:
    val_sleep_s = 0.5  # each of the two validations (after steps 4 and 8)
    recorder = _fit(tmp_path, Model(val_sleep_s=val_sleep_s), limit_val_batches=1, val_check_interval=4)
    assert len(recorder.records) == 12
    assert sum(r.data_wait_s for r in recorder.records) < val_sleep_s


def test_gradient_accumulation_makes_one_record_per_optimizer_step(tmp_path: Path) -> None:
    recorder = _fit(tmp_path, Model(step_sleep_s=0.01), steps=6, accumulate_grad_batches=3)
    assert [r.step for r in recorder.records] == list(range(6))
    assert all(r.batch_size == 6 and r.compute_s >= 3 * 0.01 for r in recorder.records)


def test_each_step_is_logged(tmp_path: Path) -> None:
    recorder = StepTimeRecorder(dirpath=tmp_path / "trace")
    logger = pl.loggers.CSVLogger(tmp_path, name="logs")
    quiet_trainer([recorder], max_steps=12, logger=logger, log_every_n_steps=1).fit(Model())
    rows = [row for row in metrics_rows(str(Path(logger.log_dir) / "metrics.csv")) if row.get(StepTimes.COMPUTE_S)]
    assert len(rows) == 12
    logged = [float(row[StepTimes.COMPUTE_S]) for row in rows]
    assert logged == [r.compute_s for r in recorder.records]
    assert all(row[StepTimes.DATA_WAIT_S] and float(row[StepTimes.SYNC_WAIT_S]) == 0 for row in rows)


@pytest.mark.filterwarnings("ignore:.*resuming from a checkpoint that ended before the epoch ended")
def test_a_resumed_fit_continues_the_trace(tmp_path: Path) -> None:
    checkpoint = tmp_path / "first.ckpt"
    first = quiet_trainer([StepTimeRecorder(dirpath=tmp_path / "trace")], max_steps=8)
    first.fit(Model())
    first.save_checkpoint(checkpoint)
    recorder = StepTimeRecorder(dirpath=tmp_path / "trace")
    quiet_trainer([recorder], max_steps=14).fit(Model(), ckpt_path=checkpoint)
    assert [r.step for r in recorder.records] == list(range(8, 14))
    assert [r.step for r in read_step_trace(tmp_path / "trace").records] == list(range(14))


def test_a_resumed_trace_replaces_steps_taken_again_or_appends_a_learner_s() -> None:
    def rows(rank: int, steps: range) -> list[StepRecord]:
        return [StepRecord(rank, step, 0.1 * (step + 1)) for step in steps]

    earlier, new = rows(0, range(10)) + rows(1, range(10)), rows(0, range(6, 9)) + rows(1, range(6, 9))
    replaced = _continued(earlier, new, append=False)
    assert [(r.rank, r.step) for r in replaced] == [(0, s) for s in range(9)] + [(1, s) for s in range(9)]
    assert replaced[6] == new[0]
    appended = _continued(rows(1, range(5)) + rows(2, range(4)), rows(1, range(3)), append=True)
    assert [(r.rank, r.step) for r in appended] == [(1, s) for s in range(8)] + [(2, s) for s in range(4)]


class _Token:
    def __init__(self) -> None:
        self.time, self.live = time.perf_counter(), True


class _DeviceEvents(_Clock):
    """CUDA events' contract on the host: a stamp may not be complete yet when asked, and must not
    be read once released (the CUDA clock recycles released events)."""

    device_events = True

    def __init__(self) -> None:
        self.asked = 0

    def stamp(self) -> _Token:
        return _Token()

    def seconds(self, start: _Token, end: _Token) -> float:
        assert start.live and end.live, "a released event was read"
        return end.time - start.time

    def done(self, stamp: _Token) -> bool:
        self.asked += 1
        return self.asked % 3 == 0

    def release(self, *stamps: Any) -> None:
        for stamp in stamps:
            if stamp is not None:
                stamp.live = False


class _RecorderOnDeviceEvents(StepTimeRecorder):
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._clock = _DeviceEvents()


def test_steps_timed_by_device_events_are_read_a_step_or_two_later_and_all_at_the_end(tmp_path: Path) -> None:
    recorder = _RecorderOnDeviceEvents(dirpath=tmp_path)
    quiet_trainer([recorder], max_steps=12, limit_val_batches=1, val_check_interval=5).fit(Model(step_sleep_s=0.01))
    assert [r.step for r in recorder.records] == list(range(12))
    assert all(r.compute_s >= 0.01 and r.batch_size == 2 for r in recorder.records)
    assert read_step_trace(tmp_path).records == recorder.records


def test_the_summary_says_how_each_rank_compares_with_the_median_rank() -> None:
    records = [StepRecord(rank, step, seconds) for rank, seconds in ((0, 1.0), (1, 1.0), (2, 3.0)) for step in range(10)]
    summary = summarise(StepTrace(records, kind="ddp"))
    assert [summary["ranks"][str(rank)]["median_over_ranks_median"] for rank in range(3)] == [1.0, 1.0, 3.0]
    assert summary["slowest_over_median"] == 3.0


@pytest.mark.parametrize("kwargs, key", [
    ({"dirpath": 5}, "dirpath"),
    ({"dirpath": ""}, "dirpath"),
    ({"log_metrics": "yes"}, "log_metrics"),
    ({"gather_timeout_s": 0}, "gather_timeout_s"),
    ({"gather_timeout_s": float("nan")}, "gather_timeout_s"),
    ({"gather_timeout_s": True}, "gather_timeout_s"),
])
def test_bad_arguments_are_one_line_config_errors(kwargs: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as error:
        StepTimeRecorder(**kwargs)
    assert str(error.value).startswith(f"{key}=") and len(str(error.value).splitlines()) == 1


def test_a_file_as_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"^dirpath=.* is a file; give a directory$"):
        StepTimeRecorder(dirpath=tmp_path / "file")


# -- DDP: two ranks, gloo -----------------------------------------------------------------------
def _world(script: str, tmp_path: Path, scenarios: tuple[str, ...], ranks: int) -> dict[str, Any]:
    results = run_world(SCRIPTS / script, tmp_path, *scenarios, ranks=ranks)
    assert results["returncode"] == 0, results["log"][-4000:]
    assert not results["outlived"], "a process of the world outlived its script"
    for name in scenarios:
        for rank, result in enumerate(results[name]):
            assert result is not None and "error" not in result, (name, rank, result, results["log"][-3000:])
    return results


@pytest.fixture(scope="module")
def ddp_world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _world("ddp_record.py", tmp_path_factory.mktemp("ddp_record"),
                  ("slow_rank", "slow_loader", "slow_loader_batchnorm"), ranks=2)


def _by_rank(directory: Path) -> dict[int, list[StepRecord]]:
    trace = read_step_trace(directory)
    return {rank: trace.of_rank(rank) for rank in trace.ranks}


@pytest.mark.slow
def test_ddp_the_slow_rank_computes_and_the_other_waits_for_it(ddp_world: dict[str, Any]) -> None:
    sleep_s = 0.2  # ddp_record.SLEEP_S: rank 1's training_step
    ranks = ddp_world["slow_rank"]
    fast, slow = ranks[0]["records"], ranks[1]["records"]
    assert len(fast) == len(slow) == 12
    assert _median(slow, "compute_s") >= sleep_s
    assert _median(fast, "sync_wait_s") >= sleep_s / 2  # it waits for rank 1 in the gradient all-reduce ...
    assert _median(fast, "compute_s") < _median(slow, "compute_s") / 5  # ... and that is not its compute
    assert _median(slow, "sync_wait_s") < _median(fast, "sync_wait_s") / 5
    # One trace with both ranks' rows, written by rank 0; every rank holds the whole summary.
    assert ranks[0]["written"] and ranks[1]["written"] is None
    directory = Path(ranks[0]["written"]).parent
    rows = _by_rank(directory)
    assert sorted(rows) == [0, 1] and [r.compute_s for r in rows[1]] == [r["compute_s"] for r in slow]
    assert read_step_trace(directory).kind == "ddp"
    assert ranks[0]["summary"] == ranks[1]["summary"]
    assert ranks[0]["summary"]["slowest_over_median"] > 1.5  # of two ranks: at most 2 (their median is their mean)
    assert TraceComputeTimes.from_csv(directory / COMPUTE_FILE).learners == 2
    assert not ranks[0]["training_step_patched"] and not ranks[1]["training_step_patched"]


@pytest.mark.slow
@pytest.mark.parametrize("scenario", ["slow_loader", "slow_loader_batchnorm"])  # waits in the all-reduce; in the buffers' broadcast
def test_ddp_a_slow_loader_shows_as_data_wait_there_and_waiting_elsewhere(ddp_world: dict[str, Any], scenario: str) -> None:
    sleep_s = 0.2  # rank 1's collate
    fast, slow = (rank["records"] for rank in ddp_world[scenario])
    assert _median(slow, "data_wait_s") >= sleep_s
    assert _median(fast, "sync_wait_s") >= sleep_s / 2
    assert _median(fast, "compute_s") < _median(fast, "sync_wait_s") / 5
    assert _median(slow, "sync_wait_s") < _median(fast, "sync_wait_s") / 5


# -- a parameter server's learners ---------------------------------------------------------------
@pytest.mark.slow
def test_parameter_server_learners_record_compute_and_their_wait_for_the_server(tmp_path: Path) -> None:
    results = _world("ps_record.py", tmp_path, ("sync_slow_learner",), ranks=3)
    server, fast, slow = results["sync_slow_learner"]
    for rank in (server, fast, slow):
        assert rank["threads_after_fit"] == [] and rank["children_after_fit"] == []
    assert server["records"] == [] and server["trace_ranks"] == [1, 2]
    fast_rows, slow_rows = fast["records"], slow["records"]
    assert len(fast_rows) >= 14 and len(slow_rows) >= 14  # a gradient per update under sync (and the last START's)
    assert _median(slow_rows, "compute_s") >= 0.08  # injected: learner 1 takes 0.1 s, learner 0 0.02 s
    assert _median(slow_rows, "compute_s") > 2 * _median(fast_rows, "compute_s")
    assert _median(fast_rows, "sync_wait_s") > 2 * _median(slow_rows, "sync_wait_s")  # learner 0 waits for the START
    assert all(r["batch_size"] == 4 for r in fast_rows + slow_rows)
    directory = Path(server["written"]).parent
    trace = read_step_trace(directory)
    assert trace.kind == "parameter_server" and trace.ranks == [1, 2]
    assert [r.compute_s for r in trace.of_rank(2)] == [r["compute_s"] for r in slow_rows]
    assert not (directory / PARTS_DIR).exists()
    assert TraceComputeTimes.from_csv(directory / COMPUTE_FILE).learners == 2
    # The learners' step times travel with their gradients; the server logs their mean per update.
    logged = [row for row in metrics_rows(server["metrics_csv"]) if row.get(StepTimes.COMPUTE_S)]
    assert logged and all(float(row[StepTimes.COMPUTE_S]) > 0 for row in logged)


# -- the command line ---------------------------------------------------------------------------
def test_the_command_line_records_into_the_run_directory(tmp_path: Path) -> None:
    from lightning_echo.cli import main

    main(["trainer.max_steps=12", "record.step_times=true", *single_run_overrides()])
    run_dir = next((tmp_path / "le_outputs" / "runs").iterdir())
    trace = read_step_trace(run_dir)
    assert trace.kind == "single" and [r.step for r in trace.records] == list(range(12))
    assert trace.meta["model"] == "LogisticRegression"
    assert TraceComputeTimes.from_csv(run_dir / COMPUTE_FILE).learners == 1
    with (run_dir / "csv" / "metrics.csv").open(newline="") as stream:
        assert StepTimes.SYNC_WAIT_S in next(csv.reader(stream))


def test_a_run_on_simulated_learners_is_recorded_on_their_clock_and_refused_by_the_reader(tmp_path: Path) -> None:
    from lightning_echo.cli import main

    main(["algorithm=k_async", "stale.learners=2", "trainer.max_steps=10", "record.step_times=true",
          *single_run_overrides()])
    run_dir = next((tmp_path / "le_outputs" / "runs").iterdir())
    assert json.loads((run_dir / SUMMARY_FILE).read_text())["clock"] == "simulated"
    with pytest.raises(ConfigError, match="recorded on a simulated clock"):
        read_step_trace(run_dir)


def test_the_command_line_records_nothing_by_default_and_refuses_a_non_boolean(tmp_path: Path,
                                                                              capsys: pytest.CaptureFixture) -> None:
    from lightning_echo.cli import main

    main(["trainer.max_steps=3", *single_run_overrides()])
    run_dir = next((tmp_path / "le_outputs" / "runs").iterdir())
    assert not (run_dir / STEPS_FILE).exists()
    err = main_error(capsys, ["record.step_times=maybe", *single_run_overrides()])
    assert "record.step_times='maybe' is not allowed: must be true or false" in err
