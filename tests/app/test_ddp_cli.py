"""Multi-device training from the command line: real 2-process DDP runs (gloo on CPU) through the
installed console script. The job starts one process per device, for a single run and for each job
of a sweep; a rank that fails, and a signal to the job, end the run cleanly, with no process left.

Faults are injected by the model (``model._target_`` below): at a chosen step, on a chosen rank, it
raises, or sends SIGTERM to the job that started it.
"""

from __future__ import annotations

import csv
import json
import re
import signal
from pathlib import Path
from typing import Any, Optional

import pytest

from conftest import only_run_dir as _only_run_dir, processes_under, run_cli, run_record as _record
from rank_faults import fault_overrides as _fault, rank_env as _env
from lightning_echo.app.config import compose_config
from lightning_echo.app.launch import RankEnd, RanksResult, process_plan
from lightning_echo.cli import main
from lightning_echo.errors import ConfigError

DDP = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp", "trainer.enable_progress_bar=false",
       "data.n_examples=2048", "data.batch_size=32"]
SINGLE = ["experiment=single", *DDP]


def _logged_steps(run_dir: Path) -> list[int]:
    with (run_dir / "csv" / "metrics.csv").open(newline="") as stream:
        return [int(float(row["progress/optimizer_steps"])) for row in csv.DictReader(stream)
                if row.get("progress/optimizer_steps")]


