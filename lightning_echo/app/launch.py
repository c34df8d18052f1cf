"""Runs on several devices: the command line starts one process per device, for each run.

Lightning's own launcher re-runs the command (``sys.argv``) in each new process, which for a Hydra
app means re-running the whole command line (a sweep in every child), and it SIGKILLs the main
process when a child fails. Instead the job that trains on ``N > 1`` devices stays out of training
and supervises ``N`` rank processes (:mod:`lightning_echo.app.rank`) that train that one
job's config, already resolved, into the job's directory:

- each rank gets the environment a process started outside Lightning needs (``LOCAL_RANK``,
  ``NODE_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT``), so Lightning launches nothing;
- rank 0 writes ``run.json``, ``summary.json`` and the logs as a run in one process does; the
  others write nothing but their outcome, which the supervising job reads;
- a rank that fails ends the run: the others get a moment to stop, are then killed, and the run is
  ``failed`` with one line naming the rank that failed first and why; in a parameter-server run
  only the server (rank 0) decides: a learner that fails is reported and the server, which
  knows whether its variant can go on without it, carries on or fails the run;
- SIGINT or SIGTERM to the job asks every rank to stop after the step in progress (they agree on
  that step, save the checkpoint and record ``interrupted``); a second signal, or ranks that do
  not stop within ``STOP_GRACE_S``, kills them;
- ranks run in their own sessions (a Ctrl-C in the terminal reaches the job only) and kill
  themselves when the job's process is gone, so no rank outlives it;
- in a parameter-server run with ``ps.restart_learners`` / ``ps.restart_server``, the job hosts
  the server's join store too (every rank then joins through it, none forms a default process
  group, so a rank killed while starting holds no other) and starts a new process in place of a learner that ended with an
  error or a signal (it joins the running server), or of a server killed by a signal (it resumes
  from the run's last checkpoint and its learners join it again), up to those counts; a learner
  the server dropped as alive but silent (it names its pid in the join store) is killed first;
  each restart is a line on stderr and an entry of ``run.json``'s ``restarts``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig

from lightning_echo.app.builders import build_trainer, quiet_lightning
from lightning_echo.app.interrupt import SIGNALS
from lightning_echo.errors import ConfigError
from lightning_echo.lightning_namespace import ENV_VAR, PACKAGE, pl
from lightning_echo.protocols import AssignsRankRoles
from lightning_echo.records import DIVERGED, FAILED, INTERRUPTED
from lightning_echo.stragglers.processes.rendezvous import JOIN_ENV, RESTARTS_ENV, STORE_ENV
from lightning_echo.validation import positive_int

# A rank process runs this (with its spec folder as argument); not `-m lightning_echo.app.rank`, which
# would define the module's classes a second time, in __main__.
RANK_CODE = "from lightning_echo.app.rank import main; main()"
SPEC_FILE = "spec.json"
RESUME_ENV = "LIGHTNING_ECHO_RANK_RESUME"  # "1": a restarted server, which resumes from the run's last checkpoint
STOP_LINE = b"stop\n"  # what the job writes to a rank's stdin to ask it to stop
STOP_GRACE_S = 30.0  # how long ranks asked to stop get before they are killed
FAILURE_GRACE_S = 5.0  # how long the other ranks get to stop by themselves after one failed
POLL_S = 0.05
# Strategies whose start method is not "popen" make Lightning start the processes itself.
SELF_STARTING = ("spawn", "fork", "forkserver")


class RankFailed(RuntimeError):
    """A rank process of a multi-device run failed (the message is one line: which rank, and why)."""


@dataclass(frozen=True)
class RankRun:
    """What a rank process knows of its run: its rank, the ``run.json`` details the supervising job
    wrote (its pid and host, the resumes), and callbacks the rank adds to the run's own."""

    global_rank: int
    record_details: dict[str, Any]
    callbacks: tuple[Any, ...] = ()

    @property
    def writes_records(self) -> bool:
        """Whether this process writes ``run.json`` (rank 0 only)."""
        return self.global_rank == 0


