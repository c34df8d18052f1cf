"""Channels between the parameter server (rank 0) and its learners (ranks 1..P) on torch.distributed.

Each learner has its own two-rank gloo process group with the server, built from the server's
store when the learner joins (:mod:`.rendezvous`: at the start, or later for a restarted
learner), and each end runs one receiver thread per channel that posts a receive for the next
message as soon as the last one arrived. :meth:`Transport.recv_any` then takes whichever message
(or join) arrived first, from any peer.

Why not gloo's receive-from-any-source on one group (``dist.recv(t, src=None)``): measured with
torch 2.13, an any-source receive never notices that a peer died (it waits for the full group
timeout), and a receive that times out closes every connection of its group, so one dead
learner would end the run for all. A receive from one named peer fails at once when that peer's
process dies (the socket closes), and a timeout in a two-rank group closes only that learner's
channel. NCCL has no any-source receive at all and no per-peer failure isolation, so the
channels are gloo groups on CPU even when training runs on GPUs (see ``README.md`` here).

Timeouts: a send that the peer does not take within ``timeout`` seconds means the peer is gone
(:class:`PeerLost`). Receives are not timed here (the server and learner loops know how long a
silence may legitimately last); the groups' own gloo timeout, ``BACKSTOP_FACTOR * timeout``, only
ends a receiver thread whose peer is silent far longer than any loop would wait.
"""

from __future__ import annotations

import datetime
import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Union

import torch
import torch.distributed as dist

from lightning_echo.errors import ConfigError, describe_error
from lightning_echo.stragglers.processes.link import LinkMeasurement
from lightning_echo.stragglers.processes.protocol import FINAL, Header, Kind, Message, ParameterServerError, ProtocolError
from lightning_echo.stragglers.processes.rendezvous import (
    Address,
    JoinAcceptor,
    JoinRefused,
    JoinReply,
    ADDRESS_ENV,
    JoinRequest,
    dtype_name,
    host_store,
    joins_late,
    launcher_store_address,
    learner_address,
    next_address_key,
    open_store,
    request_join,
    server_address,
    wait_until,
)
from lightning_echo.validation import positive_float

SERVER_RANK = 0
BACKSTOP_FACTOR = 4
MAX_TIMEOUT_S = 7 * 24 * 3600.0  # a week: longer is no timeout, and 4x it must still fit a timedelta
# dtypes a channel can carry, by the code the handshake exchanges
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def learner_rank(learner: int) -> int:
    """The global rank of learner ``learner`` (the server is rank 0)."""
    return learner + 1


def learner_index(rank: int) -> int:
    """The learner index of global rank ``rank``."""
    return rank - 1


class PeerLost(RuntimeError):
    """A peer's process died, or it did not take a message within the timeout."""

    def __init__(self, rank: int, reason: str) -> None:
        self.rank = rank
        self.reason = reason
        who = "the parameter server" if rank == SERVER_RANK else f"learner {learner_index(rank)}"
        super().__init__(f"{who} (rank {rank}) is unreachable: {reason}")


@dataclass
class Inbound:
    """A received message; its payload is valid until :meth:`Transport.release`."""

    src: int
    header: Header
    message: Message
    channel: int = 0

    @property
    def payload(self) -> torch.Tensor:
        """The flat parameters or gradient (a view into the receive buffer)."""
        return self.message.payload


@dataclass(frozen=True)
class Joined:
    """Learner rank ``src`` opened a new channel (it joined, or rejoined after a loss); the
    newest version it had read before, -1 if none."""

    src: int
    read_version: int


@dataclass(frozen=True)
class Refused:
    """A join the server refused: ``learner`` (the index it asked for) and why; ``mismatch``:
    its parameters differ from the server's (a configuration error)."""

    learner: int
    reason: str
    mismatch: bool


@dataclass(frozen=True)
class _Lost:
    src: int
    reason: str
    channel: int = 0


@dataclass(frozen=True)
class _Failed:
    reason: str


@dataclass
class _Channel:
    group: Any  # a two-rank gloo ProcessGroup
    ident: int
    other: int  # the peer's rank inside the two-rank group
    thread: Optional[threading.Thread] = None


