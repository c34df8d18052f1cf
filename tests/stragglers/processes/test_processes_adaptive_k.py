"""``stale.k=auto`` on a ParameterServerStrategy on real processes: the server chooses K from real
arrival times and the updates' losses, logs it per update, saves the rule in its checkpoint and a
resumed run continues it. One world (``tests/scripts/ps_adaptive_k.py``: the server and two
learners, learner 1 six times slower) runs the scenarios in a row."""

from __future__ import annotations

from typing import Any, Iterator

import pytest

from conftest import SCRIPTS
from lightning_echo.metric_names import Stale
from process_worlds import DEADLINE_S, metrics_rows, run_clean_world

SCRIPT = SCRIPTS / "ps_adaptive_k.py"
SCENARIOS = ("auto", "resume", "epochs_only")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    yield run_clean_world(SCRIPT, tmp_path_factory.mktemp("ps_adaptive_k"), *SCENARIOS)


def _logged_k(server: dict[str, Any]) -> list[tuple[int, int]]:
    """(step, stale/k) of every update the server logged."""
    rows = metrics_rows(server["metrics_csv"])
    return [(int(row["step"]), int(float(row[Stale.K]))) for row in rows if row.get(Stale.K)]


def _times(state: dict[str, Any]) -> list[float]:
    """Each learner's mean observed compute time."""
    return [sum(times) / len(times) for times in state["times"]]


@pytest.mark.slow
@pytest.mark.timeout(DEADLINE_S + 60)
def test_the_server_chooses_k_from_real_arrival_times_and_raises_it_at_the_floor(world: dict[str, Any]) -> None:
    server, *learners = world["auto"]
    assert "error" not in server, server
    assert all("error" not in learner and not learner["threads_after_fit"] for learner in learners)
    state = server["adaptive_k"]
    slow, fast = _times(state)[1], _times(state)[0]
    assert slow > 2 * fast  # the injected 6x is what the server timed (plus the transfers and the machine's load)
    assert state["updates"] == server["global_step"] == 500 and state["warm"]
    # K = 1 first (waiting for the slow learner costs 6x per update), 2 once the loss stops falling.
    assert state["changes"][0] == [0, 1] and state["k"] == 2 and state["level"] >= 1
    ks = [k for _, k in _logged_k(server)]
    assert len(ks) == 500 and ks[0] == 1 and ks[-1] == 2
    # Each update averaged the K the rule had chosen (its last choice may come after the last update).
    chosen = [k for _, k in state["changes"]]
    assert [k for i, k in enumerate(ks) if i == 0 or k != ks[i - 1]] in (chosen, chosen[:-1])


@pytest.mark.slow
@pytest.mark.timeout(DEADLINE_S + 60)
def test_a_resumed_run_continues_k_and_the_rule(world: dict[str, Any]) -> None:
    server = world["resume"][0]
    assert "error" not in server, server
    saved, final = server["saved"], server["adaptive_k"]
    assert saved == server["first"]["adaptive_k"] and saved["updates"] == 400
    assert final["updates"] == server["global_step"] == 600  # counted on from the checkpoint's 400
    assert final["changes"][:len(saved["changes"])] == saved["changes"]
    logged = _logged_k(server)
    assert logged[0] == (401, saved["k"])  # the first update after the resume takes the saved K
    assert saved["k"] == 2  # the loss reached its floor before the checkpoint: K = 1 again would be a restart


@pytest.mark.slow
@pytest.mark.timeout(DEADLINE_S + 60)
def test_a_run_only_epochs_would_end_is_refused_on_every_rank(world: dict[str, Any]) -> None:
    for outcome in world["epochs_only"]:
        assert outcome["error_type"] == "ConfigError" and "trainer.max_steps=-1" in outcome["error"]
        assert "stale.k=auto" in outcome["error"] and "\n" not in outcome["error"]
