"""Where a parameter server's learners find it, and how a learner joins a running server.

The server hosts a small key-value store (a ``TCPStore``, the same kind torch.distributed
rendezvous on) at an :class:`Address`. A learner that joins, at the start of a run or at any
time later (restarted after a crash, or started by hand), asks through that store:

1. ``s = add("joins", 1)``; ``set("join/<s>", request)``: its learner index, the number and dtype
   of the elements it exchanges, the newest version it read (-1 if none), its process id;
2. the server's :class:`JoinAcceptor` thread, which handles ``join/1, join/2, ...`` in order,
   checks the request and answers ``join/<s>/reply`` (accepted, or refused with the reason);
3. both ends build a two-rank gloo process group directly from the store, under the prefix
   ``channel/<server generation>/<s>/`` (no collective over any default group: neither the other
   learners nor a default process group take part): the learner first sets
   ``ready/channel/<generation>/<s>``, and the server builds its end only once that is there (a
   thread waiting inside gloo cannot be stopped, so the server never waits there for a learner that
   died after its request was answered); the acceptor hands the channel to the
   server's :class:`~.transport.Transport`, whose loop sees a :class:`~.transport.Joined` event.

Why a store and a group per join rather than the default process group: a gloo group's members
are fixed when it is created and every member must take part in creating a new one, so a
process that was not in the world at ``init_process_group`` can never enter a group that
includes the others. A two-rank group built from a store needs only its two ends. The store
outlives no server: a restarted server hosts a new one at the same address, and its generation
(``add("server", 1)``, starting over in a new store) keeps channel names distinct when the store
is one that outlives the server (a launcher's).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, Optional

import torch
import torch.distributed as dist

from lightning_echo.errors import ConfigError, describe_error
from lightning_echo.stragglers.processes.link import LinkMeasurement, measure_link
from lightning_echo.stragglers.processes.protocol import ParameterServerError

if TYPE_CHECKING:
    from lightning_echo.stragglers.processes.transport import Transport

LOG = logging.getLogger("lightning_echo.stragglers.processes")
ADDRESS_ENV = "LIGHTNING_ECHO_PS_ADDRESS"  # host:port where the server hosts its store (processes started later find it)
STORE_ENV = "LIGHTNING_ECHO_PS_STORE"  # host:port of a store a launcher hosts: the server accepts joins through it
RESTARTS_ENV = "LIGHTNING_ECHO_PS_RESTARTS"  # "1": a launcher restarts lost processes (learners and server wait for each other)
JOIN_ENV = "LIGHTNING_ECHO_PS_JOIN"  # "1": this process was not in the first world; it joins without a default group
ADDRESS_KEY = "lightning_echo/ps_address"  # where rank 0 publishes it in the default group's store
POLL_S = 0.05  # how often the acceptor looks for a join request (and notices that it should stop)


@dataclass(frozen=True)
class Address:
    """``host:port`` of a parameter server's store."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: Any, key: str = ADDRESS_ENV) -> "Address":
        """``HOST:PORT`` (refused in one line naming ``key`` otherwise)."""
        host, sep, port = str(text).strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(key, text, "must be HOST:PORT with a port in 1..65535")
        return cls(host.strip("[]"), int(port))


@dataclass(frozen=True)
class JoinRequest:
    """What a joining learner asks for (``learner`` -1: any free slot)."""

    learner: int
    numel: int
    dtype: str
    read_version: int = -1
    pid: int = 0

    def encode(self) -> bytes:
        return json.dumps(self.__dict__).encode()

    @classmethod
    def decode(cls, raw: bytes) -> "JoinRequest":
        return cls(**json.loads(raw))


@dataclass(frozen=True)
class JoinReply:
    """The server's answer: the learner index it takes, or why it was refused."""

    accepted: bool
    learner: int
    generation: int
    reason: str = ""
    mismatch: bool = False  # refused because its parameters differ from the server's (a configuration error)
    measure_link: bool = False  # time the raw link with this learner (the first join of each server)

    def encode(self) -> bytes:
        return json.dumps(self.__dict__).encode()

    @classmethod
    def decode(cls, raw: bytes) -> "JoinReply":
        return cls(**json.loads(raw))


