"""A short soak of the parameter server from the command line (the long one: ``bench/ps_soak.py``).

One k_async run (``lightning-echo ... backend=processes``) while this test injects faults by pid,
found in ``/proc`` (children of the job running the rank code, by their ``LOCAL_RANK``): learner 0
SIGKILLed and learner 1 SIGSTOPped (hung: the server drops it after ``ps.timeout`` and the job
kills it and starts it again); when both were restarted and joined, the server SIGKILLed; when the
restarted server trains with every learner back, learner 0 SIGKILLed again. Each step waits for
the run to say the previous one happened (its log, its checkpoint), so the test asserts counts and
orderings, never speed.

Not covered here (see BENCHMARKS.md, "Soak"): a fault while a restarted process is still joining,
and a learner killed before the ranks' default process group formed.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

from conftest import console_script, only_run_dir, run_record
from rank_faults import rank_env

RANK_MARK = "lightning_echo.app.rank"
LEARNERS = 3
TIMEOUT_S = 3  # ps.timeout: a hung learner is dropped after this long without a gradient
STEPS = 500  # at most 15 updates/s (3 learners, 0.1 s per gradient, K = 2): the run outlasts the faults
ARGS = ["experiment=single", "backend=processes", "trainer.enable_progress_bar=false", "data.n_examples=2048",
        "data.batch_size=32", "algorithm=k_async", f"stale.learners={LEARNERS}", "stale.k=2",
        "stale.delay.distribution=constant", "stale.delay.value=0.1", f"ps.timeout={TIMEOUT_S}", "ps.rejoin_wait=60",
        "ps.restart_learners=5", "ps.restart_server=1", "checkpoint.every_n_steps=20", f"trainer.max_steps={STEPS}"]
WAIT_S = 120.0  # the longest any one step of the fault sequence may take to show in the run's log


def _rank_pids(job_pid: int) -> dict[int, int]:
    """rank -> pid of the job's live rank processes."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            state, ppid = stat[stat.rindex(")") + 2:].split()[:2]
            if int(ppid) != job_pid or state in ("Z", "X"):
                continue
            if RANK_MARK not in (entry / "cmdline").read_bytes().decode(errors="replace"):
                continue
            env = dict(item.split("=", 1) for item in (entry / "environ").read_bytes().decode(errors="replace")
                       .split("\0") if "=" in item)
        except (OSError, ValueError):
            continue
        if "LOCAL_RANK" in env:
            found[int(env["LOCAL_RANK"])] = int(entry.name)
    return found


