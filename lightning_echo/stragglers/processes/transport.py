"""Channels between the parameter server (rank 0) and its learners (ranks 1..P) on torch.distributed.

Each learner has its own two-rank gloo process group with the server, and each end runs one
receiver thread per channel that posts a receive for the next message as soon as the last one
arrived. :meth:`Transport.recv_any` then takes whichever message arrived first, from any peer.

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
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Union

import torch
import torch.distributed as dist

from lightning_echo.errors import ConfigError, describe_error
from lightning_echo.stragglers.processes.protocol import FINAL, Header, Kind, Message, ProtocolError
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

    @property
    def payload(self) -> torch.Tensor:
        """The flat parameters or gradient (a view into the receive buffer)."""
        return self.message.payload


@dataclass(frozen=True)
class _Lost:
    src: int
    reason: str


class Transport:
    """Message channels from this rank to ``peers`` (global rank -> its two-rank process group).

    Build it with :func:`connect`. Messages carry ``numel`` elements of ``dtype``; the buffers
    they arrive in come from a pool and go back with :meth:`release`, so a steady run allocates
    nothing. :meth:`close` waits briefly for the receiver threads; a thread whose peer never sent
    its final message stays blocked in gloo until that peer's process ends (or the backstop
    timeout), as a daemon thread that cannot keep the process alive.
    """

    def __init__(
        self, rank: int, peers: Mapping[int, dist.ProcessGroup], numel: int, dtype: torch.dtype, timeout: float
    ) -> None:
        self.rank = rank
        self.numel = numel
        self.dtype = dtype
        self.timeout = check_timeout(timeout)
        self._groups = dict(peers)
        self._inbox: "queue.Queue[Union[Inbound, _Lost]]" = queue.Queue()
        self._free: "queue.SimpleQueue[Message]" = queue.SimpleQueue()
        self.buffers_allocated = 0
        self.bytes_sent = 0
        self.messages_sent = 0
        self._bytes_received = {peer: 0 for peer in self._groups}
        self._threads = {
            peer: threading.Thread(target=self._receive, args=(peer,), name=f"ps-recv-{rank}<-{peer}", daemon=True)
            for peer in self._groups
        }
        for thread in self._threads.values():
            thread.start()

    @property
    def peers(self) -> tuple[int, ...]:
        """The global ranks this transport talks to."""
        return tuple(sorted(self._groups))

    @property
    def bytes_received(self) -> int:
        """Bytes of every message received so far (headers included)."""
        return sum(self._bytes_received.values())

    def new_message(self) -> Message:
        """A message buffer for sending (the caller keeps and reuses it)."""
        return Message(self.numel, self.dtype)

    # -- receiving -----------------------------------------------------------------------------
    def _take(self) -> Message:
        try:
            return self._free.get_nowait()
        except queue.Empty:
            self.buffers_allocated += 1
            return Message(self.numel, self.dtype)

    def _receive(self, peer: int) -> None:
        group = self._groups[peer]
        while True:
            message = self._take()
            try:
                dist.recv(message.buffer, src=peer, group=group)
                header = message.header()
            except Exception as error:  # the peer's process ended, the backstop timeout, or garbage
                self._free.put(message)
                reason = str(error) if isinstance(error, ProtocolError) else describe_error(error)
                self._inbox.put(_Lost(peer, reason))
                return
            self._bytes_received[peer] += message.wire_bytes(header.kind, header.note)
            self._inbox.put(Inbound(peer, header, message))
            if header.kind in FINAL:
                return

    def recv_any(self, timeout: Optional[float]) -> Optional[Inbound]:
        """The next message from any peer, in arrival order; ``None`` if none came within
        ``timeout`` seconds (0: do not wait). Raises :class:`PeerLost` when a peer's channel
        failed (after every message that peer delivered before)."""
        try:
            item = self._inbox.get(timeout=timeout) if timeout is None or timeout > 0 else self._inbox.get_nowait()
        except queue.Empty:
            return None
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
        within the timeout."""
        group = self._groups.get(dst)
        if group is None:
            raise ValueError(f"rank {self.rank} has no channel to rank {dst} (peers: {self.peers})")
        wire = message.encode(kind, learner, version, ticket, note)
        started = time.monotonic()
        try:
            work = dist.isend(wire, dst=dst, group=group)
            work.wait(timeout=datetime.timedelta(seconds=self.timeout))
        except Exception as error:
            raise PeerLost(dst, send_failure(kind, time.monotonic() - started, self.timeout, error)) from error
        self.bytes_sent += wire.numel()
        self.messages_sent += 1

    # -- shutdown ------------------------------------------------------------------------------
    def close(self, wait: float = 1.0) -> tuple[int, ...]:
        """Wait up to ``wait`` seconds in all for the receiver threads; return the peers whose
        thread still waits for a final message."""
        deadline = time.monotonic() + wait
        for thread in self._threads.values():
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        return tuple(peer for peer, thread in self._threads.items() if thread.is_alive())


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


def _dtype_code(dtype: torch.dtype) -> int:
    if dtype not in DTYPES:
        raise ConfigError("parameter dtype", str(dtype), "must be one of " + ", ".join(str(d) for d in DTYPES))
    return DTYPES.index(dtype)


def connect(numel: int, dtype: torch.dtype, timeout: float) -> Transport:
    """Open the server's and learners' channels; every rank of the (initialised) default process
    group calls it with the same arguments. Rank 0 is the server; rank ``i + 1`` is learner ``i``.

    The default group may use any backend (NCCL included): the channels are new gloo groups.
    Each learner checks with the server that both exchange the same number of elements of the
    same dtype, and both raise ConfigError if not.
    """
    if not dist.is_initialized():
        raise RuntimeError("torch.distributed is not initialised: call init_process_group first")
    check_timeout(timeout)
    rank, world = dist.get_rank(), dist.get_world_size()
    if world < 2:
        raise ConfigError("world_size", world, "a parameter server needs at least 2 processes (the server and a learner)")
    code = _dtype_code(dtype)
    backstop = datetime.timedelta(seconds=BACKSTOP_FACTOR * timeout)
    peers: dict[int, dist.ProcessGroup] = {}
    for other in range(1, world):  # collective: every rank creates every group, in the same order
        group = dist.new_group([SERVER_RANK, other], timeout=backstop, backend="gloo")
        if rank == SERVER_RANK:
            peers[other] = group
        elif rank == other:
            peers[SERVER_RANK] = group
    _handshake(rank, peers, numel, code)
    return Transport(rank, peers, numel, dtype, timeout)


def _handshake(rank: int, peers: Mapping[int, dist.ProcessGroup], numel: int, code: int) -> None:
    mine = torch.tensor([numel, code], dtype=torch.int64)
    theirs = torch.empty(2, dtype=torch.int64)
    mismatched = []
    for peer, group in sorted(peers.items()):
        if rank == SERVER_RANK:
            dist.recv(theirs, src=peer, group=group)
            dist.send(mine, dst=peer, group=group)
        else:
            dist.send(mine, dst=peer, group=group)
            dist.recv(theirs, src=peer, group=group)
        if not torch.equal(mine, theirs):
            mismatched.append((peer, int(theirs[0]), DTYPES[int(theirs[1])] if 0 <= theirs[1] < len(DTYPES) else "?"))
    if mismatched:
        peer, other_numel, other_dtype = mismatched[0]
        raise ConfigError(
            "parameters", f"{numel} x {DTYPES[code]} on rank {rank}",
            f"every rank must exchange the same flat parameters; rank {peer} has {other_numel} x {other_dtype}",
        )
