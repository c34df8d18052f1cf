"""ParameterServerStrategy on real processes: a user's script (``tests/scripts/ps_lightning.py``)
runs ``Trainer(devices=3, accelerator="cpu", strategy=ParameterServerStrategy(...))`` in a
subprocess, and Lightning's launcher starts the two learner processes.

One world runs every fit that succeeds in a row (its processes import torch and Lightning
once, about 7 CPU-seconds each), the one whose learner is killed last; a second world fails.
Each world has a hard deadline, and every process of it must have ended on its own once the
script's main process ends (the whole process group is killed afterwards in any case).
"""

from __future__ import annotations

import importlib.util
import math
import signal
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

from lightning_echo.errors import ConfigError
from lightning_echo.stragglers.processes.exchange import FlatExchange
from lightning_echo.stragglers.processes.slots import UpdateSlots, server_epoch_length
from lightning_echo.stragglers.processes.strategy import ParameterServerStrategy, exchanged_buffers

from algorithm_registry import PROCESS_TOTALS, PROCESSES, REGISTRY, cases
from conftest import SCRIPTS
from process_worlds import DEADLINE_S, metrics_rows, run_clean_world, run_world

SCRIPT = SCRIPTS / "ps_lightning.py"
_spec = importlib.util.spec_from_file_location("ps_lightning", SCRIPT)
ps_lightning = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ps_lightning)  # the problem's data and loss, shared with the processes

# Every straggler algorithm of the registry on real processes (4 updates, a checkpoint, 4 more),
# then the named scenarios; "killed" last: the world has a learner less afterwards.
REGISTRY_SCENARIOS = tuple(f"registry_{name}" for name, _ in cases((PROCESSES,)))
SCENARIOS = (*REGISTRY_SCENARIOS, "async", "k_sync", "sync", "registered", "resume", "batchnorm", "killed")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    yield run_clean_world(SCRIPT, tmp_path_factory.mktemp("ps_strategy"), *SCENARIOS)


def _column(rows: list[dict[str, str]], name: str) -> list[float]:
    return [float(row[name]) for row in rows if row.get(name)]


# -- pieces without processes ---------------------------------------------------------------------
def test_the_exchange_carries_the_loss_and_batch_size_after_the_gradient() -> None:
    weight, bias = torch.nn.Parameter(torch.zeros(2, 3)), torch.nn.Parameter(torch.zeros(3))
    exchange = FlatExchange([weight, bias])
    flat = torch.empty(exchange.numel)
    assert exchange.numel == 9 + 2
    exchange.pack_gradient([torch.ones(2, 3), None], loss=0.5, samples=4, flat=flat)
    assert flat.tolist() == [1.0] * 6 + [0.0] * 3 + [0.5, 4.0]
    grads = [torch.empty(2, 3), torch.empty(3)]
    assert exchange.unpack_gradient(flat * 2, grads) == (1.0, 8.0) and grads[0].sum() == 12
    exchange.pack_parameters([torch.full((2, 3), 3.0), torch.ones(3)], flat)
    assert flat[-2:].tolist() == [0.0, 0.0]  # a START's trailer
    exchange.unpack_parameters(flat, [weight, bias])
    assert weight.sum() == 18 and weight.grad is None


def test_buffers_travel_after_the_parameters_as_state_out_and_changes_in() -> None:
    weight = torch.nn.Parameter(torch.zeros(2))
    running = torch.zeros(3)
    exchange = FlatExchange([weight], [running])
    flat = torch.empty(exchange.numel)
    assert exchange.numel == 2 + 3 + 2 and exchange.parameter_numel == 2
    exchange.pack_parameters([torch.ones(2)], flat, [torch.full((3,), 5.0)])
    assert flat.tolist() == [1.0, 1.0, 5.0, 5.0, 5.0, 0.0, 0.0]
    assert [tuple(v.shape) for v in exchange.parameter_views(flat)] == [(2,)]  # the buffers are no parameter
    exchange.pack_gradient([torch.full((2,), 0.5)], loss=2.0, samples=4, flat=flat, buffer_changes=[torch.ones(3)])
    grads, changes = [torch.empty(2)], [torch.empty(3)]
    assert exchange.unpack_gradient(flat, grads, changes) == (2.0, 4.0) and changes[0].tolist() == [1.0] * 3


def test_floating_buffers_of_the_parameters_dtype_travel_and_the_others_stay(caplog: pytest.LogCaptureFixture) -> None:
    module = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    module.register_buffer("fine", torch.zeros(2, dtype=torch.float64))
    bn = module[1]
    with caplog.at_level("WARNING", logger="lightning_echo.stragglers.processes"):
        exchanged = exchanged_buffers(module, torch.float32, warn=True)
    assert [id(b) for b in exchanged] == [id(bn.running_mean), id(bn.running_var)]  # not num_batches_tracked
    assert "buffers fine are torch.float64, not torch.float32 like the parameters" in caplog.text