Event = Union[Inbound, Joined, Refused]


class Transport:
    """Message channels from this rank to its peers (global rank -> a two-rank gloo group).

    Build it with :func:`connect` (the first world), :func:`serve` or :func:`join`. Channels can
    be added while it runs (:meth:`add_channel`: a learner that joins or rejoins); a newer
    channel to a peer supersedes the older one, whose messages are then dropped. Messages carry
    ``numel`` elements of ``dtype``; the buffers they arrive in come from a pool and go back
    with :meth:`release`, so a steady run allocates nothing. :meth:`close` waits briefly for the
    receiver threads; a thread whose peer never sent its final message stays blocked in gloo
    until that peer's process ends (or the backstop timeout), as a daemon thread that cannot
    keep the process alive.
    """

    def __init__(
        self, rank: int, peers: Mapping[int, Any], numel: int, dtype: torch.dtype, timeout: float
    ) -> None:
        self.rank = rank
        self.numel = numel
        self.dtype = dtype
        self.timeout = check_timeout(timeout)
        self._lock = threading.Lock()
        self._channels: dict[int, _Channel] = {}
        self._idents = 0
        self._inbox: "queue.Queue[Union[Inbound, Joined, Refused, _Lost, _Failed]]" = queue.Queue()
        self._free: "queue.SimpleQueue[Message]" = queue.SimpleQueue()
        self.buffers_allocated = 0
        self.bytes_sent = 0
        self.messages_sent = 0
        self._bytes_received: dict[int, int] = {}
        self._retired_threads: list[threading.Thread] = []
        self._on_close: list[Callable[[], None]] = []
        self.store: Optional[dist.Store] = None  # the server's store (served here when the server owns it)
        self.address: Optional[Address] = None  # where a learner found the server (to rejoin it)
        self.pids: dict[int, int] = {}  # peer -> its process id, as it said when it joined
        self.link: Optional[LinkMeasurement] = None  # the raw link to the first learner, timed when it joined
        self.learner_slots: Optional[int] = None  # the server's: learner indices it accepts (0..slots-1)
        for peer, group in peers.items():
            self.add_channel(peer, group, announce=False)

    @property
    def peers(self) -> tuple[int, ...]:
        """The global ranks this transport has a channel to (or had: a lost channel stays listed
        until a newer one replaces it)."""
        with self._lock:
            return tuple(sorted(self._channels))

    @property
    def bytes_received(self) -> int:
        """Bytes of every message received so far (headers included)."""
        return sum(self._bytes_received.values())

    def new_message(self) -> Message:
        """A message buffer for sending (the caller keeps and reuses it)."""
        return Message(self.numel, self.dtype)

    # -- channels ------------------------------------------------------------------------------
    def add_channel(self, peer: int, group: Any, read_version: int = -1, announce: bool = True, pid: int = 0) -> int:
        """Talk to ``peer`` over ``group`` from now on (its receiver thread starts); an older
        channel to ``peer`` is superseded. With ``announce``, :meth:`recv_any` returns a
        :class:`Joined` for it. ``pid``: the peer's process id, as it said when it joined.
        Returns the channel's number."""
        with self._lock:
            self.pids[peer] = pid
            self._idents += 1
            channel = _Channel(group, self._idents, other=1 if self.rank == SERVER_RANK else 0)
            old = self._channels.get(peer)
            if old is not None and old.thread is not None:
                self._retired_threads.append(old.thread)
            self._channels[peer] = channel
            self._bytes_received.setdefault(peer, 0)
            if announce:  # before the thread starts, so Joined comes before the peer's first message
                self._inbox.put(Joined(peer, read_version))
            channel.thread = threading.Thread(target=self._receive, args=(peer, channel), daemon=True,
                                              name=f"ps-recv-{self.rank}<-{peer}#{channel.ident}")
            channel.thread.start()
        return channel.ident

    def _current(self, peer: int, ident: int) -> bool:
        with self._lock:
            channel = self._channels.get(peer)
            return channel is not None and channel.ident == ident

    def report_unresponsive(self, peer: int) -> None:
        """Tell whoever hosts the store (a launcher that restarts processes) that ``peer``'s process
        is alive but silent, so that it can end it and start another: key ``unresponsive/<learner>``
        = its pid. Nothing happens without a store or a known pid."""
        pid = self.pids.get(peer, 0)
        if self.store is not None and pid > 0:
            try:
                self.store.set(f"unresponsive/{learner_index(peer)}", str(pid))
            except Exception:  # the store's host is gone: nobody to tell
                pass

    def post_refused(self, request: Any, reply: Any) -> None:
        """The acceptor refused a join: the server's loop hears of it."""
        self._inbox.put(Refused(int(request.learner), str(reply.reason), bool(reply.mismatch)))

    def post_failure(self, reason: str) -> None:
        """Something this transport depends on failed (the join acceptor): :meth:`recv_any` raises."""
        self._inbox.put(_Failed(reason))

    def on_close(self, action: Callable[[], None]) -> None:
        """Run ``action`` when the transport closes (stop the acceptor, release the store)."""
        self._on_close.append(action)

    # -- receiving -----------------------------------------------------------------------------
    def _take(self) -> Message:
        try:
            return self._free.get_nowait()
        except queue.Empty:
            self.buffers_allocated += 1
            return Message(self.numel, self.dtype)

    def _receive(self, peer: int, channel: _Channel) -> None:
        while True:
            message = self._take()
            try:
                channel.group.recv([message.buffer], channel.other, 0).wait()
                header = message.header()
            except Exception as error:  # the peer's process ended, the backstop timeout, or garbage
                self._free.put(message)
                reason = str(error) if isinstance(error, ProtocolError) else describe_error(error)
                self._inbox.put(_Lost(peer, reason, channel.ident))
                return
            self._bytes_received[peer] += message.wire_bytes(header.kind, header.note)
            self._inbox.put(Inbound(peer, header, message, channel.ident))
            if header.kind in FINAL:
                return

    def recv_any(self, timeout: Optional[float]) -> Optional[Event]:
        """The next message or join event from any peer, in arrival order; ``None`` if none came
        within ``timeout`` seconds (0: do not wait). Raises :class:`PeerLost` when a peer's
        current channel failed (after every message that peer delivered on it before).
        Messages of a superseded channel are dropped."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                item = self._inbox.get(timeout=left) if left is None or left > 0 else self._inbox.get_nowait()
            except queue.Empty:
                return None
            if isinstance(item, _Failed):
                raise ProtocolError(item.reason)
            if isinstance(item, (Joined, Refused)):
                return item
            if not self._current(item.src, item.channel):
                if isinstance(item, Inbound):
                    self._free.put(item.message)
                continue
            if isinstance(item, _Lost):
                raise PeerLost(item.src, item.reason)
            return item

    def release(self, inbound: Inbound) -> None:
        """Give a received message's buffer back for reuse (do not read its payload afterwards)."""
        self._free.put(inbound.message)

    # -- sending -------------------------------------------------------------------------------
    def send(self, dst: int, message: Message, kind: Kind, learner: int, version: int = 0, ticket: int = 0,
             note: bytes = b"") -> None:
        """Send ``message`` (its payload for START and PUSH, and ``note`` for a PUSH) to rank
        ``dst``; blocks until the peer has taken it. Raises :class:`PeerLost` if it is not taken
        within the timeout, or ``dst`` has no channel (it has not joined)."""
        with self._lock:
            channel = self._channels.get(dst)
        if channel is None:  # it never joined (or not yet): as unreachable as a peer whose process died
            raise PeerLost(dst, f"it has no channel to rank {self.rank}: it has not joined")
        wire = message.encode(kind, learner, version, ticket, note)
        started = time.monotonic()
        try:
            work = channel.group.send([wire], channel.other, 0)
            work.wait(datetime.timedelta(seconds=self.timeout))
        except Exception as error:
            raise PeerLost(dst, send_failure(kind, time.monotonic() - started, self.timeout, error)) from error
        self.bytes_sent += wire.numel()
        self.messages_sent += 1

    # -- shutdown ------------------------------------------------------------------------------
    def close(self, wait: float = 1.0) -> tuple[int, ...]:
        """Stop accepting joins, wait up to ``wait`` seconds in all for the receiver threads;
        return the peers whose thread still waits for a final message."""
        deadline = time.monotonic() + wait
        for action in self._on_close:
            action()
        self._on_close.clear()
        with self._lock:
            current = {peer: channel.thread for peer, channel in self._channels.items()}
        for thread in list(current.values()) + self._retired_threads:
            if thread is not None:
                thread.join(timeout=max(0.0, deadline - time.monotonic()))
        return tuple(peer for peer, thread in current.items() if thread is not None and thread.is_alive())