@dataclass
class RankSpec:
    """One run's job for its rank processes (``spec.json``): the resolved config, where and as what it
    writes, and the checkpoint it resumes from."""

    config: dict[str, Any]
    run_dir: str
    group: str
    name: Optional[str]
    world_size: int
    record_details: dict[str, Any] = field(default_factory=dict)
    checkpoint: Optional[str] = None
    step: int = 0
    deciding_ranks: Optional[list[int]] = None  # the ranks whose end ends the run (None: all)
    restart_learners: int = 0  # parameter server: learner processes started again in all, at most
    restart_server: int = 0  # parameter server: times the server is started again from the last checkpoint
    # How long the deciding ranks may go on once every other rank has failed (None: as long as they
    # like): a parameter server whose learners all gave up on it is frozen or stuck.
    deciders_outlive_s: Optional[float] = None

    @property
    def deciding(self) -> list[int]:
        """The ranks whose failure fails the run and whose end ends it."""
        return list(range(self.world_size)) if self.deciding_ranks is None else list(self.deciding_ranks)

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def read(cls, path: Path) -> "RankSpec":
        return cls(**json.loads(Path(path).read_text()))


@dataclass
class RankEnd:
    """How one rank process ended: its exit status (negative: killed by that signal), whether this job
    killed it, and the outcome it wrote (None if it wrote none)."""

    rank: int
    returncode: int
    killed_here: bool
    outcome: Optional[dict[str, Any]]
    abandoned_after_s: Optional[float] = None  # killed here for staying silent after every other rank failed

    @property
    def status(self) -> Optional[str]:
        """The status the rank reported (``completed``, ``diverged``, ...), None if it reported none."""
        return self.outcome.get("status") if self.outcome is not None else None

    @property
    def failed(self) -> bool:
        """Whether it ended otherwise than by completing or diverging."""
        return self.returncode != 0 and self.status != DIVERGED

    def describe(self, world_size: int) -> str:
        """``rank 1 of 2 failed: ValueError: ...``, ``rank 1 of 2 was killed by SIGKILL``, ..."""
        who = f"rank {self.rank} of {world_size}"
        if self.abandoned_after_s is not None:
            return (f"{who} did not end within {self.abandoned_after_s:g} s after every other rank had failed "
                    "(frozen or stuck); it was killed")
        if self.status == FAILED:
            return f"{who} failed: {self.outcome.get('error')}"  # type: ignore[union-attr]
        if self.status == INTERRUPTED:  # a signal sent to the rank itself, not to the job
            return f"{who} was interrupted: {self.outcome.get('detail')}"  # type: ignore[union-attr]
        if self.returncode < 0:
            return f"{who} was killed by {signal.Signals(-self.returncode).name}"
        return f"{who} exited with status {self.returncode}"


@dataclass
class RanksResult:
    """How the rank processes of a run ended, and the signal that stopped the run (if one did)."""

    ends: list[RankEnd]
    interrupted_by: Optional[int] = None
    deciding: Optional[list[int]] = None  # the ranks that decide how the run ended (None: all)
    restarts: list[dict[str, Any]] = field(default_factory=list)  # processes started again: rank, when, why

    @property
    def rank_zero(self) -> Optional[dict[str, Any]]:
        """Rank 0's outcome, if it wrote one."""
        return self.ends[0].outcome if self.ends else None

    def first_failure(self) -> Optional[RankEnd]:
        """The rank whose failure ended the run: one killed by a signal this job did not send (it
        wrote nothing), else the one that failed earliest (the others then fail on the lost
        connection), else the first with a non-zero exit status; None when every rank succeeded."""
        abandoned = [end for end in self.ends if end.abandoned_after_s is not None]
        if abandoned:
            return abandoned[0]
        failed = [end for end in self.ends if end.failed and not end.killed_here
                  and (self.deciding is None or end.rank in self.deciding)]
        killed = [end for end in failed if end.returncode < 0 and end.outcome is None]
        if killed:
            return killed[0]
        reported = [end for end in failed if end.status == FAILED]
        if reported:
            return min(reported, key=lambda end: float(end.outcome.get("at", 0.0)))  # type: ignore[union-attr]
        return failed[0] if failed else None

    def divergence(self) -> Optional[dict[str, Any]]:
        """The outcome of the first rank that stopped because its loss diverged (the ranks stop
        together, but only those whose loss diverged say so)."""
        return next((end.outcome for end in self.ends if end.status == DIVERGED), None)

    def progress(self) -> list[dict[str, Any]]:
        """Each rank's status and counters, for ``run.json``."""
        rows = []
        for end in self.ends:
            outcome = end.outcome or {}
            rows.append({"rank": end.rank, "status": end.status or ("killed" if end.returncode < 0 else FAILED),
                         "exit_code": end.returncode, "optimizer_steps": outcome.get("optimizer_steps"),
                         "fresh_samples": outcome.get("fresh_samples")})
        return rows


