"""DataEchoing on the learners of a ParameterServerStrategy on real processes: each learner echoes
its own shard, every PUSH says whether its gradient was computed on a fresh batch or an echo, and
the server counts the cluster's fresh data from that (its budget, ``progress/fresh_samples``, the
per-learner counters, a resumed run's totals). One world (``tests/scripts/ps_echo.py``, the
server and two learners) runs every scenario in a row; the rest are plain unit tests of the note
and the carried counters.
"""

from __future__ import annotations

import json
import math
from typing import Any, Iterator

import pytest

from conftest import SCRIPTS
from lightning_echo.core.echo_factor import extra_serves
from lightning_echo.echo import DataEchoing
from lightning_echo.metric_names import LearnerData, ParameterServer, Progress
from lightning_echo.stragglers.processes.fresh import GradientData, count_used, decode_push_note, encode_push_note, start_counting
from lightning_echo.stragglers.processes.logged import LoggedValue
from lightning_echo.stragglers.processes.metrics import CarriedCounts
from lightning_echo.stragglers.processes.protocol import NOTE_CAPACITY, ProtocolError
from lightning_echo.stragglers.processes.server import ServerReport
from lightning_echo.stragglers.processes.strategy import gradients_per_pass
from process_worlds import DEADLINE_S, metrics_rows, run_clean_world

SCRIPT = SCRIPTS / "ps_echo.py"
SCENARIOS = ("k_async_factor_2", "sync_factor_1_5", "no_echo", "one_epoch", "budget", "auto_slow", "auto_fast",
             "resume", "refused", "loader_fails", "library_loader")
SHARD_BATCHES = 5  # 18 rows per learner in batches of 4: 4, 4, 4, 4, 2


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    yield run_clean_world(SCRIPT, tmp_path_factory.mktemp("ps_echo"), *SCENARIOS)


def _fresh_flags(batches: list[list[int]]) -> list[bool]:
    """Per computed gradient, whether its batch was fresh (an echo repeats the batch before it)."""
    return [i == 0 or batch != batches[i - 1] for i, batch in enumerate(batches)]


def _expected_counts(learner: dict[str, Any], used: int) -> tuple[int, int, int]:
    """(fresh gradients, echoed gradients, fresh samples) of a learner's first ``used`` gradients,
    from the batches it recorded: the server uses each learner's gradients in order when no
    variant discards or cancels any."""
    batches = learner["batches"][:used]
    flags = _fresh_flags(batches)
    return sum(flags), len(flags) - sum(flags), sum(len(b) for b, fresh in zip(batches, flags) if fresh)


def _groups(batches: list[list[int]]) -> list[int]:
    """How many times in a row each fresh batch was computed on."""
    groups: list[int] = []
    for fresh in _fresh_flags(batches):
        if fresh:
            groups.append(1)
        else:
            groups[-1] += 1
    return groups


def _check_exact_counts(world: dict[str, Any], scenario: str) -> dict[str, Any]:
    server, *learners = world[scenario]
    assert "error" not in server, server
    report = server["report"]
    for i, learner in enumerate(learners):
        assert "error" not in learner, learner
        assert report["pushes_per_learner"][i] == learner["report"]["pushed"]  # every PUSH reached the server
        used = report["used_per_learner"][i]
        fresh, echoed, samples = _expected_counts(learner, used)
        assert report["fresh_gradients_per_learner"][i] == fresh
        assert report["echoed_gradients_per_learner"][i] == echoed
        assert report["fresh_samples_per_learner"][i] == samples
    # The cluster's fresh data is what the learners' fresh batches brought, not one batch per gradient.
    assert server["fresh_samples"] == sum(report["fresh_samples_per_learner"])
    assert server["fresh_batches"] == sum(report["fresh_gradients_per_learner"])
    return report