def send_failure(kind: Kind, waited_s: float, timeout: float, error: BaseException) -> str:
    """Why a send failed, as it happened: the peer did not take the message within the timeout,
    or its channel failed before (its process ended: the connection closed)."""
    if waited_s >= 0.9 * timeout:
        return f"a {kind.name} message was not taken within {timeout:g} s ({describe_error(error)})"
    return f"its channel failed after {waited_s:.1f} s while sending a {kind.name} message, so its process is gone ({describe_error(error)})"


def check_timeout(timeout: Any, key: str = "ps.timeout") -> float:
    """``timeout`` in seconds, a finite number in (0, a week]; refused in one line otherwise."""
    seconds = positive_float(key, timeout)
    if seconds > MAX_TIMEOUT_S:
        raise ConfigError(key, timeout, f"must be at most {MAX_TIMEOUT_S:g} s (a week): a longer wait is no timeout")
    return seconds


def _check_dtype(dtype: torch.dtype) -> None:
    if dtype not in DTYPES:
        raise ConfigError("parameter dtype", str(dtype), "must be one of " + ", ".join(str(d) for d in DTYPES))


def serve(numel: int, dtype: torch.dtype, timeout: float, learners: int, address: Address) -> Transport:
    """The server's transport: host the store at ``address`` and accept learners ``0..learners-1``
    whenever they join (:class:`~.rendezvous.JoinAcceptor`); each join reaches
    :meth:`Transport.recv_any` as a :class:`Joined`. A learner whose parameters differ from
    ``numel`` x ``dtype`` is refused (:class:`Refused` with ``mismatch``)."""
    check_timeout(timeout)
    _check_dtype(dtype)
    store = host_store(address, timeout)
    transport = _accepting(store, numel, dtype, timeout, learners)
    transport.address = address
    return transport