def _timedelta(seconds: float) -> datetime.timedelta:
    return datetime.timedelta(seconds=seconds)


def free_port(host: str = "") -> int:
    """A TCP port free on this host right now."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def host_store(address: Address, timeout: float) -> dist.TCPStore:
    """The server's store at ``address`` (this process serves it; it ends with the process or
    when the last reference goes)."""
    try:
        return dist.TCPStore(address.host, address.port, is_master=True, wait_for_workers=False,
                             timeout=_timedelta(timeout), use_libuv=True)
    except Exception as error:
        raise ParameterServerError(f"the parameter server cannot serve its store at {address}: {describe_error(error)}") from None


def open_store(address: Address, wait: float) -> dist.TCPStore:
    """A client of the store at ``address``, retrying for up to ``wait`` seconds (the server may
    not be there yet, or may be restarting). Raises :class:`ParameterServerError` after that."""
    try:
        return dist.TCPStore(address.host, address.port, is_master=False, timeout=_timedelta(max(wait, 0.1)))
    except Exception as error:
        raise ParameterServerError(
            f"no parameter server answered at {address} within {wait:g} s ({describe_error(error)})") from None


class JoinRefused(ParameterServerError):
    """The server answered a join with no (not a configuration mismatch: that is a ConfigError)."""


def channel_group(store: dist.Store, generation: int, sequence: int, rank: int, backstop: float) -> dist.ProcessGroup:
    """The two-rank gloo group of join ``sequence`` (server rank 0, learner rank 1). Both ends
    must build it within ``backstop`` seconds, and its receives time out after as long (gloo
    fixes one timeout per group when it is built; ``_set_default_timeout`` does not reach it)."""
    prefixed = dist.PrefixStore(f"channel/{generation}/{sequence}/", store)
    return dist.ProcessGroupGloo(prefixed, rank, 2, _timedelta(backstop))


def ready_key(kind: str, generation: int, sequence: int) -> str:
    """Set by the learner just before it builds its end of a ``kind`` group ("channel" or "link"):
    the server builds its end only then, so no server thread waits inside gloo for a learner that
    died after its request was answered (a wait there cannot be interrupted)."""
    return f"ready/{kind}/{generation}/{sequence}"


def wait_for_ready(store: dist.Store, key: str, stop: threading.Event, limit: float) -> bool:
    """Poll ``key`` until it is set (True), or ``stop`` is set or ``limit`` seconds pass (False)."""
    deadline = time.monotonic() + limit
    while not store.check([key]):
        if stop.wait(POLL_S) or time.monotonic() >= deadline:
            return False
    return True


def link_group(store: dist.Store, generation: int, sequence: int, rank: int, backstop: float) -> dist.ProcessGroup:
    """A second two-rank gloo group of join ``sequence``, only to time the raw link: a failed
    measurement there never touches the channel."""
    return dist.ProcessGroupGloo(dist.PrefixStore(f"link/{generation}/{sequence}/", store), rank, 2, _timedelta(backstop))


def time_link(store: dist.Store, reply: JoinReply, sequence: int, rank: int, request: JoinRequest,
              backstop: float) -> Optional[LinkMeasurement]:
    """Both ends of a join whose reply asks for it: ping-pong messages of the run's size on a
    group of their own (:func:`~.link.measure_link`, about a quarter of a second); None, with a
    warning, when that fails (the run does not depend on it)."""
    try:
        if rank == 1:
            store.set(ready_key("link", reply.generation, sequence), b"1")
        group = link_group(store, reply.generation, sequence, rank, backstop)
        return measure_link(group, rank, request.numel, getattr(torch, request.dtype))
    except Exception as error:
        LOG.warning("parameter server: the link to learner %d was not measured: %s", request.learner, describe_error(error))
        return None


def request_join(store: dist.Store, request: JoinRequest, wait: float, backstop: float) -> tuple[JoinReply, dist.ProcessGroup]:
    """The learner's side of a join: ask, wait up to ``wait`` seconds for the answer, build the
    channel. Raises :class:`ConfigError` when the server refuses this learner's parameters,
    :class:`JoinRefused` when it refuses otherwise, :class:`ParameterServerError` when it does
    not answer in time or the channel does not open."""
    try:
        sequence = store.add("joins", 1)
        store.set(f"join/{sequence}", request.encode())
        store.wait([f"join/{sequence}/reply"], _timedelta(wait))
        reply = JoinReply.decode(store.get(f"join/{sequence}/reply"))
    except Exception as error:
        raise ParameterServerError(
            f"learner {request.learner} could not join the parameter server within {wait:g} s ({describe_error(error)})") from None
    if not reply.accepted:
        if reply.mismatch:
            raise ConfigError("parameters", f"{request.numel} x {request.dtype} on learner {request.learner}", reply.reason)
        raise JoinRefused(f"the parameter server refused learner {request.learner}: {reply.reason}")
    try:
        store.set(ready_key("channel", reply.generation, sequence), b"1")
        group = channel_group(store, reply.generation, sequence, 1, backstop)
    except Exception as error:
        raise ParameterServerError(
            f"learner {reply.learner} could not open its channel to the parameter server ({describe_error(error)})") from None
    if reply.measure_link:
        time_link(store, reply, sequence, 1, request, backstop)
    return reply, group


Decide = Callable[[JoinRequest], JoinReply]


class JoinAcceptor:
    """The server's side of joins: a thread that answers every join request in order and hands
    each accepted learner's new channel to ``transport`` (which tells the server's loop).

    ``decide(request)`` answers a request (from this thread: it must only read shared state);
    ``generation`` names this server's channels. Each accepted channel is built in a thread of
    its own, so a learner that dies between its request and building its channel delays no
    other join (its builder gives up after ``backstop``). A request an earlier server of
    the same store already answered is skipped (its learner retries).
    """

    def __init__(self, store: dist.Store, transport: "Transport", decide: Decide, generation: int,
                 backstop: float) -> None:
        self.store = store
        self.transport = transport
        self.decide = decide
        self.generation = generation
        self.backstop = backstop
        self._builders: list[threading.Thread] = []
        self._link_asked = False
        self._stop = threading.Event()
        self._next = int(store.add("handled", 0)) + 1  # requests an earlier server of this store answered are done
        self.error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, name="ps-acceptor", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                key = f"join/{self._next}"
                # check() polls without blocking: a store.wait() that times out logs a warning each time
                if not self.store.check([key]):
                    self._stop.wait(POLL_S)
                    continue
                self._answer(self._next, JoinRequest.decode(self.store.get(key)))
                self.store.add("handled", 1)
                self._next += 1
        except BaseException as error:  # reaches the server's loop through the transport
            if not self._stop.is_set():
                self.error = error
                self.transport.post_failure(f"the join acceptor failed: {describe_error(error)}")

    def _answer(self, sequence: int, request: JoinRequest) -> None:
        reply_key = f"join/{sequence}/reply"
        if self.store.check([reply_key]):
            return  # a server before this one answered it and died: that learner asks again
        reply = self.decide(request)
        if reply.accepted and not self._link_asked:  # the first learner of this server times the link with it
            self._link_asked = True
            reply = replace(reply, measure_link=True)
        self.store.set(reply_key, reply.encode())
        if not reply.accepted:
            self.transport.post_refused(request, reply)
            return
        builder = threading.Thread(target=self._open, args=(sequence, request, reply), daemon=True,
                                   name=f"ps-join-{sequence}")
        self._builders = [b for b in self._builders if b.is_alive()] + [builder]
        builder.start()

    def _open(self, sequence: int, request: JoinRequest, reply: JoinReply) -> None:
        # A store client of its own: a client serialises its calls, so a builder waiting for a
        # learner that gave up would hold every other join behind it.
        store = self.store.clone()
        try:
            if not wait_for_ready(store, ready_key("channel", self.generation, sequence), self._stop, self.backstop):
                raise TimeoutError(f"the learner did not begin building it within {self.backstop:g} s")
            group = channel_group(store, self.generation, sequence, 0, self.backstop)
        except Exception as error:  # the learner died before its side was built
            if not self._stop.is_set():
                self.transport.post_refused(request, JoinReply(False, reply.learner, self.generation,
                                                               f"its channel did not open ({describe_error(error)})"))
            return
        if reply.measure_link and not self._stop.is_set() and wait_for_ready(store, ready_key("link", self.generation, sequence), self._stop,
                                                 self.backstop):
            self.transport.link = time_link(store, reply, sequence, 0, request, self.backstop)
        if not self._stop.is_set():
            self.transport.add_channel(reply.learner + 1, group, read_version=request.read_version, pid=request.pid)

    def close(self, wait: float = 1.0) -> None:
        """Stop answering (the thread ends within ``POLL_S``; a channel still being built gets
        ``wait`` seconds)."""
        self._stop.set()
        deadline = time.monotonic() + max(wait, POLL_S * 2)
        for thread in [self._thread, *self._builders]:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))


_connections = [0]  # connect() calls in this process: the same count on every rank of a world


def next_address_key() -> str:
    """The default-store key of this process's next first-world connection: one per fit, so a
    second fit in the same world never reads the first one's address, and one per torchrun
    attempt (``$TORCHELASTIC_RESTART_COUNT``), since a world torchrun's agent restarted shares the
    agent's store with the one before and would read its server's address."""
    _connections[0] += 1
    return f"{ADDRESS_KEY}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/{_connections[0]}"


def server_address(default_store: Optional[dist.Store], configured: Optional[Address] = None,
                   key: str = ADDRESS_KEY) -> Address:
    """The address the server hosts its store at: ``configured``, else ``$LIGHTNING_ECHO_PS_ADDRESS``,
    else this host's ``MASTER_ADDR`` (or 127.0.0.1) and a free port; published in the default
    group's store (when there is one) for the learners of the first world."""
    if configured is None and os.environ.get(ADDRESS_ENV):
        configured = Address.parse(os.environ[ADDRESS_ENV])
    if configured is None:
        host = os.environ.get("MASTER_ADDR", "127.0.0.1")
        configured = Address(host, free_port())
    if default_store is not None:
        default_store.set(key, str(configured))
    return configured