@pytest.mark.slow
@pytest.mark.timeout(DEADLINE_S + 60)
def test_factor_2_gives_two_gradients_per_fresh_batch_and_the_server_counts_only_the_fresh_ones(world: dict[str, Any]) -> None:
    report = _check_exact_counts(world, "k_async_factor_2")
    server, *learners = world["k_async_factor_2"]
    assert server["global_step"] == 24 and sum(report["used_per_learner"]) == 24
    for i, learner in enumerate(learners):
        groups = _groups(learner["batches"])
        assert set(groups[:-1]) == {2} and groups[-1] in (1, 2)  # the last group may be cut by the STOP
        used = report["used_per_learner"][i]
        assert report["fresh_gradients_per_learner"][i] == math.ceil(used / 2)
        assert report["echoed_gradients_per_learner"][i] == used // 2
    assert max(report["used_per_learner"]) > 2 * SHARD_BATCHES  # a learner went on into its next pass
    # Logged on rank 0 at every update: the run's totals and each learner's.
    last = [row for row in metrics_rows(server["metrics_csv"]) if row.get(Progress.FRESH_SAMPLES)][-1]
    assert float(last[Progress.FRESH_SAMPLES]) == server["fresh_samples"]
    assert float(last[ParameterServer.FRESH_GRADIENTS]) == sum(report["fresh_gradients_per_learner"])
    assert float(last[LearnerData.ECHOED_GRADIENTS]) == sum(report["echoed_gradients_per_learner"]) > 0
    for i in range(2):
        assert float(last[LearnerData.LEARNER_FRESH_SAMPLES.format(learner=i)]) == report["fresh_samples_per_learner"][i]
        assert float(last[LearnerData.LEARNER_ECHOED_GRADIENTS.format(learner=i)]) == report["echoed_gradients_per_learner"][i]
        assert float(last[ParameterServer.LEARNER_FRESH_GRADIENTS.format(learner=i)]) == report["fresh_gradients_per_learner"][i]
        assert float(last[LearnerData.LEARNER_DATA_WAIT_S.format(learner=i)]) == pytest.approx(report["data_wait_s_per_learner"][i])
    assert float(last[LearnerData.DATA_WAIT_S]) == pytest.approx(sum(report["data_wait_s_per_learner"]))


@pytest.mark.slow
@pytest.mark.timeout(DEADLINE_S + 60)
def test_a_non_integer_factor_serves_each_pass_exactly_its_steps_and_the_counts_stay_exact(world: dict[str, Any]) -> None:
    report = _check_exact_counts(world, "sync_factor_1_5")
    assert report["used_per_learner"] == [12, 12]
    for learner in world["sync_factor_1_5"][1:]:
        groups = _groups(learner["batches"])
        assert set(groups) == {1, 2}
        first_pass = groups[:SHARD_BATCHES]
        assert sum(first_pass) == SHARD_BATCHES + extra_serves(1.5, SHARD_BATCHES)  # 8 gradients on 5 fresh batches
    assert 0 < sum(report["echoed_gradients_per_learner"]) < sum(report["fresh_gradients_per_learner"])


@pytest.mark.slow
@pytest.mark.timeout(DEADLINE_S + 60)
def test_without_data_echoing_every_gradient_is_fresh(world: dict[str, Any]) -> None:
    report = _check_exact_counts(world, "no_echo")
    assert report["fresh_gradients_per_learner"] == report["used_per_learner"]
    assert report["echoed_gradients_per_learner"] == [0, 0]
    assert world["no_echo"][0]["fresh_batches"] == 8


@pytest.mark.slow
@pytest.mark.timeout(DEADLINE_S + 60)
def test_the_servers_epoch_spans_the_learners_echoed_pass(world: dict[str, Any]) -> None:
    report = _check_exact_counts(world, "one_epoch")
    server = world["one_epoch"][0]
    assert server["global_step"] == gradients_per_pass(9, DataEchoing(factor=2)) // 2 == 9  # not ceil(9 / 2) = 5
    assert report["used_per_learner"] == [9, 9] and report["fresh_gradients_per_learner"] == [5, 5]


@pytest.mark.slow
@pytest.mark.timeout(DEADLINE_S + 60)
def test_the_fresh_sample_budget_ends_the_run_at_the_clusters_fresh_data(world: dict[str, Any]) -> None:
    report = _check_exact_counts(world, "budget")
    server = world["budget"][0]
    # Updates 1, 3 and 5 bring 8 fresh samples each (two learners' fresh batches of 4), 2 and 4 none:
    # the budget of 20 is reached at update 5 (counting every gradient as fresh would end it at update 3).
    assert server["global_step"] == 5 and server["fresh_samples"] == 24
    assert report["fresh_gradients_per_learner"] == [3, 3] and report["echoed_gradients_per_learner"] == [2, 2]