def accept_joins(store: dist.Store, numel: int, dtype: torch.dtype, timeout: float, learners: int) -> Transport:
    """:func:`serve` over a store someone else hosts (a launcher's)."""
    check_timeout(timeout)
    _check_dtype(dtype)
    return _accepting(store, numel, dtype, timeout, learners)


def _accepting(store: dist.Store, numel: int, dtype: torch.dtype, timeout: float, learners: int) -> Transport:
    transport = Transport(SERVER_RANK, {}, numel, dtype, timeout)
    transport.learner_slots = learners
    generation = int(store.add("server", 1))
    mine = dtype_name(dtype)

    def decide(request: JoinRequest) -> JoinReply:
        if request.numel != numel or request.dtype != mine:
            return JoinReply(False, request.learner, generation, mismatch=True, reason=(
                f"every rank must exchange the same flat parameters; the server has {numel} x {mine}, "
                f"learner {request.learner} {request.numel} x {request.dtype}"))
        if not 0 <= request.learner < learners:
            return JoinReply(False, request.learner, generation,
                             reason=f"learner index {request.learner} is outside 0..{learners - 1} (stale.learners={learners})")
        return JoinReply(True, request.learner, generation)

    acceptor = JoinAcceptor(store, transport, decide, generation, BACKSTOP_FACTOR * timeout)
    transport.store = store  # kept alive (and served, when owned) while the transport is open

    def stop() -> None:
        acceptor.close()
        transport.store = None

    transport.on_close(stop)
    return transport