def start_method(strategy: Any) -> str:
    """How Lightning starts the processes of a strategy named ``strategy``: ``popen`` (it re-runs the
    command, or leaves it to whoever set ``LOCAL_RANK``), ``spawn``, ``fork`` or ``forkserver``."""
    if isinstance(strategy, str) and strategy in pl.strategies.StrategyRegistry:
        return str(pl.strategies.StrategyRegistry[strategy]["init_params"].get("start_method", "popen"))
    return "popen"


def processes_to_start(cfg: DictConfig, trainer: Any) -> int:
    """How many processes the command line starts for a run whose Trainer is ``trainer`` (1: it trains
    in the job's own process). Raises ConfigError, one line, for multi-process settings it cannot run."""
    strategy = cfg.trainer.get("strategy")
    method = start_method(strategy)
    if method in SELF_STARTING:
        raise ConfigError("trainer.strategy", strategy,
                          f"it starts its processes by {method}, which the command line does not support; use "
                          "trainer.strategy=ddp (the command line starts one process per device, "
                          "for each job of a sweep too)")
    if trainer.world_size <= 1:
        return 1
    if trainer.num_nodes > 1:
        raise ConfigError("trainer.num_nodes", trainer.num_nodes,
                          "the command line starts the processes of one machine; use trainer.num_nodes=1")
    environment = getattr(trainer.strategy, "cluster_environment", None)
    if environment is not None and environment.creates_processes_externally:
        raise ConfigError("trainer.devices", cfg.trainer.get("devices"),
                          f"this process is one of several started by {type(environment).__name__} "
                          "(LOCAL_RANK is set); start lightning-echo once: it starts one process per device itself")
    return int(trainer.num_devices)


MAX_PROCESSES_VAR = "LIGHTNING_ECHO_MAX_PROCESSES"


def process_cap() -> int:
    """The most processes the command line starts for one run on this machine: 4 per CPU core (at
    least 32), or ``$LIGHTNING_ECHO_MAX_PROCESSES``."""
    value = os.environ.get(MAX_PROCESSES_VAR)
    if value is not None and value.strip():
        try:
            return positive_int(MAX_PROCESSES_VAR, int(value))
        except ValueError:
            raise ConfigError(MAX_PROCESSES_VAR, value, "must be a positive integer") from None
    return max(32, 4 * (os.cpu_count() or 1))


def check_process_count(cfg: DictConfig) -> None:
    """Refuse, in one line and before anything starts, a run that would start more processes than
    :func:`process_cap` (one per device; a parameter server's learners and the server)."""
    devices = cfg.trainer.get("devices", "auto")
    if isinstance(devices, bool) or not isinstance(devices, int) and not (isinstance(devices, str) and devices.isdigit()):
        return  # "auto", a list of devices: Lightning decides, within the machine
    count, cap = int(devices), process_cap()
    if count <= cap:
        return
    backend = (cfg.get("backend") or {}).get("name")
    key, value = ("stale.learners", cfg.stale.learners) if backend == "processes" else ("trainer.devices", devices)
    raise ConfigError(key, value, f"would start {count} processes on this machine ({os.cpu_count()} cores); at most "
                      f"{cap} (4 per core, at least 32; set {MAX_PROCESSES_VAR} to allow more)")


@dataclass(frozen=True)
class ProcessPlan:
    """How many processes a run trains in, and which of them decide how it ends (None: all)."""

    processes: int = 1
    deciding_ranks: Optional[list[int]] = None
    deciders_outlive_s: Optional[float] = None


