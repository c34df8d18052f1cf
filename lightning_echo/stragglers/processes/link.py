"""The raw link between two ranks: a gloo send/recv ping-pong of the parameter server's message size.

The parameter server's loop moves one START (server -> learner) and one PUSH (learner -> server)
of ``HEADER_BYTES + numel * itemsize`` bytes per update, which is one ping-pong round trip of that
message. :func:`measure_link` times such round trips on a two-rank gloo group with nothing else
in the way (one preallocated buffer, no threads, no queues, no copies), so that the transport's
bytes per second can be read as a fraction of what the link carries (:func:`link_fraction`).

It uses the group's own ``send`` / ``recv`` methods, so it works on a group that is not
registered with ``torch.distributed``, e.g. one built from a store::

    group = dist.ProcessGroupGloo(dist.PrefixStore("link/", store), rank, 2, timeout)
    link = measure_link(group, rank, numel=1_000_000)     # both ranks call it
    link.bytes_per_s, link.round_trip_s                   # the same on both ranks

Both ranks get rank 0's measurement: rank 0 sends first and times every round trip, and when it
stops it sends the count and the time to rank 1 in a header-only message. Messages use their own
tag (:data:`LINK_TAG`), so they never match a receive posted with the default tag 0.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import torch

from lightning_echo.errors import ConfigError
from lightning_echo.stragglers.processes.protocol import HEADER_BYTES
from lightning_echo.validation import non_negative_float, non_negative_int, positive_float, positive_int

LINK_TAG = 0x4C4E4B  # "LNK": the measurement's messages never match the transport's tag-0 receives
ROUND_TRIPS = 1000  # the most timed round trips by default (small messages: about 0.1 s)
MIN_SECONDS = 0.25  # the default time budget (large messages: a few round trips)
_HELLO, _PING, _DONE = 1, 2, 3  # message kinds, in the first int64 of the header
_HEADER_INTS = HEADER_BYTES // 8  # [kind, 0, numel (handshake: bytes), round trips, seconds as float64 bits, 0]


class PointToPointGroup(Protocol):
    """What :func:`measure_link` needs of a process group: a gloo ``ProcessGroupGloo`` built from
    a store, or a group from ``dist.new_group(backend="gloo")``."""

    def send(self, tensors: Sequence[torch.Tensor], dst: int, tag: int) -> Any: ...

    def recv(self, tensors: Sequence[torch.Tensor], src: int, tag: int) -> Any: ...

    def rank(self) -> int: ...

    def size(self) -> int: ...


@dataclass(frozen=True)
class LinkMeasurement:
    """Timed ping-pong round trips: ``round_trips`` of them took ``seconds`` (at rank 0), each
    moving one message of ``message_bytes`` each way."""

    message_bytes: int
    round_trips: int
    seconds: float

    @property
    def round_trip_s(self) -> float:
        """Seconds per round trip (one message each way)."""
        return self.seconds / self.round_trips

    @property
    def bytes_per_s(self) -> float:
        """Bytes moved in both directions per second."""
        return 2 * self.message_bytes * self.round_trips / self.seconds


def message_bytes(numel: int, dtype: torch.dtype = torch.float32) -> int:
    """Bytes of the parameter server's START or PUSH of ``numel`` elements (header and payload,
    no note): what one direction of a round trip moves."""
    return HEADER_BYTES + numel * torch.empty((), dtype=dtype).element_size()


def measure_link(
    group: PointToPointGroup,
    rank: int,
    numel: int,
    dtype: torch.dtype = torch.float32,
    round_trips: int = ROUND_TRIPS,
    min_seconds: float = MIN_SECONDS,
) -> LinkMeasurement:
    """Time ping-pong round trips of :func:`message_bytes` ``(numel, dtype)`` between the two ranks
    of ``group``; both ranks call it with the same arguments, and both return rank 0's result.

    Rank 0 sends, rank 1 sends the same buffer back. Before the timing: a handshake (both sides
    check they agree on the message size; a mismatch raises ConfigError on both) and one untimed
    round trip. The timing stops after ``round_trips`` round trips, or after the first round trip
    that ends once ``min_seconds`` have passed, whichever comes first: at least one round trip, and
    at most ``min_seconds`` plus one round trip (plus the warm-up) in all.
    """
    if group.size() != 2:
        raise ConfigError("group", f"a group of {group.size()} ranks", "the link is measured between exactly 2 ranks")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank != group.rank():
        raise ConfigError("rank", rank, f"must be this process's rank in the group ({group.rank()})")
    non_negative_int("numel", numel)
    if not isinstance(dtype, torch.dtype):
        raise ConfigError("dtype", dtype, "must be a torch.dtype")
    positive_int("round_trips", round_trips)
    budget = non_negative_float("min_seconds", min_seconds)
    size = message_bytes(numel, dtype)
    buffer = torch.zeros(size, dtype=torch.uint8)
    header = buffer[:HEADER_BYTES].view(torch.int64)
    peer = 1 - rank
    _handshake(group, rank, numel, size)
    if rank == 0:
        header[:] = torch.tensor([_PING, 0, numel, 0, 0, 0])
        _round_trip(group, buffer)  # warm-up: connections, socket buffers, page faults
        count, started = 0, time.perf_counter()
        while True:
            _round_trip(group, buffer)
            count += 1
            seconds = time.perf_counter() - started
            if count >= round_trips or seconds >= budget:
                break
        done = torch.tensor([_DONE, 0, numel, count, 0, 0])
        done[4:5].view(torch.float64)[0] = seconds
        group.send([done], peer, LINK_TAG).wait()
        return LinkMeasurement(size, count, seconds)
    while True:  # rank 1: echo every PING; a DONE carries rank 0's result
        group.recv([buffer], peer, LINK_TAG).wait()
        kind = int(header[0])
        if kind == _DONE:
            return LinkMeasurement(size, int(header[3]), float(header[4:5].view(torch.float64)[0]))
        if kind != _PING:
            raise RuntimeError(f"measure_link: rank 0 sent a message of kind {kind} (expected {_PING} or {_DONE})")
        group.send([buffer], peer, LINK_TAG).wait()


def link_fraction(transport_bytes_per_s: float, link: LinkMeasurement) -> float:
    """The transport's bytes per second (both directions, as :attr:`LinkMeasurement.bytes_per_s`)
    as a fraction of the raw link's."""
    positive_float("transport_bytes_per_s", transport_bytes_per_s)
    if not isinstance(link, LinkMeasurement):
        raise ConfigError("link", link, "must be a LinkMeasurement (from measure_link)")
    return transport_bytes_per_s / link.bytes_per_s


def _round_trip(group: PointToPointGroup, buffer: torch.Tensor) -> None:
    group.send([buffer], 1, LINK_TAG).wait()
    group.recv([buffer], 1, LINK_TAG).wait()


def _handshake(group: PointToPointGroup, rank: int, numel: int, size: int) -> None:
    """Both ranks learn each other's message size (a header-sized message each way); both raise
    ConfigError if they differ."""
    mine = torch.zeros(_HEADER_INTS, dtype=torch.int64)
    mine[0], mine[2] = _HELLO, size
    theirs = torch.zeros(_HEADER_INTS, dtype=torch.int64)
    peer = 1 - rank
    if rank == 0:
        group.send([mine], peer, LINK_TAG).wait()
        group.recv([theirs], peer, LINK_TAG).wait()
    else:
        group.recv([theirs], peer, LINK_TAG).wait()
        group.send([mine], peer, LINK_TAG).wait()
    if int(theirs[0]) != _HELLO or int(theirs[2]) != size:
        raise ConfigError(
            "numel", numel,
            f"both ranks must measure the same message size: {size} bytes on rank {rank}, {int(theirs[2])} on rank {peer}",
        )