def join(address: Address, learner: int, numel: int, dtype: torch.dtype, timeout: float,
         wait: Optional[float] = None, read_version: int = -1) -> Transport:
    """A learner's transport: join the server whose store is at ``address`` as learner
    ``learner``, waiting up to ``wait`` seconds (default ``timeout``) for it to answer (it may
    be starting or restarting). Raises :class:`ConfigError` when the server's parameters differ,
    :class:`~.protocol.ParameterServerError` when it refuses or is not there in time."""
    check_timeout(timeout)
    _check_dtype(dtype)
    wait = timeout if wait is None else wait
    deadline = time.monotonic() + wait
    request = JoinRequest(learner, numel, dtype_name(dtype), read_version, os.getpid())
    while True:  # a server that dies while this learner joins it: ask its successor, until the wait is over
        try:
            store = open_store(address, wait_until(deadline))
            _, group = request_join(store, request, wait_until(deadline), BACKSTOP_FACTOR * timeout)
            break
        except JoinRefused:
            raise
        except ParameterServerError as error:
            if time.monotonic() >= deadline:
                raise ParameterServerError(f"no parameter server took learner {learner} in at {address} within "
                                           f"{wait:g} s (last attempt: {error})") from None
            time.sleep(0.1)
    transport = Transport(learner_rank(learner), {SERVER_RANK: group}, numel, dtype, timeout)
    transport.store = store
    transport.address = address
    return transport


def connect(numel: int, dtype: torch.dtype, timeout: float, address: Optional[Address] = None, *,
            rank: Optional[int] = None, world: Optional[int] = None, wait: Optional[float] = None) -> Transport:
    """Open this rank's channels; every rank of the world calls it with the same arguments. Rank 0
    is the server, rank ``i + 1`` learner ``i``, which joins it through the server's store.

    In the first world (the default process group is initialised) rank 0 hosts that store at
    ``address``, ``$LIGHTNING_ECHO_PS_ADDRESS`` or a free port, and publishes where in the
    default group's store; with ``$LIGHTNING_ECHO_PS_STORE`` it uses the store a launcher hosts
    there instead. A process started later (``$LIGHTNING_ECHO_PS_JOIN=1``: a restarted learner,
    or a restarted server) has no default group: give ``rank`` and ``world`` (P + 1), and the
    store's address by one of the two variables. ``wait``: how long a learner waits for the
    server to take it in (default ``timeout``; a server may be restarting).

    The default group may use any backend (NCCL included): the channels are gloo groups of two
    built from the server's store, so a learner that dies before it joins fails nothing but its
    own channel. A learner whose parameters differ from the server's raises ConfigError, and so
    does the server when it waits for its first learners (:meth:`ParameterServer.start`).
    """
    check_timeout(timeout)
    _check_dtype(dtype)
    late = joins_late()
    if late:
        if rank is None or world is None:
            raise ValueError("a process that joins late needs its rank and the world size")
    else:
        if not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialised: call init_process_group first")
        rank, world = dist.get_rank(), dist.get_world_size()
    if world < 2:
        raise ConfigError("world_size", world, "a parameter server needs at least 2 processes (the server and a learner)")
    default_store = None if late else dist.distributed_c10d._get_default_store()
    key = next_address_key()
    shared = launcher_store_address()
    if rank == SERVER_RANK:
        if shared is not None:
            transport = accept_joins(open_store(shared, timeout), numel, dtype, timeout, world - 1)
            transport.address = shared
            return transport
        if late and address is None and not os.environ.get(ADDRESS_ENV):
            raise ConfigError(ADDRESS_ENV, None, "must be HOST:PORT for a parameter server started again: its learners "
                              "look for it where the first one was")
        return serve(numel, dtype, timeout, world - 1, server_address(default_store, address, key))
    where = address or shared or (Address.parse(os.environ[ADDRESS_ENV]) if os.environ.get(ADDRESS_ENV) else None)
    if where is None:
        where = learner_address(default_store, timeout, key)
    return join(where, learner_index(rank), numel, dtype, timeout, wait=wait)