def _ports(pid: int) -> set[int]:
    """The ports the rank's environment names (the job's rendezvous and join stores)."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    except OSError:
        return set()
    env = dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)
    values = [env.get("MASTER_PORT", ""), env.get("LIGHTNING_ECHO_PS_STORE", "").rpartition(":")[2]]
    return {int(value) for value in values if value.isdigit()}


def _answers(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1.0)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _held_shm() -> set[str]:
    """/dev/shm entries some live process has open or mapped."""
    held = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            links = [os.readlink(fd) for fd in (entry / "fd").iterdir()]
            maps = (entry / "maps").read_text()
        except OSError:
            continue
        held.update(link[len("/dev/shm/"):] for link in links if link.startswith("/dev/shm/"))
        held.update(line.split("/dev/shm/", 1)[1].split()[0] for line in maps.splitlines() if "/dev/shm/" in line)
    return held


def _shm() -> set[str]:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_k_async_trains_on_through_killed_and_hung_learners_and_a_killed_server(
    tmp_path: Path, no_leftovers: None
) -> None:
    shm_before = _shm()
    log_path = tmp_path / "stderr.txt"  # the job's stderr, each line with the seconds since the start
    env = {**os.environ, **rank_env(tmp_path), "PYTHONUNBUFFERED": "1"}
    began = time.monotonic()
    job = subprocess.Popen([console_script(), *ARGS], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, errors="replace")

    def copy_log() -> None:
        with log_path.open("w") as log:
            for line in job.stderr:  # type: ignore[union-attr]
                log.write(f"[{time.monotonic() - began:7.2f}] {line}")
                log.flush()

    copier = threading.Thread(target=copy_log, daemon=True)
    copier.start()
    ports: set[int] = set()
    injected: list[tuple[int, str]] = []
    killed_server_at = [0.0]

    def log_text() -> str:
        return log_path.read_text(errors="replace") if log_path.exists() else ""

    def until(what: str, condition: Callable[[], bool]) -> None:
        deadline = time.monotonic() + WAIT_S
        while not condition():
            assert job.poll() is None, f"the run ended (exit {job.returncode}) before {what}:\n{log_text()[-3000:]}"
            assert time.monotonic() < deadline, f"not within {WAIT_S:g} s: {what}\n{log_text()[-3000:]}"
            time.sleep(0.1)

    def signal_rank(rank: int, signum: int) -> None:
        pid = _rank_pids(job.pid)[rank]
        ports.update(_ports(pid))
        os.kill(pid, signum)
        injected.append((rank, signal.Signals(signum).name))

    def checkpoint_time() -> float:
        found = list((tmp_path / "le_outputs" / "runs").glob("*/checkpoints/last.ckpt"))
        try:
            return found[0].stat().st_mtime if found else 0.0
        except OSError:  # being replaced
            return 0.0

    def trains() -> bool:
        return len(_rank_pids(job.pid)) == LEARNERS + 1 and checkpoint_time() > 0

    restarted = "rank 0 of 4 was killed by SIGKILL; started again"

    def back_in_full() -> bool:
        """The restarted server trains (its first checkpoint) and every learner it did not find at
        its start has joined it since."""
        text = log_text()
        if restarted not in text or checkpoint_time() <= killed_server_at[0]:
            return False
        after = text.split(restarted, 1)[1]
        return all(f"(rank {rank}) joined" in after.split(f"(rank {rank}) is lost", 1)[1]
                   for rank in range(1, LEARNERS + 1) if f"(rank {rank}) is lost" in after)

    try:
        until("the run trains (its first checkpoint)", trains)
        signal_rank(1, signal.SIGKILL)
        signal_rank(2, signal.SIGSTOP)
        until("the job ends the hung learner and starts it again",
              lambda: "rank 2 of 4 was killed by SIGKILL; started again" in log_text())
        until("both restarted learners joined",
              lambda: all(f"learner {i} (rank {i + 1}) joined" in log_text() for i in (0, 1)))
        killed_server_at[0] = time.time()
        signal_rank(0, signal.SIGKILL)
        until("the restarted server trains with every learner back", back_in_full)
        signal_rank(1, signal.SIGKILL)
        job.wait(timeout=240)
    finally:
        if job.poll() is None:
            job.kill()  # its ranks kill themselves once its pipes close
            job.wait()
        copier.join(timeout=30)
    text = log_text()
    assert job.returncode == 0, text[-3000:]
    assert injected == [(1, "SIGKILL"), (2, "SIGSTOP"), (0, "SIGKILL"), (1, "SIGKILL")]

    # Every fault is in run.json's restarts, in order, and nothing else was restarted.
    run_dir = only_run_dir(tmp_path)
    record = run_record(run_dir)
    assert record["status"] == "completed"
    assert [(r["rank"], r["role"], r["ended"]) for r in record["restarts"]] == [
        (1, "learner", "rank 1 of 4 was killed by SIGKILL"), (2, "learner", "rank 2 of 4 was killed by SIGKILL"),
        (0, "server", "rank 0 of 4 was killed by SIGKILL"), (1, "learner", "rank 1 of 4 was killed by SIGKILL")]
    assert len(record["resumes"]) == 1
    # ... and in the logs, in order: the server finds the hang, then the job ends that process.
    lines = ["rank 1 of 4 was killed by SIGKILL; started again (learner restarts left: 4)",
             f"learner 1 (rank 2) is lost: it delivered no gradient within ps.timeout={TIMEOUT_S} s",
             "rank 2 of 4 stopped answering and the server dropped it; killing it to start it again",
             "rank 2 of 4 was killed by SIGKILL; started again (learner restarts left: 3)",
             "rank 0 of 4 was killed by SIGKILL; started again (server restarts left: 0)",
             "rank 1 of 4 was killed by SIGKILL; started again (learner restarts left: 2)"]
    positions = [text.find(line) for line in lines]
    assert -1 not in positions and positions == sorted(positions), list(zip(lines, positions))

    with (run_dir / "csv" / "metrics.csv").open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    versions = [float(row["ps/version"]) for row in rows if row.get("ps/version")]
    assert versions and all(b >= a for a, b in zip(versions, versions[1:]))  # across the server's restart too
    assert [float(row["progress/optimizer_steps"]) for row in rows if row.get("progress/optimizer_steps")][-1] == STEPS
    summary = json.loads((run_dir / "summary.json").read_text())
    assert math.isfinite(summary["final_val_loss"]) and summary["final_val_loss"] < summary["initial_val_loss"]

    # Nothing of the run is left: no process (no_leftovers), no store listening, no shared memory.
    assert ports and not [port for port in ports if _answers(port)]
    assert not (_shm() - shm_before) - _held_shm()