@pytest.mark.slow
@pytest.mark.timeout(DEADLINE_S + 60)
def test_auto_echoes_while_a_slow_loader_loads_and_not_on_a_fast_one(world: dict[str, Any]) -> None:
    slow = _check_exact_counts(world, "auto_slow")
    assert all(echoed > 0 for echoed in slow["echoed_gradients_per_learner"])
    for i, learner in enumerate(world["auto_slow"][1:]):
        assert max(_groups(learner["batches"])) <= 4  # max_factor
        assert 0 < slow["data_wait_s_per_learner"][i] <= learner["report"]["data_wait_s"]  # the last used gradient's total
    fast = _check_exact_counts(world, "auto_fast")
    # A fast loader has the next fresh batch waiting at every step; only a pass's first batch may be
    # echoed, while the stage's thread starts over and fetches the second.
    for i, learner in enumerate(world["auto_fast"][1:]):
        flags = _fresh_flags(learner["batches"])
        fresh_batches = [b for b, fresh in zip(learner["batches"], flags) if fresh]
        pass_starts = {json.dumps(b) for k, b in enumerate(fresh_batches) if k % SHARD_BATCHES == 0}
        echoed = [b for b, fresh in zip(learner["batches"], flags) if not fresh]
        assert all(json.dumps(b) in pass_starts for b in echoed), learner["batches"]
        assert fast["echoed_gradients_per_learner"][i] <= 2  # at most once per pass started (8 gradients: 2 passes)


@pytest.mark.slow
@pytest.mark.timeout(DEADLINE_S + 60)
def test_a_resumed_run_continues_the_fresh_and_echo_counters_and_the_learners_restart_their_loaders(
        world: dict[str, Any]) -> None:
    server, *learners = world["resume"]
    assert "error" not in server, server
    saved, totals, report = server["saved"], server["totals"], server["report"]
    assert saved["fresh_gradients_per_learner"] == [3, 3] and saved["echoed_gradients_per_learner"] == [2, 2]
    assert saved["fresh_samples_per_learner"] == [12, 12]
    # The second fit made updates 6 to 9 on learners that read their shards from the start again.
    assert server["global_step"] == 9 and report["updates"] == 4
    assert report["fresh_gradients_per_learner"] == [2, 2] and report["echoed_gradients_per_learner"] == [2, 2]
    assert totals["fresh_gradients_per_learner"] == [5, 5] and totals["echoed_gradients_per_learner"] == [4, 4]
    assert totals["fresh_samples_per_learner"] == [20, 20]
    assert server["first"]["fresh_samples"] == 24 and server["fresh_samples"] == 40 == sum(totals["fresh_samples_per_learner"])
    for i in range(2):
        assert totals["data_wait_s_per_learner"][i] == pytest.approx(
            saved["data_wait_s_per_learner"][i] + report["data_wait_s_per_learner"][i])
    for learner in learners:
        assert learner["batches"][0] == learner["first"]["batches"][0]
    last = [row for row in metrics_rows(server["metrics_csv"]) if row.get(LearnerData.ECHOED_GRADIENTS)][-1]
    assert float(last[LearnerData.ECHOED_GRADIENTS]) == 8 and float(last[Progress.FRESH_SAMPLES]) == 40


@pytest.mark.slow
@pytest.mark.timeout(DEADLINE_S + 60)
def test_every_rank_refuses_what_no_rank_can_run_before_the_channels_open(world: dict[str, Any]) -> None:
    for rank in world["refused"]:
        assert rank["error_type"] == "ConfigError" and "val_check_interval=0.5" in rank["error"], rank
    assert "Connection closed by peer" not in world["log"]
    assert world["loader_fails"][2]["error_type"] == "OSError"  # the next fit of the world trained


@pytest.mark.slow
@pytest.mark.timeout(DEADLINE_S + 60)
def test_a_learners_loader_error_reaches_every_process_and_nothing_outlives_any_fit(world: dict[str, Any]) -> None:
    server, first, failing = world["loader_fails"]
    assert failing["error_type"] == "OSError" and "cannot read row" in failing["error"]
    assert server["error_type"] == "ParameterServerError" and "learner 1 (rank 2) is lost" in server["error"], server
    assert first["error_type"] == "ParameterServerError", first
    for scenario in SCENARIOS:  # the echo stages' threads and the DataLoader workers (auto_slow) stopped on every rank
        assert [rank["threads_after_fit"] for rank in world[scenario]] == [[], [], []], scenario
        assert [rank["children_after_fit"] for rank in world[scenario]] == [[], [], []], scenario
    assert "terminate called" not in world["log"]


