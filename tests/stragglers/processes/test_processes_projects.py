"""ParameterServerStrategy on the modules people write (``tests/project_modules.py``), on real
processes: a user's script (``tests/scripts/ps_projects.py``) with ``devices=3``, the server and
two learners. One world runs every scenario in a row, the failing fits included: after a failed
fit no thread of the library is left in any process, and the next fit of the same world works.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import SCRIPTS
from process_worlds import DEADLINE_S, metrics_rows, run_clean_world

SCRIPT = SCRIPTS / "ps_projects.py"
SCENARIOS = ("learner_fails", "server_fails", "template", "one_cycle", "momentum")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    yield run_clean_world(SCRIPT, tmp_path_factory.mktemp("ps_projects"), *SCENARIOS)


pytestmark = [pytest.mark.slow, pytest.mark.timeout(DEADLINE_S + 60)]


def test_torchmetrics_objects_compute_within_their_process_and_validation_covers_all_data(world: dict[str, Any]) -> None:
    server, *learners = world["template"]
    assert "error" not in server, server
    # The server validated the final parameters on the whole validation set, with no sync to learners.
    assert server["metrics"]["val/acc"] == pytest.approx(server["val_accuracy_now"], abs=1e-6)
    assert 0.5 < server["val_accuracy_now"] < 1.0  # the check discriminates: neither chance nor all 256 right
    assert server["metrics"]["val/acc_best"] >= server["metrics"]["val/acc"]
    assert all("error" not in learner for learner in learners)


def test_the_datamodule_sizes_its_per_device_batch_for_the_learners(world: dict[str, Any]) -> None:
    # a batch size of 12 for the run: 6 per learner, as under DDP on 2 devices (not 4 for 3 processes)
    assert [rank["world_sizes_seen"] for rank in world["template"]] == [[2], [2], [2]]


def test_what_learners_log_in_training_step_reaches_the_servers_logs_and_callbacks(world: dict[str, Any]) -> None:
    server = world["template"][0]
    rows = metrics_rows(server["metrics_csv"])
    epochs = [row for row in rows if row.get("train/loss")]
    assert len(epochs) == 3  # on_epoch=True, on_step=False: one value per server epoch, as the user logged it
    losses = [float(row["train/loss"]) for row in epochs]
    assert losses[-1] < losses[0]
    assert all(0.0 <= float(row["train/acc"]) <= 1.0 for row in epochs)
    assert "train/loss" in server["metrics"] and "train/acc" in server["metrics"]
    # EarlyStopping and ModelCheckpoint monitored training metrics without failing; the best checkpoint exists.
    assert server["best_model_path"] and Path(server["best_model_path"]).exists()


def test_one_cycle_sized_by_estimated_stepping_batches_spans_the_servers_updates(world: dict[str, Any]) -> None:
    server = world["one_cycle"][0]
    assert "error" not in server, server
    # 96 rows in batches of 6 per learner = 16 mini-batches per epoch, K = 2: 8 updates per epoch, 2 epochs
    assert server["estimated"] == server["global_step"] == 16
    assert len(server["lrs"]) == 16 and max(server["lrs"]) == pytest.approx(0.1, rel=0.05)
    assert server["lrs"][-1] < 1e-3  # the cycle ended with the run


def test_a_learners_error_fails_its_fit_with_the_users_own_error_and_leaves_no_thread(world: dict[str, Any]) -> None:
    server, first, failing = world["learner_fails"]
    assert failing["error_type"] == "ValueError" and "learner 1" in failing["error"]
    assert server["error_type"] == "ParameterServerError" and "learner 1 (rank 2) is lost" in server["error"]
    assert first["error_type"] == "ParameterServerError" and "ended the run with an error" in first["error"]
    assert [rank["threads_after_fit"] for rank in world["learner_fails"]] == [[], [], []]


def test_a_servers_error_fails_every_fit_first_with_the_users_own_error_and_leaves_no_thread(world: dict[str, Any]) -> None:
    server, *learners = world["server_fails"]
    assert server["error_type"] == "RuntimeError" and "update 3" in server["error"]
    assert [learner["error_type"] for learner in learners] == ["ParameterServerError", "ParameterServerError"]
    assert [rank["threads_after_fit"] for rank in world["server_fails"]] == [[], [], []]
    assert "terminate called" not in world["log"]


def test_momentum_under_async_warns_on_the_server_and_the_correction_applies_to_the_servers_steps(
        world: dict[str, Any]) -> None:
    server, *learners = world["momentum"]
    assert len(server["none"]["warnings"]) == 1 and "momentum 0.9" in server["none"]["warnings"][0]
    assert server["none"]["offset"] == 0.0
    assert server["implicit"] == {"warnings": [], "offset": 0.5}  # 1 - 1/2 on two learners
    assert all(not learner["none"]["warnings"] for learner in learners)  # learners never step an optimizer
