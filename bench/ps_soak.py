"""Soak: the parameter server on real processes while its learners and the server are killed.

From the command line, as a user would run it (``lightning-echo`` in a subprocess, in a
temporary folder), for each algorithm (k_async, p_sync): one run of ``--minutes`` of training
(``trainer.max_time``; synthetic data, logistic regression, P = 4 learners with a constant
injected compute time of ``--delay`` s, ``ps.timeout=--timeout``, ``ps.restart_learners`` large,
``ps.restart_server=2``, a checkpoint every ``--checkpoint-every`` steps) during which this script

- every ``--kill-every`` s (from the moment the run trains: its
  ``metrics.csv`` exists) kills one learner process, in turn,
  alternating SIGKILL and SIGSTOP; a SIGSTOPped one is SIGKILLed ``ps.timeout + 2`` s later, as a
  watchdog would, unless the job ended it first (the job kills a learner the server dropped as
  silent and starts it again; the report says who ended each);
- SIGKILLs the server (rank 0) at 1/3 and 2/3 of the run;

finding the rank processes by scanning ``/proc`` (children of the job whose command line runs
``lightning_echo.app.rank``, their ``LOCAL_RANK``). Then the same configuration undisturbed for the
number of optimizer steps the soak run reached. Reported per algorithm: final ``val/loss`` of both,
each injected fault against ``run.json``'s ``restarts`` and the job's log lines, ``ps/version``
never decreasing over ``metrics.csv``, and after every run: no process of the run left, no port
of the run still listening (the ports in the ranks' environment, and LISTEN sockets of leftover
processes in ``/proc/net/tcp``), no new ``/dev/shm`` entries, no spec folder left.

    python bench/ps_soak.py [--minutes 10] [--algorithms k_async,p_sync] [--kill-every 30] [--delay 0.05]
                            [--timeout 5] [--rejoin-wait 60] [--checkpoint-every 500] [--out bench/results/ps_soak.txt]

The summary table is printed and written to ``--out``; each run's folder (logs, ``run.json``,
``metrics.csv``, the fault log) is kept under ``--keep`` if given.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

RANK_MARK = "lightning_echo.app.rank"  # in every rank process's command line (launch.RANK_CODE)
PORT_VARS = ("MASTER_PORT", "LIGHTNING_ECHO_PS_STORE", "LIGHTNING_ECHO_PS_ADDRESS")
POLL_S = 0.2
LEARNER_MARGIN_S = 30.0  # no learner fault in the last seconds of the planned run (the job restarts none once it ends)


# -- /proc ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Proc:
    """A process as /proc shows it: pid, parent, state letter, start time (clock ticks since boot:
    with the pid, it names the process even after the pid is reused)."""

    pid: int
    ppid: int
    state: str
    started: int

    @property
    def alive(self) -> bool:
        return self.state not in ("Z", "X")


def read_proc(pid: int) -> Optional[Proc]:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) "
    return Proc(pid, int(fields[1]), fields[0], int(fields[19]))


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {key.decode(errors="replace"): value.decode(errors="replace") for key, value in pairs}


def all_pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


@dataclass(frozen=True)
class Rank:
    """One rank process of the job."""

    rank: int
    proc: Proc
    env: dict[str, str] = field(compare=False, hash=False)


def rank_processes(job_pid: int) -> dict[int, list[Rank]]:
    """The job's live rank processes by rank (normally one each): its children running the rank code."""
    found: dict[int, list[Rank]] = {}
    for pid in all_pids():
        proc = read_proc(pid)
        if proc is None or proc.ppid != job_pid or not proc.alive or RANK_MARK not in cmdline(pid):
            continue
        env = environ(pid)
        if "LOCAL_RANK" in env:
            found.setdefault(int(env["LOCAL_RANK"]), []).append(Rank(int(env["LOCAL_RANK"]), proc, env))
    return found


def same_process(proc: Proc) -> bool:
    now = read_proc(proc.pid)
    return now is not None and now.started == proc.started and now.alive