def test_the_servers_epoch_is_one_pass_over_the_data_and_resumes_mid_epoch() -> None:
    assert server_epoch_length(10, gradients_per_update=1) == 10
    assert server_epoch_length(10, gradients_per_update=4) == 3
    assert server_epoch_length(None, gradients_per_update=1) is None
    slots = UpdateSlots(3)
    first = iter(slots)
    next(first)
    next(first)
    resumed = UpdateSlots(3)
    resumed.load_state_dict(slots.state_dict())
    assert [s.index for s in resumed] == [3] and [s.index for s in resumed] == [1, 2, 3]
    endless = iter(UpdateSlots(None))
    assert [next(endless).index for _ in range(5)] == [1, 2, 3, 4, 5]
    with pytest.raises(TypeError):
        len(UpdateSlots(None))


@pytest.mark.parametrize("settings,message", [
    ({"variant": "sometimes"}, "stale.variant"),
    ({"timeout": 0}, "ps.timeout"),
    ({"lr_rule": "dutta"}, "stale.c"),
    ({"delay": {"distribution": "exponential", "rate": 2}}, "stale.delay.rate"),
    ({"k": 0}, "stale.k"),
])
def test_bad_settings_are_refused_in_one_line_before_any_process_starts(settings: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as raised:
        ParameterServerStrategy(**settings)
    assert "\n" not in str(raised.value)


# -- real processes ---------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(DEADLINE_S + 60)
def test_async_trains_until_the_servers_max_steps_and_logs_each_update(world: dict[str, Any]) -> None:
    server, *learners = world["async"]
    report = server["report"]
    assert server["global_step"] == 12 and report["updates"] == 12 and report["lost"] == {}
    # The learners' own limits (max_steps=2, max_epochs=1, max_time) did not end them: the server's STOP did.
    assert all(learner["report"]["stopped"] for learner in learners)
    fast = learners[0]
    assert fast["report"]["pushed"] > 4 and fast["global_step"] > 2  # more than one epoch of its 4-batch shard
    assert "Timer" not in fast["callbacks"] and "ModelCheckpoint" not in fast["callbacks"]
    assert "ModelCheckpoint" in server["callbacks"] and "TrainingProgress" in server["callbacks"]
    assert sum(report["used_per_learner"]) == 12 and report["used_per_learner"][0] > report["used_per_learner"][1]
    rows = metrics_rows(server["metrics_csv"])
    for name in ("ps/updates_per_s", "ps/loss", "stale/staleness_mean", "stale/step_factor", "stale/lr",
                 "stale/discarded", "stale/cancelled", "ps/learner_0/gradients_per_s", "ps/learner_1/gradients_per_s",
                 "time/elapsed_s"):
        assert _column(rows, name), name
    assert max(_column(rows, "stale/staleness_max")) >= 1  # the slow learner's gradients are stale
    assert _column(rows, "stale/lr")[-1] == pytest.approx(ps_lightning.LR)
    assert _column(rows, "val/loss")  # validation ran on the server
    steps = _column(rows, "progress/optimizer_steps")
    assert steps[-1] == 12 and all(math.isfinite(v) for v in _column(rows, "ps/loss"))


@pytest.mark.slow
@pytest.mark.timeout(DEADLINE_S + 60)
def test_k_sync_cancels_the_slow_learner_and_counts_every_cancellation_once(world: dict[str, Any]) -> None:
    server, *learners = world["k_sync"]
    report = server["report"]
    assert server["global_step"] == 10 and report["updates"] == 10 and report["lost"] == {}
    assert report["used_per_learner"][1] <= 2  # 20 times slower: cancelled at nearly every update
    assert report["computations_cancelled"] >= 8
    cancelled = sum(learner["report"]["cancelled"] for learner in learners)
    assert report["computations_cancelled"] == cancelled + report["cancelled_arrived"]
    assert all(learner["report"]["stopped"] for learner in learners)


@pytest.mark.slow
@pytest.mark.timeout(DEADLINE_S + 60)
def test_sync_equals_averaged_gradient_sgd_over_the_learners_batches(world: dict[str, Any]) -> None:
    server, *learners = world["sync"]
    steps = 5
    assert server["global_step"] == steps and server["report"]["staleness_counts"] == {"0": 2 * steps}
    first = [set(sum(learner["batches"][:4], [])) for learner in learners]
    assert not first[0] & first[1] and len(first[0] | first[1]) == ps_lightning.ROWS  # one shard each
    data = ps_lightning.regression_data()
    w = torch.tensor(server["initial"])
    for step in range(steps):
        grads = []
        for learner in learners:
            rows = learner["batches"][step]
            weight = w[: ps_lightning.DIM].view(1, -1).clone().requires_grad_()
            bias = w[ps_lightning.DIM :].clone().requires_grad_()
            loss = ps_lightning.batch_loss(weight, bias, data.tensors[0][rows], data.tensors[1][rows])
            grads.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, [weight, bias])]))
        w = w - ps_lightning.LR * torch.stack(grads).mean(0)
    assert torch.allclose(torch.tensor(server["params"]), w, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.timeout(DEADLINE_S + 60)
def test_the_registered_name_builds_the_strategy(world: dict[str, Any]) -> None:
    server, *learners = world["registered"]
    assert server["strategy"] == "ParameterServerStrategy" and server["report"]["variant"] == "async"
    assert server["global_step"] == 4 and server["report"]["updates"] == 4
    assert all(learner["report"]["stopped"] for learner in learners)


@pytest.mark.slow
@pytest.mark.timeout(DEADLINE_S + 60)
def test_fit_resumes_the_server_from_its_checkpoint(world: dict[str, Any]) -> None:
    server, *learners = world["resume"]
    assert server["saved"]["version"] == 4 and server["saved"]["totals"]["gradients_used"] == 4
    assert server["global_step"] == 7 and server["report"]["updates"] == 3  # the resumed fit made the rest
    assert server["state_after"]["version"] == 7 and server["state_after"]["totals"]["gradients_used"] == 7
    assert all(learner["report"]["stopped"] for learner in learners)


@pytest.mark.slow
@pytest.mark.timeout(DEADLINE_S + 60)
@pytest.mark.parametrize("scenario", REGISTRY_SCENARIOS)
def test_every_straggler_algorithm_runs_on_processes_and_its_totals_continue_across_a_resume(
    world: dict[str, Any], scenario: str
) -> None:
    server, *learners = world[scenario]
    assert server["variant"] == REGISTRY[scenario[len("registry_"):]].variant
    assert server["global_step"] == 8 and server["report"]["lost"] == {}
    assert all(learner["report"]["stopped"] for learner in learners)
    first, second = (metrics_rows(path) for path in server["metrics_csv"])
    saved = server["saved_totals"]
    for name, total in zip(PROCESS_TOTALS, ("gradients_discarded", "computations_cancelled")):
        before, after = _column(first, name), _column(second, name)
        assert before and after, name
        assert before[-1] == saved[total], name  # the checkpoint holds what the run logged last
        assert after == sorted(after) and after[0] >= saved[total], name  # counted on from there, not from 0
    assert _column(second, "progress/optimizer_steps")[-1] == 8
    # learner 1 is five times slower: these variants cancel or discard its work (counted on from the checkpoint)
    counted = {"k_batch_sync": PROCESS_TOTALS[1], "ringmaster": PROCESS_TOTALS[1], "rennala": PROCESS_TOTALS[0]}
    if server["variant"] in counted:
        assert _column(second, counted[server["variant"]])[-1] > 0, server["variant"]


@pytest.mark.slow
@pytest.mark.timeout(DEADLINE_S + 60)
def test_async_carries_on_when_a_learner_is_killed(world: dict[str, Any]) -> None:
    server, survivor, killed = world["killed"]
    assert killed is None  # learner 1 SIGKILLed itself at its third gradient
    report = server["report"]
    assert server["global_step"] == 20 and report["updates"] == 20
    assert list(report["lost"]) == ["1"] and report["used_per_learner"][1] <= 2
    assert survivor["report"]["stopped"]
    assert _column(metrics_rows(server["metrics_csv"]), "ps/lost_learners")[-1] == 1
    assert "learner 1 (rank 2) is lost" in world["log"]


@pytest.mark.slow
@pytest.mark.timeout(DEADLINE_S + 60)
def test_batchnorm_statistics_follow_the_learners_data_and_constant_buffers_stay_exact(world: dict[str, Any]) -> None:
    server, *learners = world["batchnorm"]
    steps, momentum = 3, 0.5
    assert server["global_step"] == steps and server["report"]["staleness_counts"] == {"0": 2 * steps}
    # Sync: each update adds the mean of the learners' changes m (batch statistic - read value).
    x = ps_lightning.regression_data().tensors[0]
    mean, var = torch.zeros(ps_lightning.DIM), torch.ones(ps_lightning.DIM)
    for step in range(steps):
        batches = [x[learner["batches"][step]] for learner in learners]
        mean = (1 - momentum) * mean + momentum * torch.stack([b.mean(0) for b in batches]).mean(0)
        var = (1 - momentum) * var + momentum * torch.stack([b.var(0, unbiased=True) for b in batches]).mean(0)
    buffers = server["buffers"]
    assert torch.allclose(torch.tensor(buffers["norm.running_mean"]), mean, atol=1e-6)
    assert torch.allclose(torch.tensor(buffers["norm.running_var"]), var, atol=1e-5)
    assert buffers["offset"] == server["initial_buffers"]["offset"]  # bit for bit: no forward changed it
    assert buffers["norm.num_batches_tracked"] == 0  # integer buffers stay each process's own: the server ran no forward in training


@pytest.mark.slow
@pytest.mark.timeout(DEADLINE_S + 60)
def test_every_learner_fails_with_one_clear_error_when_the_server_dies(tmp_path: Path) -> None:
    results = run_world(SCRIPT, tmp_path / "server_killed", "server_killed")
    assert results["returncode"] == -signal.SIGKILL and not results["outlived"]
    server, *learners = results["server_killed"]
    assert server is None  # killed after its third update
    for index, learner in enumerate(learners):
        assert f"learner {index} stops: the parameter server (rank 0) is unreachable" in learner["error"]