def process_plan(cfg: DictConfig) -> ProcessPlan:
    """:func:`processes_to_start` for a run of ``cfg``, and the ranks its strategy says decide the
    run (a parameter server decides alone). Its Trainer is built, quietly, only when more than one
    device may be meant."""
    if (cfg.trainer.get("devices", "auto") in (1, "1") and cfg.trainer.get("num_nodes", 1) in (1, None)
            and start_method(cfg.trainer.get("strategy")) not in SELF_STARTING):
        return ProcessPlan()
    with quiet_lightning():
        trainer = build_trainer(cfg, output_dir=None)
    strategy = trainer.strategy
    roles = strategy if isinstance(strategy, AssignsRankRoles) else None
    return ProcessPlan(processes_to_start(cfg, trainer), list(roles.deciding_ranks) if roles else None,
                       roles.deciders_outlive_s if roles else None)


class RendezvousStore:
    """The ranks' rendezvous store, hosted by the supervising job and listening on the loopback
    interface only (torch's own store, started by rank 0, listens on every interface). The ranks
    connect to it as torchelastic's workers connect to their agent's store
    (``TORCHELASTIC_USE_AGENT_STORE``); the socket is bound before the port is handed out, so no
    other process can take the port in between. The store runs torch's classic (not libuv) server:
    with the libuv one, one rank in about three aborted (SIGABRT) in the second run of a sweep
    (torch 2.13, measured)."""

    HOST = "127.0.0.1"

    def __init__(self) -> None:
        import datetime

        from torch.distributed import TCPStore

        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind((self.HOST, 0))
        self._socket.listen(128)
        self.port = int(self._socket.getsockname()[1])
        self._store: Any = TCPStore(self.HOST, self.port, None, True, timeout=datetime.timedelta(minutes=30),
                                    wait_for_workers=False, master_listen_fd=self._socket.fileno(), use_libuv=False)
        self._fd = self._socket.detach()  # the store's now: it closes it when it ends

    def environment(self) -> dict[str, str]:
        """What a rank needs to find the store."""
        return {"MASTER_ADDR": self.HOST, "MASTER_PORT": str(self.port), "TORCHELASTIC_USE_AGENT_STORE": "True"}

    def take(self, key: str) -> Optional[str]:
        """The value at ``key``, deleted; None if there is none."""
        store = self._store
        if store is None or not store.check([key]):
            return None
        value = store.get(key).decode()
        store.delete_key(key)
        return value

    def close(self) -> None:
        self._store = None
        try:
            os.close(self._fd)
        except OSError:
            pass  # the store closed it already


def rank_environment(world_size: int, store: RendezvousStore, base: Optional[dict[str, str]] = None) -> dict[str, str]:
    """The environment of every rank but its ``LOCAL_RANK``: one node, the job's rendezvous store,
    the same Lightning package, and the CPU threads shared out (as Lightning's own launcher does)."""
    env = dict(os.environ if base is None else base)
    env.update({**store.environment(), "NODE_RANK": "0", "WORLD_SIZE": str(world_size), ENV_VAR: PACKAGE,
                "PYTHONSAFEPATH": "1"})  # `python -c` imports the installed package, not one in the working directory
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // world_size)))
    return env