def learner_address(default_store: Optional[dist.Store], wait: float, key: str = ADDRESS_KEY) -> Address:
    """Where this learner finds the server: ``$LIGHTNING_ECHO_PS_ADDRESS``, else what rank 0
    published in the default group's store (waiting up to ``wait`` seconds)."""
    if os.environ.get(ADDRESS_ENV):
        return Address.parse(os.environ[ADDRESS_ENV])
    if default_store is None:
        raise ConfigError(ADDRESS_ENV, None, "must be HOST:PORT of the parameter server's store for a learner started "
                          "outside the first world (no default process group to find it in)")
    try:
        default_store.wait([key], _timedelta(wait))
        return Address.parse(default_store.get(key).decode())
    except ConfigError:
        raise
    except Exception as error:
        raise ParameterServerError(f"the parameter server did not publish its address within {wait:g} s "
                                   f"({describe_error(error)})") from None


def joins_late() -> bool:
    """Whether this process was started after the first world formed (a restarted learner or
    server): it has no default process group and finds the server through the store alone."""
    return os.environ.get(JOIN_ENV, "") == "1"


def launcher_restarts() -> bool:
    """Whether the launcher starts lost processes again (``$LIGHTNING_ECHO_PS_RESTARTS``)."""
    return os.environ.get(RESTARTS_ENV, "") == "1"


def launcher_store_address() -> Optional[Address]:
    """The address of a store the launcher hosts (``$LIGHTNING_ECHO_PS_STORE``), if any."""
    text = os.environ.get(STORE_ENV)
    return Address.parse(text, STORE_ENV) if text else None


def dtype_name(dtype: torch.dtype) -> str:
    """``float32`` for ``torch.float32``."""
    return str(dtype).removeprefix("torch.")


def wait_until(deadline: float) -> float:
    """Seconds left until ``deadline`` (a ``time.monotonic()`` value), at least 0."""
    return max(0.0, deadline - time.monotonic())