def ports_in(env: dict[str, str]) -> set[int]:
    """The TCP ports a rank's environment names (the job's rendezvous and join stores, a server's address)."""
    ports = set()
    for var in PORT_VARS:
        value = env.get(var, "")
        tail = value.rpartition(":")[2] if ":" in value else value
        if tail.isdigit():
            ports.add(int(tail))
    return ports


def listening_inodes() -> dict[int, int]:
    """socket inode -> port, for every TCP socket in LISTEN state (IPv4 and IPv6)."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 9 and parts[3] == "0A":  # TCP_LISTEN
                found[int(parts[9])] = int(parts[1].rpartition(":")[2], 16)
    return found


def listening_ports_of(pids: set[int]) -> dict[int, list[int]]:
    """pid -> the TCP ports it listens on, for the live processes among ``pids``."""
    listening = listening_inodes()
    result: dict[int, list[int]] = {}
    for pid in pids:
        try:
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue
        ports = sorted(listening[int(link[8:-1])] for link in links
                       if link.startswith("socket:[") and int(link[8:-1]) in listening)
        if ports:
            result[pid] = ports
    return result


def port_answers(port: int) -> bool:
    """Whether something accepts a TCP connection on 127.0.0.1:``port``."""
    with socket.socket() as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(("127.0.0.1", port))
        except OSError:
            return False
        return True


def shm_entries() -> set[str]:
    try:
        return set(os.listdir("/dev/shm"))
    except OSError:
        return set()


# -- one run ---------------------------------------------------------------------------------------------
@dataclass
class Fault:
    at_s: float  # seconds since the run began training (the fault clock)
    kind: str  # "learner SIGKILL", "learner SIGSTOP", "server SIGKILL"
    rank: int
    pid: int
    killed_at_s: Optional[float] = None  # a SIGSTOPped learner: when this script's watchdog SIGKILLed it
    ended_by_job: bool = False  # a SIGSTOPped learner the job had already ended when the watchdog looked

    def describe(self) -> str:
        extra = f", SIGKILL at {self.killed_at_s:.1f} s" if self.killed_at_s is not None else ""
        extra += ", ended by the job before the watchdog" if self.ended_by_job else ""
        return f"{self.at_s:7.1f} s  {self.kind:16s} rank {self.rank} (pid {self.pid}{extra})"


@dataclass
class RunResult:
    label: str
    returncode: int
    wall_s: float
    run_dir: Optional[Path]
    stderr: str
    faults: list[Fault]
    rank_pids: set[tuple[int, int]]  # (pid, start time) of every rank process seen
    ports: set[int]
    leftover_pids: list[int]
    leftover_listening: dict[int, list[int]]
    answering_ports: list[int]
    new_shm: list[str]
    spec_folders_left: list[str]

    @property
    def record(self) -> dict[str, Any]:
        if self.run_dir is None or not (self.run_dir / "run.json").is_file():
            return {}
        return json.loads((self.run_dir / "run.json").read_text())

    @property
    def summary(self) -> dict[str, Any]:
        if self.run_dir is None or not (self.run_dir / "summary.json").is_file():
            return {}
        return json.loads((self.run_dir / "summary.json").read_text())

    def metrics(self) -> list[dict[str, str]]:
        path = self.run_dir / "csv" / "metrics.csv" if self.run_dir is not None else None
        if path is None or not path.is_file():
            return []
        with path.open(newline="") as stream:
            return list(csv.DictReader(stream))

    @property
    def clean(self) -> bool:
        return not (self.leftover_pids or self.leftover_listening or self.answering_ports or self.new_shm
                    or self.spec_folders_left)


class Injector:
    """Injects the soak's faults into the job's rank processes (one call of :meth:`poll` per tick)."""

    def __init__(self, job_pid: int, learners: int, duration_s: float, kill_every_s: float, timeout_s: float,
                 server_kills: int, log: Any) -> None:
        self.job_pid = job_pid
        self.learners = learners
        self.duration_s = duration_s
        self.kill_every_s = kill_every_s
        self.watchdog_s = timeout_s + 2.0
        self.server_due = [duration_s * (i + 1) / (server_kills + 1) for i in range(server_kills)]
        self.next_learner_s = kill_every_s
        self.turn = 0  # the learner whose turn it is
        self.learner_faults = 0  # SIGKILL when even, SIGSTOP when odd
        self.began: Optional[float] = None
        self.faults: list[Fault] = []
        self.watchdogs: list[tuple[float, Proc, Fault]] = []
        self.seen: set[tuple[int, int]] = set()
        self.ports: set[int] = set()
        self.log = log
        self.runs: Optional[Path] = None  # where the run's folder appears (None: do not wait for training)

    def _note(self, text: str) -> None:
        print(text, file=self.log, flush=True)

    def poll(self) -> None:
        ranks = rank_processes(self.job_pid)
        for processes in ranks.values():
            for rank in processes:
                if (rank.proc.pid, rank.proc.started) not in self.seen:
                    self.seen.add((rank.proc.pid, rank.proc.started))
                    self.ports |= ports_in(rank.env)
        now = time.monotonic()
        if self.began is None:
            if all(r in ranks for r in range(self.learners + 1)) and self.training():
                self.began = now
                self._note(f"all {self.learners + 1} ranks up and training: the fault clock starts")
            return
        elapsed = now - self.began
        for due, proc, fault in list(self.watchdogs):
            if now >= due:
                self.watchdogs.remove((due, proc, fault))
                if same_process(proc):
                    os.kill(proc.pid, signal.SIGKILL)
                    fault.killed_at_s = round(elapsed, 1)
                    self._note(f"{elapsed:7.1f} s  watchdog SIGKILL  rank {fault.rank} (pid {proc.pid}, stopped "
                               f"{elapsed - fault.at_s:.1f} s)")
                else:
                    fault.ended_by_job = True
                    self._note(f"{elapsed:7.1f} s  watchdog: rank {fault.rank} pid {proc.pid} already ended by the job")
        if self.server_due and elapsed >= self.server_due[0]:
            server = [r for r in ranks.get(0, []) if r.proc.state not in ("T", "t")]
            if server:  # else it is being started again: kill it once it is there
                self.server_due.pop(0)
                self._kill(server[0], signal.SIGKILL, "server SIGKILL", elapsed)
        if elapsed >= self.next_learner_s and elapsed < self.duration_s - LEARNER_MARGIN_S:
            stopped = {fault.pid for _, _, fault in self.watchdogs}
            for offset in range(self.learners):
                learner = (self.turn + offset) % self.learners
                candidates = [r for r in ranks.get(learner + 1, [])
                              if r.proc.state not in ("T", "t") and r.proc.pid not in stopped]
                if candidates:
                    stop = self.learner_faults % 2 == 1
                    fault = self._kill(candidates[0], signal.SIGSTOP if stop else signal.SIGKILL,
                                       "learner SIGSTOP" if stop else "learner SIGKILL", elapsed)
                    if stop:
                        self.watchdogs.append((now + self.watchdog_s, candidates[0].proc, fault))
                    self.learner_faults += 1
                    self.turn = learner + 1
                    self.next_learner_s += self.kill_every_s
                    break

    def training(self) -> bool:
        """Whether the run trains: its metrics file exists (the CSV logger writes it after its first 100
        steps), so every rank is past start-up. (A learner killed before the ranks' default process group
        formed leaves the others waiting in ``init_process_group``; see BENCHMARKS.md.)"""
        return self.runs is None or any(self.runs.glob("*/csv/metrics.csv"))

    def _kill(self, rank: Rank, signum: int, kind: str, elapsed: float) -> Fault:
        fault = Fault(round(elapsed, 1), kind, rank.rank, rank.proc.pid)
        if same_process(rank.proc):
            os.kill(rank.proc.pid, signum)
        self.faults.append(fault)
        self._note(fault.describe())
        return fault

    def release(self) -> None:
        """The run ended: SIGKILL what is still stopped (nothing should be)."""
        for _, proc, fault in self.watchdogs:
            if same_process(proc):
                os.kill(proc.pid, signal.SIGKILL)
                self._note(f"after the run: rank {fault.rank} pid {proc.pid} was still stopped; killed")
        self.watchdogs.clear()


def console_script() -> str:
    script = Path(sys.executable).with_name("lightning-echo")
    found = str(script) if script.exists() else shutil.which("lightning-echo")
    if not found:
        sys.exit("the lightning-echo console script is not installed")
    return found


def max_time(seconds: float) -> str:
    """Lightning's DD:HH:MM:SS."""
    seconds = int(math.ceil(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{days:02d}:{hours:02d}:{minutes:02d}:{secs:02d}"


def run_once(label: str, overrides: list[str], folder: Path, injector_args: Optional[dict[str, Any]],
             limit_s: float) -> RunResult:
    """One ``lightning-echo`` run in ``folder`` (its outputs, its ranks' spec folders under ``folder/tmp``),
    with faults when ``injector_args`` is given; then the leftover checks."""
    folder.mkdir(parents=True)
    (folder / "tmp").mkdir()
    env = {**os.environ, "LIGHTNING_ECHO_OUTPUT": str(folder / "le_outputs"), "TMPDIR": str(folder / "tmp"),
           "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline"}
    env.pop("LIGHTNING_ECHO_DATA", None)
    shm_before = shm_entries()
    (folder / "command.txt").write_text(" ".join(["lightning-echo", *overrides]) + "\n")
    started = time.monotonic()
    with (folder / "stdout.txt").open("w") as out, (folder / "stderr.txt").open("w") as err, \
            (folder / "faults.txt").open("w") as log:
        job = subprocess.Popen([console_script(), *overrides], cwd=folder, env=env, stdout=out, stderr=err,
                               stdin=subprocess.DEVNULL)
        injector = Injector(job.pid, log=log, **injector_args) if injector_args else None
        watcher = injector or Injector(job.pid, 0, 0.0, 1e9, 0.0, 0, log)  # records the ranks' pids and ports only
        watcher.runs = folder / "le_outputs" / "runs" if injector is not None else None
        try:
            while job.poll() is None:
                if time.monotonic() - started > limit_s:
                    print(f"{label}: still running after {limit_s:.0f} s: SIGTERM to the job", file=log, flush=True)
                    job.send_signal(signal.SIGTERM)
                    try:
                        job.wait(timeout=60)
                    except subprocess.TimeoutExpired:
                        job.kill()
                    break
                watcher.poll()
                time.sleep(POLL_S)
        finally:
            if job.poll() is None:
                job.kill()
            job.wait()
            watcher.release()
    wall_s = time.monotonic() - started
    time.sleep(1.0)  # ranks kill themselves when the job's pipe closes: give them a moment to be gone
    leftover = [pid for pid, start in sorted(watcher.seen) if same_process(Proc(pid, 0, "R", start))]
    leftover += [pid for pid in all_pids() if str(folder) in cmdline(pid) and pid not in leftover and pid != os.getpid()]
    runs = sorted((folder / "le_outputs" / "runs").glob("*")) if (folder / "le_outputs" / "runs").is_dir() else []
    return RunResult(
        label=label, returncode=job.returncode, wall_s=wall_s, run_dir=runs[0] if len(runs) == 1 else None,
        stderr=(folder / "stderr.txt").read_text(errors="replace"), faults=list(injector.faults) if injector else [],
        rank_pids=set(watcher.seen), ports=set(watcher.ports), leftover_pids=leftover,
        leftover_listening=listening_ports_of(set(leftover)),
        answering_ports=sorted(port for port in watcher.ports if port_answers(port)),
        new_shm=sorted(shm_entries() - shm_before),
        spec_folders_left=sorted(p.name for p in (folder / "tmp").glob("lightning-echo-ranks-*")))


# -- checks ----------------------------------------------------------------------------------------------
def column(rows: list[dict[str, str]], name: str) -> list[float]:
    return [float(row[name]) for row in rows if row.get(name) not in (None, "")]


def version_never_decreases(rows: list[dict[str, str]]) -> tuple[bool, int]:
    versions = column(rows, "ps/version")
    return all(b >= a for a, b in zip(versions, versions[1:])), len(versions)


@dataclass
class FaultCheck:
    """Each injected fault against the job's records: per rank, as many restarts ended by SIGKILL
    (in run.json and as log lines) as faults injected, and every other restart listed."""

    per_rank: dict[int, tuple[int, int, int]]  # rank -> (injected, run.json SIGKILL restarts, log lines)
    other_restarts: list[str]
    lost_lines: dict[int, int]  # rank -> the server's "is lost" warnings
    joined_lines: dict[int, int]
    ended_by_job: dict[int, int]  # rank -> the job's "stopped answering ...; killing it" lines

    @property
    def all_recorded(self) -> bool:
        return all(injected == recorded == logged for injected, recorded, logged in self.per_rank.values())


def check_faults(result: RunResult, world: int) -> FaultCheck:
    restarts = result.record.get("restarts", [])
    per_rank = {}
    for rank in range(world):
        injected = sum(1 for fault in result.faults if fault.rank == rank)
        recorded = sum(1 for event in restarts if event["rank"] == rank and "killed by SIGKILL" in event["ended"])
        logged = result.stderr.count(f"rank {rank} of {world} was killed by SIGKILL; started again")
        per_rank[rank] = (injected, recorded, logged)
    others = [f"rank {event['rank']} at {event['at_s']:.0f} s: {event['ended']}" for event in restarts
              if "killed by SIGKILL" not in event["ended"]]
    lost = {rank: result.stderr.count(f"(rank {rank}) is lost") for rank in range(1, world)}
    joined = {rank: result.stderr.count(f"(rank {rank}) joined") for rank in range(1, world)}
    ended = {rank: result.stderr.count(f"rank {rank} of {world} stopped answering and the server dropped it")
             for rank in range(1, world)}
    return FaultCheck(per_rank, others, lost, joined, ended)


def grouped(lines: list[str]) -> list[str]:
    """``lines`` of restarts counted by what they say once times and numbers are left out."""
    counts: dict[str, int] = {}
    for line in lines:
        key = re.sub(r"\d+(\.\d+)?", "N", line.split(": ", 1)[1] if ": " in line else line)
        counts[key] = counts.get(key, 0) + 1
    return [f"{count} x {key[:400]}" for key, count in sorted(counts.items(), key=lambda item: -item[1])]


def final_loss(result: RunResult) -> Optional[float]:
    """The run's final validation loss, or, for a run that ended without one, the last it logged."""
    final = result.summary.get("final_val_loss")
    return final if final is not None else (column(result.metrics(), "val/loss") or [None])[-1]


def fmt(value: Optional[float], digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def leftovers(result: RunResult) -> str:
    parts = []
    if result.leftover_pids:
        parts.append(f"processes {result.leftover_pids}")
    if result.leftover_listening:
        parts.append(f"listening {result.leftover_listening}")
    if result.answering_ports:
        parts.append(f"ports answering {result.answering_ports}")
    if result.new_shm:
        parts.append(f"new /dev/shm {result.new_shm}")
    if result.spec_folders_left:
        parts.append(f"spec folders {result.spec_folders_left}")
    return "none" if not parts else "; ".join(parts)


def describe_run(result: RunResult) -> list[str]:
    record, summary = result.record, result.summary
    rows = result.metrics()
    ok, n = version_never_decreases(rows)
    lines = [f"{result.label}: exit {result.returncode}, status {record.get('status')}, "
             f"{summary.get('optimizer_steps')} optimizer steps, {result.wall_s:.0f} s wall "
             f"(training {fmt(summary.get('elapsed_s'), 0)} s), val/loss {fmt(summary.get('initial_val_loss'))} -> "
             f"{fmt(summary.get('final_val_loss'))} (last logged {fmt((column(rows, 'val/loss') or [None])[-1])} at step "
             f"{fmt((column(rows, 'progress/optimizer_steps') or [None])[-1], 0)})",
             f"  ps/version never decreases over {n} rows: {'yes' if ok else 'NO'}; last "
             f"{fmt((column(rows, 'ps/version') or [None])[-1], 0)}; ps/lost_learners "
             f"{fmt((column(rows, 'ps/lost_learners') or [None])[-1], 0)}, ps/joins "
             f"{fmt((column(rows, 'ps/joins') or [None])[-1], 0)}; resumes {len(record.get('resumes', []))}",
             f"  rank processes seen {len(result.rank_pids)}, ports {sorted(result.ports)}; leftovers: {leftovers(result)}"]
    if record.get("error"):
        lines.append(f"  error: {record['error'][:600]}")
    return lines


# -- main ------------------------------------------------------------------------------------------------
def overrides_for(algorithm: str, args: argparse.Namespace) -> list[str]:
    overrides = ["experiment=single", "backend=processes", f"algorithm={algorithm}", f"stale.learners={args.learners}",
                 "stale.delay.distribution=constant", f"stale.delay.value={args.delay}", f"ps.timeout={args.timeout}",
                 f"ps.restart_learners={args.restart_learners}", f"ps.restart_server={args.server_kills}",
                 f"checkpoint.every_n_steps={args.checkpoint_every}", "trainer.enable_progress_bar=false",
                 f"seed={args.seed}"]
    if args.rejoin_wait is not None:
        overrides.append(f"ps.rejoin_wait={args.rejoin_wait}")
    return overrides


def code_version() -> str:
    """The repository's commit, and whether the library had uncommitted changes."""
    here = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "lightning_echo"], cwd=here, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + (" (lightning_echo/ with uncommitted changes)" if dirty else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="training time of each soak run")
    parser.add_argument("--algorithms", default="k_async,p_sync")
    parser.add_argument("--learners", type=int, default=4)
    parser.add_argument("--delay", type=float, default=0.05, help="constant injected compute time per gradient (s)")
    parser.add_argument("--timeout", type=float, default=5.0, help="ps.timeout (s)")
    parser.add_argument("--rejoin-wait", type=float, default=60.0,
                        help="ps.rejoin_wait (s): how long learners wait for a restarted server (negative: the default)")
    parser.add_argument("--kill-every", type=float, default=30.0, help="seconds between learner faults")
    parser.add_argument("--server-kills", type=int, default=2)
    parser.add_argument("--restart-learners", type=int, default=1000)
    parser.add_argument("--checkpoint-every", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, default=None, help="keep the runs' folders here")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "ps_soak.txt")
    args = parser.parse_args()
    if args.rejoin_wait is not None and args.rejoin_wait < 0:
        args.rejoin_wait = None
    duration_s = args.minutes * 60.0
    root = Path(tempfile.mkdtemp(prefix="ps-soak-")) if args.keep is None else args.keep
    root.mkdir(parents=True, exist_ok=True)
    began = datetime.datetime.now()
    code_at_start = code_version()
    report: list[str] = []
    table: list[list[str]] = []
    for algorithm in [a.strip() for a in args.algorithms.split(",") if a.strip()]:
        overrides = overrides_for(algorithm, args)
        soak = run_once(f"{algorithm} soak", [*overrides, "trainer.max_steps=100000000",
                                              f"trainer.max_time={max_time(duration_s)}"],
                        root / f"{algorithm}_soak",
                        dict(learners=args.learners, duration_s=duration_s, kill_every_s=args.kill_every,
                             timeout_s=args.timeout, server_kills=args.server_kills),
                        limit_s=duration_s * 2 + 600)
        # A soak run that failed has no summary: the undisturbed run trains as many steps as its last logged.
        steps = int(soak.summary.get("optimizer_steps")
                    or (column(soak.metrics(), "progress/optimizer_steps") or [1])[-1])
        print("\n".join(describe_run(soak)), flush=True)
        plain = run_once(f"{algorithm} undisturbed", [*overrides, f"trainer.max_steps={max(steps, 1)}"],
                         root / f"{algorithm}_plain", None, limit_s=duration_s * 2 + 600)
        print("\n".join(describe_run(plain)), flush=True)
        check = check_faults(soak, args.learners + 1)
        soak_loss, plain_loss = final_loss(soak), final_loss(plain)
        gap = (soak_loss / plain_loss - 1) * 100 if soak_loss and plain_loss else None
        kinds = [fault.kind for fault in soak.faults]
        report += describe_run(soak) + describe_run(plain)
        report.append(f"  {algorithm} faults injected ({len(soak.faults)}; t = seconds since the run began training):")
        report += ["    " + fault.describe() for fault in soak.faults]
        report.append("  per rank: injected / run.json restarts ended by SIGKILL / job log lines 'killed by SIGKILL; "
                      "started again':")
        report += [f"    rank {rank}: {injected} / {recorded} / {logged}" + ("" if injected == recorded == logged else "  MISMATCH")
                   for rank, (injected, recorded, logged) in check.per_rank.items()]
        report.append(f"  server log: learners lost {check.lost_lines}, joined {check.joined_lines}; job log: hung "
                      f"learners it ended itself {check.ended_by_job}")
        report.append(f"  other restarts (consequences, not injected): {len(check.other_restarts)}")
        report += ["    " + line for line in grouped(check.other_restarts)]
        report.append("")
        ok, _ = version_never_decreases(soak.metrics())
        table.append([algorithm, str(steps), fmt(soak.summary.get("initial_val_loss") or soak.record.get("initial_val_loss")),
                      fmt(soak_loss) + ("" if soak.summary.get("final_val_loss") is not None else " (last logged)"),
                      fmt(plain_loss), "-" if gap is None else f"{gap:+.2f}%",
                      f"{kinds.count('learner SIGKILL')}/{kinds.count('learner SIGSTOP')}/{kinds.count('server SIGKILL')}",
                      str(len(soak.record.get("restarts", []))), "yes" if check.all_recorded else "NO",
                      "yes" if ok else "NO", f"{soak.record.get('status')}/{plain.record.get('status')}",
                      "none" if soak.clean and plain.clean else "SEE BELOW"])
    header = ["algorithm", "steps", "val/loss start", "soak final", "undisturbed final", "soak vs undisturbed",
              "faults kill/stop/server", "restarts recorded", "each fault recorded", "ps/version monotone",
              "status soak/undisturbed", "leftovers"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in table]
    head = [f"ps_soak: {began:%Y-%m-%d %H:%M}, {args.minutes:g} min per soak run, P={args.learners}, "
            f"constant delay {args.delay:g} s, ps.timeout={args.timeout:g}, ps.rejoin_wait={args.rejoin_wait}, "
            f"a learner fault every {args.kill_every:g} s (SIGKILL / SIGSTOP + SIGKILL after {args.timeout + 2:g} s), "
            f"server SIGKILL x{args.server_kills}, checkpoint every {args.checkpoint_every} steps; "
            f"host {socket.gethostname()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f} at the end",
            f"command: python bench/ps_soak.py {' '.join(sys.argv[1:])}".rstrip(),
            f"code: {code_at_start}" + ("" if code_version() == code_at_start else f" at the start, {code_version()} at the end "
                                        "(processes started meanwhile ran the newer code)"),
            f"runs kept in: {root}", ""]
    text = "\n".join(head + lines + [""] + report) + "\n"
    print("\n" + text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