class Restarter:
    """Starts a rank's process again in a parameter-server run: a learner that ended with an error
    or a signal (``learners`` times in all at most) joins the running server; a server killed by
    a signal (``server`` times) resumes from the run's last checkpoint. The new process has no
    default process group: it finds the server through the join store the job hosts."""

    def __init__(self, start: Any, learners: int, server: int, world_size: int, folder: Path,
                 store: Optional["RendezvousStore"] = None) -> None:
        self.start = start  # start(rank, extra_env) -> Popen
        self.store = store  # the join store: where the server names learners that stopped answering
        self.left = {"learner": learners, "server": server}
        self.world_size = world_size
        self.folder = folder
        self.began = time.monotonic()
        self.events: list[dict[str, Any]] = []

    def end_unresponsive(self, processes: list[subprocess.Popen]) -> None:
        """A learner the server dropped as alive but silent (hung, SIGSTOPped), named in the join
        store with its pid: kill its process (group), so that it is started again like one that
        died (only while learner restarts are left; otherwise it is killed when the run ends)."""
        if self.store is None or self.left["learner"] <= 0:
            return
        for rank in range(1, len(processes)):
            pid = self.store.take(f"unresponsive/{rank - 1}")
            process = processes[rank]
            if pid is None or process.pid != int(pid) or process.poll() is not None:
                continue
            print(f"lightning-echo: rank {rank} of {self.world_size} stopped answering and the server dropped it; "
                  "killing it to start it again", file=sys.stderr, flush=True)
            try:
                os.killpg(process.pid, signal.SIGKILL) if hasattr(os, "killpg") else process.kill()
            except ProcessLookupError:
                pass
            process.wait()

    def maybe_restart(self, rank: int, process: subprocess.Popen) -> Optional[subprocess.Popen]:
        """A new process for ``rank``, whose process ended with a non-zero status, if it may start again."""
        who = "server" if rank == 0 else "learner"
        outcome = _read_outcome(self.folder, rank)
        end = RankEnd(rank, int(process.returncode), False, outcome)
        if self.left[who] <= 0 or end.status in (DIVERGED, INTERRUPTED):
            return None
        if who == "server" and (process.returncode >= 0 or outcome is not None):
            return None  # a server that failed by itself (its error is the run's) is not started again
        self.left[who] -= 1
        outcome_path(self.folder, rank).unlink(missing_ok=True)
        extra = {JOIN_ENV: "1", **({RESUME_ENV: "1"} if who == "server" else {})}
        restarted = self.start(rank, extra)
        event = {"rank": rank, "role": who, "at_s": round(time.monotonic() - self.began, 3),
                 "ended": end.describe(self.world_size), "restarts_left": self.left[who]}
        self.events.append(event)
        print(f"lightning-echo: {event['ended']}; started again ({who} restarts left: {self.left[who]})",
              file=sys.stderr, flush=True)
        return restarted


def run_ranks(spec: RankSpec) -> RanksResult:
    """Start ``spec.world_size`` rank processes for one run and wait for them (see the module's
    docstring for failures, signals and restarts); every one has ended when this returns."""
    folder = Path(tempfile.mkdtemp(prefix="lightning-echo-ranks-"))
    spec.write(folder / SPEC_FILE)
    abandoned: set[int] = set()
    store = RendezvousStore()
    env = rank_environment(spec.world_size, store)
    join_store = RendezvousStore() if spec.restart_learners or spec.restart_server else None
    if join_store is not None:
        env.update({STORE_ENV: f"{join_store.HOST}:{join_store.port}", RESTARTS_ENV: "1"})
    processes: list[subprocess.Popen] = []
    killed: set[int] = set()
    interrupted_by = None

    def start(rank: int, extra: Optional[dict[str, str]] = None) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", RANK_CODE, str(folder)],
                                env={**env, "LOCAL_RANK": str(rank), **(extra or {})},
                                stdin=subprocess.PIPE, start_new_session=True)

    restarter = (Restarter(start, spec.restart_learners, spec.restart_server, spec.world_size, folder, join_store)
                 if join_store is not None else None)
    try:
        with SIGNALS.noting():  # signals are acted on between polls, never half-way through a start
            for rank in range(spec.world_size):
                # with restarts no rank forms a default process group: a learner killed while it formed
                # would hold the others in init_process_group; every rank joins through the job's store
                processes.append(start(rank, {JOIN_ENV: "1"} if join_store is not None else None))
            interrupted_by, abandoned = _supervise(processes, killed, spec.deciding, folder, spec.deciders_outlive_s,
                                                   restarter)
    finally:
        _kill(processes, killed)
        ends = [RankEnd(rank, int(p.returncode), rank in killed, _read_outcome(folder, rank),
                        spec.deciders_outlive_s if rank in abandoned else None)
                for rank, p in enumerate(processes)]
        shutil.rmtree(folder, ignore_errors=True)
        store.close()
        if join_store is not None:
            join_store.close()
    return RanksResult(ends, interrupted_by, spec.deciding_ranks, restarter.events if restarter is not None else [])