# -- the note and the counters, without a world ------------------------------------------------------
def test_the_push_note_carries_the_gradients_data_ahead_of_the_logged_values() -> None:
    logged = {"train/loss": LoggedValue(0.5, {"on_step": True}), "acc": LoggedValue(1.0, {})}
    data = GradientData(fresh_batches=1, fresh_samples=32, data_wait_s=1.2345678)
    note, left_out = encode_push_note(data, logged)
    decoded, values = decode_push_note(note)
    assert left_out == [] and decoded == GradientData(1, 32, 1.234568)
    assert values["train/loss"].value == 0.5 and set(values) == {"train/loss", "acc"}
    assert decode_push_note(encode_push_note(GradientData(0, 0), {})[0]) == (GradientData(0, 0, 0.0), {})
    with pytest.raises(ProtocolError, match="lacks the line"):
        decode_push_note(b'{"train/loss":[0.5,[]]}')


def test_logged_values_that_do_not_fit_beside_the_data_line_are_left_out_by_name() -> None:
    many = {f"metric_{i:04d}": LoggedValue(float(i), {}) for i in range(200)}
    note, left_out = encode_push_note(GradientData(1, 8, 0.5), many)
    assert len(note) <= NOTE_CAPACITY and left_out
    data, values = decode_push_note(note)
    assert data == GradientData(1, 8, 0.5) and set(values) | set(left_out) == set(many)


def test_the_server_counts_each_learners_fresh_and_echoed_gradients_and_keeps_its_latest_wait() -> None:
    report = ServerReport("async", learners=2)
    start_counting(report)
    count_used(report, [1, 0, 1], [GradientData(1, 4, 0.5), GradientData(0, 0, 0.25), GradientData(0, 0, 0.75)])
    assert report.fresh_gradients_per_learner == [0, 1] and report.echoed_gradients_per_learner == [1, 1]
    assert report.fresh_samples_per_learner == [0, 4] and report.data_wait_s_per_learner == [0.25, 0.75]
    assert report.fresh_samples == 4 and report.echoed_gradients == 2


def test_carried_counts_continue_per_learner_and_read_checkpoints_written_before_them() -> None:
    report = ServerReport("async", learners=2, gradients_used=3)
    start_counting(report)
    count_used(report, [0, 1, 1], [GradientData(1, 4, 0.5), GradientData(1, 4, 0.1), GradientData(0, 0, 0.2)])
    old = CarriedCounts.from_totals({"gradients_used": 5, "gradients_discarded": 1})  # an older checkpoint
    assert old.totals(report)["fresh_samples_per_learner"] == [4, 4] and old.totals(report)["gradients_used"] == 8
    carried = CarriedCounts.from_totals(old.totals(report))
    totals = carried.totals(report)
    assert totals["fresh_gradients_per_learner"] == [2, 2] and totals["echoed_gradients_per_learner"] == [0, 2]
    assert totals["data_wait_s_per_learner"] == [1.0, 0.4] and totals["gradients_used"] == 11
    wider = CarriedCounts.from_totals({"fresh_samples_per_learner": [1, 2, 3]})  # a run resumed on fewer learners
    assert wider.learner_totals(report, "fresh_samples_per_learner") == [5, 6, 3]


def test_the_servers_epoch_length_follows_the_learners_echo_stage() -> None:
    assert gradients_per_pass(9) == 9 and gradients_per_pass(None, DataEchoing(factor=2)) is None
    assert gradients_per_pass(9, DataEchoing(factor=2)) == 18
    assert gradients_per_pass(9, DataEchoing(factor=1.5)) == 9 + extra_serves(1.5, 9)
    assert gradients_per_pass(9, DataEchoing(factor="auto")) is None  # not known: the epoch is endless
    assert gradients_per_pass(9, DataEchoing(factor=2, kind="example")) is None


@pytest.mark.slow
@pytest.mark.timeout(DEADLINE_S + 60)
def test_the_librarys_own_loader_shards_by_the_learners_not_the_processes(world: dict[str, Any]) -> None:
    server, *learners = world["library_loader"]
    assert "error" not in server, server
    read = [sorted({i for batch in learner["batches"] for i in batch}) for learner in learners]
    assert not set(read[0]) & set(read[1])  # two shards of P = 2: disjoint ...
    assert sorted(read[0] + read[1]) == list(range(36))  # ... and together every row (not 2 of 3 shards)
    # the server's epoch spans the whole data's echoed pass, as with a DataLoader: 9 batches x 2 / K = 9
    assert server["global_step"] == 9 and server["fresh_samples"] == 36