@pytest.mark.slow
def test_ddp_sweep_runs_each_job_once_on_both_ranks_then_reports(tmp_path: Path, no_leftovers: None) -> None:
    result = run_cli(["-m", "algorithm=sync,echo", *SINGLE, "trainer.max_steps=8"], cwd=tmp_path,
                     env_extra=_env(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    sweeps = list((tmp_path / "le_outputs" / "multirun").iterdir())
    assert len(sweeps) == 1 and not (tmp_path / "le_outputs" / "runs").exists()  # no rank ran the command line again
    sweep = sweeps[0]
    assert sorted(p.name for p in sweep.iterdir() if p.name.isdigit()) == ["0", "1"]
    # Both ranks of each job took the 8 steps; sync trained on 8 fresh batches of 32 per rank, echo on 4.
    for number, (algorithm, fresh) in enumerate([("sync", 256), ("echo", 128)]):
        record = _record(sweep / str(number))
        assert record["status"] == "completed" and record["processes"] == 2
        assert record["config"]["algorithm"] == algorithm
        assert [(r["rank"], r["status"], r["optimizer_steps"], r["fresh_samples"]) for r in record["ranks"]] == [
            (0, "completed", 8, fresh), (1, "completed", 8, fresh)]
        assert _logged_steps(sweep / str(number))[-1] == 8
    assert sum(line.startswith("[job ") for line in result.stdout.splitlines()) == 2  # once each, not once per rank
    assert "sweep: 2 jobs, 2 completed, 0 failed" in result.stdout
    assert (sweep / "report" / "index.html").is_file()
    assert [job["status"] for job in json.loads((sweep / "sweep.json").read_text())["jobs"]] == ["completed"] * 2


@pytest.mark.slow
def test_ddp_echo_run_stops_on_sigterm_at_one_step_and_resumes_to_the_end(tmp_path: Path, no_leftovers: None) -> None:
    fault = _fault("sigterm_job", rank=0, step=4, marker=tmp_path / "signal_sent")
    result = run_cli([*SINGLE, "algorithm=echo", "echo.factor=2", "trainer.max_steps=12",
                      "checkpoint.every_n_steps=100", *fault], cwd=tmp_path, env_extra=_env(tmp_path))
    assert result.returncode == 128 + signal.SIGTERM, result.stderr[-3000:]
    run_dir = _only_run_dir(tmp_path)
    errors = [line for line in result.stderr.splitlines() if line.startswith("lightning-echo:")]
    assert len(errors) == 1 and errors[0].startswith("lightning-echo: interrupted by SIGTERM: at step 5; checkpoint ")
    assert errors[0].endswith(f"continue it with: lightning-echo resume {run_dir}")
    record = _record(run_dir)
    assert record["status"] == "interrupted" and [r["status"] for r in record["ranks"]] == ["interrupted"] * 2
    assert processes_under(tmp_path) == []

    resumed = run_cli(["resume", "--trust-config", str(run_dir)], cwd=tmp_path, env_extra=_env(tmp_path))  # its fault injector is a test class
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    record = _record(run_dir)
    assert record["status"] == "completed" and record["resumes"][0]["step"] == 5  # every rank stopped after step 5
    # Both ranks trained the 12 steps, echoing: 6 fresh batches of 32 each.
    assert [(r["rank"], r["status"], r["optimizer_steps"], r["fresh_samples"]) for r in record["ranks"]] == [
        (0, "completed", 12, 192), (1, "completed", 12, 192)]
    steps = _logged_steps(run_dir)
    assert steps[-1] == 12 and steps == sorted(steps)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["optimizer_steps"] == 12 and summary["fresh_samples"] == 192
    assert sum("after 12 steps, 192 fresh samples" in line for line in resumed.stdout.splitlines()) == 1


@pytest.mark.slow
def test_a_failing_rank_fails_the_run_in_one_line(tmp_path: Path, no_leftovers: None) -> None:
    result = run_cli([*SINGLE, "trainer.max_steps=100000", *_fault("raise", rank=1, step=3)], cwd=tmp_path,
                     env_extra=_env(tmp_path))
    assert result.returncode == 1, result.stderr[-3000:]
    expected = "rank 1 of 2 failed: RuntimeError: injected failure on rank 1"  # not rank 0's lost connection
    errors = [line for line in result.stderr.splitlines() if line.startswith("lightning-echo:")]
    assert len(errors) == 1 and errors[0].startswith(f"lightning-echo: {expected} [see "), result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    record = _record(_only_run_dir(tmp_path))
    assert record["status"] == "failed" and record["error"] == expected
    assert "injected failure" in record["traceback"]
    assert [r["status"] for r in record["ranks"]] == ["failed", "failed"]


def _end(rank: int, returncode: int, status: Optional[str] = None, at: float = 0.0,
         killed_here: bool = False) -> RankEnd:
    outcome = None if status is None else {"status": status, "error": f"Error{rank}: x", "at": at}
    return RankEnd(rank, returncode, killed_here, outcome)


def test_the_rank_that_failed_first_is_the_one_reported() -> None:
    # Rank 1 raised first; rank 0 then lost its connection to it.
    assert RanksResult([_end(0, 1, "failed", at=2.0), _end(1, 1, "failed", at=1.0)]).first_failure().rank == 1
    # A rank killed from outside (OOM) wrote nothing: it is the cause, whatever the others reported.
    killed = RanksResult([_end(0, 1, "failed", at=1.0), _end(1, -9)]).first_failure()
    assert killed.rank == 1 and killed.describe(2) == "rank 1 of 2 was killed by SIGKILL"
    # Ranks this job killed after another failed are not causes; diverged and completed ranks did not fail.
    assert RanksResult([_end(0, -9, killed_here=True), _end(1, 1, "failed")]).first_failure().rank == 1
    assert RanksResult([_end(0, 0, "completed"), _end(1, 3, "diverged")]).first_failure() is None
    assert RanksResult([_end(0, 1, "failed")]).first_failure().describe(2) == "rank 0 of 2 failed: Error0: x"


def test_ddp_spawn_is_refused_in_one_line_before_anything_runs(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["experiment=single", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp_spawn"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == ("lightning-echo: error: trainer.strategy='ddp_spawn' is not allowed: it starts its processes by "
                   "spawn, which the command line does not support; use trainer.strategy=ddp (the command line "
                   "starts one process per device, for each job of a sweep too)")
    assert not (tmp_path / "le_outputs").exists()


@pytest.mark.parametrize("overrides, expected", [
    (["trainer.devices=2", "trainer.strategy=ddp"], 2),
    (["trainer.devices=2", "trainer.strategy=auto"], 2),
    (["trainer.devices=1"], 1),
    (["trainer.devices=1", "trainer.strategy=ddp_fork"], "trainer.strategy='ddp_fork' is not allowed"),
    (["trainer.devices=2", "+trainer.num_nodes=2"], "trainer.num_nodes=2 is not allowed: the command line starts the "
                                                     "processes of one machine"),
])
def test_processes_the_command_line_starts(overrides: list[str], expected: Any) -> None:
    cfg = compose_config(["experiment=single", "trainer.accelerator=cpu", *overrides])
    if isinstance(expected, int):
        assert process_plan(cfg).processes == expected
    else:
        with pytest.raises(ConfigError, match=re.escape(expected)):
            process_plan(cfg).processes


def test_a_process_started_by_another_launcher_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = compose_config(["experiment=single", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp"])
    monkeypatch.setenv("LOCAL_RANK", "0")  # as torchrun sets it
    with pytest.raises(ConfigError, match="LOCAL_RANK is set"):
        process_plan(cfg).processes


def test_the_ranks_rendezvous_store_listens_on_the_loopback_interface_only() -> None:
    import socket

    from lightning_echo.app.launch import RendezvousStore

    others = [address for address in socket.gethostbyname_ex(socket.gethostname())[2] if not address.startswith("127.")]
    try:  # the address of the interface a route out goes through (a UDP "connection" sends nothing)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))
            others.append(probe.getsockname()[0])
    except OSError:
        pass
    others = [address for address in others if not address.startswith("127.")]
    if not others:
        pytest.skip("this host has no address but loopback to try the store from")
    store = RendezvousStore()
    try:
        assert store.environment()["MASTER_ADDR"] == "127.0.0.1"
        with socket.create_connection(("127.0.0.1", store.port), timeout=5):
            pass  # the ranks reach it
        with pytest.raises(OSError):
            socket.create_connection((others[0], store.port), timeout=5).close()  # other interfaces do not
    finally:
        store.close()