def _supervise(processes: list[subprocess.Popen], killed: set[int], deciding: list[int], folder: Path,
               deciders_outlive_s: Optional[float] = None,
               restarter: Optional[Restarter] = None) -> tuple[Optional[int], set[int]]:
    """Wait for the ranks; ask them to stop on a first signal, kill them on a second, after a
    deciding rank failed, once every deciding rank ended, or when a stop takes too long. A rank
    that does not decide and fails is reported on stderr; once every such rank has failed, the
    deciding ranks get ``deciders_outlive_s`` to end before they are killed as abandoned. Returns
    the first signal received meanwhile, if any, and the abandoned ranks."""
    signals_before = seen = SIGNALS.count
    asked = False
    deadline: Optional[float] = None
    abandon_at: Optional[float] = None
    others = [rank for rank in range(len(processes)) if rank not in deciding]
    reported: set[int] = set()
    while [p.poll() for p in processes].count(None) or restarter is not None:  # poll every rank, so each one's end is seen
        now = time.monotonic()
        if restarter is not None and deadline is None and not asked:
            restarter.end_unresponsive(processes)
            for rank, process in enumerate(processes):
                if process.returncode not in (None, 0):
                    processes[rank] = restarter.maybe_restart(rank, process) or process
        if all(process.returncode is not None for process in processes):
            break
        if (abandon_at is None and deciders_outlive_s is not None and others
                and all(processes[rank].returncode not in (None, 0) for rank in others)):
            abandon_at = now + deciders_outlive_s
        if abandon_at is not None and now > abandon_at:
            abandoned = {rank for rank in deciding if processes[rank].poll() is None}
            _kill(processes, killed)
            return (SIGNALS.received if SIGNALS.count > signals_before else None), abandoned
        if SIGNALS.count > seen:
            if asked:
                break  # a second signal: stop now
            seen, asked = SIGNALS.count, True
            _ask_to_stop([processes[rank] for rank in deciding])  # the others stop when these do
            deadline = min(deadline or float("inf"), now + STOP_GRACE_S)
        elif deadline is None and (any(processes[rank].returncode not in (None, 0) for rank in deciding)
                                   or all(processes[rank].returncode is not None for rank in deciding)):
            deadline = now + FAILURE_GRACE_S
        for rank, process in enumerate(processes):
            if rank not in deciding and rank not in reported and process.returncode not in (None, 0):
                reported.add(rank)
                end = RankEnd(rank, int(process.returncode), False, _read_outcome(folder, rank))
                print(f"lightning-echo: {end.describe(len(processes))}; the run goes on while rank 0 decides so",
                      file=sys.stderr, flush=True)
        if deadline is not None and now > deadline:
            break
        time.sleep(POLL_S)
    _kill(processes, killed)
    return (SIGNALS.received if SIGNALS.count > signals_before else None), set()


def _ask_to_stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        try:
            assert process.stdin is not None
            process.stdin.write(STOP_LINE)
            process.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # it has ended


def _kill(processes: list[subprocess.Popen], killed: set[int]) -> None:
    """SIGKILL every rank still running with its process group (its data-loader workers), and reap all."""
    for rank, process in enumerate(processes):
        if process.poll() is None:
            killed.add(rank)
            try:
                os.killpg(process.pid, signal.SIGKILL) if hasattr(os, "killpg") else process.kill()
            except ProcessLookupError:
                pass
    for process in processes:
        process.wait()
        if process.stdin is not None:
            try:
                process.stdin.close()
            except OSError:
                pass


def outcome_path(folder: Path, rank: int) -> Path:
    """Where rank ``rank`` writes how it ended."""
    return Path(folder) / f"rank{rank}.json"


def _read_outcome(folder: Path, rank: int) -> Optional[dict[str, Any]]:
    try:
        return json.loads(outcome_path(folder, rank).read_text())
    except (OSError, ValueError):
        return None


def watch_launcher(fd: int, stop: threading.Event) -> None:
    """In a rank: set ``stop`` when the job asks (a ``stop`` line on file descriptor ``fd``, its
    stdin); when that pipe closes, the job's process is gone and this rank kills itself (with its
    data-loader workers), so that it never trains on unsupervised. Runs in a daemon thread; reads
    the descriptor itself (a buffered ``sys.stdin`` would block the interpreter's exit)."""
    pending = b""
    while chunk := os.read(fd, 256):
        pending += chunk
        if STOP_LINE in pending:
            stop.set()
        pending = pending[-len(STOP_LINE):]
    if hasattr(os, "killpg") and os.getpgid(0) == os.getpid():  # in a session of its own, as the job starts ranks
        os.killpg(0, signal.SIGKILL)
    os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))
