"""``measure_link``: a raw gloo ping-pong between the two ranks of a group built from a store
(not registered with torch.distributed), in two spawned processes."""

from __future__ import annotations

import datetime
import math
import multiprocessing
import os
import socket
import time
import traceback
from typing import Any

import pytest
import torch
import torch.distributed as dist

from lightning_echo.errors import ConfigError
from lightning_echo.stragglers.processes.link import (
    LinkMeasurement,
    link_fraction,
    measure_link,
    message_bytes,
)
from lightning_echo.stragglers.processes.protocol import HEADER_BYTES

DEADLINE_S = 90.0  # the whole two-process run, start-up included; the children are killed after it

# (name, keyword arguments of measure_link for rank 0, for rank 1)
SCENARIOS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("five", dict(numel=1000, round_trips=5, min_seconds=60.0), dict(numel=1000, round_trips=5, min_seconds=60.0)),
    ("budget spent", dict(numel=1000, min_seconds=0.0), dict(numel=1000, min_seconds=0.0)),
    ("one", dict(numel=100_000, round_trips=1, min_seconds=60.0), dict(numel=100_000, round_trips=1, min_seconds=60.0)),
    ("float64", dict(numel=10, dtype=torch.float64, round_trips=3), dict(numel=10, dtype=torch.float64, round_trips=3)),
    ("header only", dict(numel=0, round_trips=2), dict(numel=0, round_trips=2)),
    ("mismatch", dict(numel=10, round_trips=2), dict(numel=20, round_trips=2)),
    ("after mismatch", dict(numel=7, round_trips=2, min_seconds=60.0), dict(numel=7, round_trips=2, min_seconds=60.0)),
]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _rank(rank: int, port: int, results: Any) -> None:
    try:
        timeout = datetime.timedelta(seconds=30)
        store = dist.TCPStore("127.0.0.1", port, 2, rank == 0, timeout=timeout)
        group = dist.ProcessGroupGloo(dist.PrefixStore("link/", store), rank, 2, timeout)
        out: dict[str, Any] = {"registered": dist.is_initialized()}
        for name, rank0, rank1 in SCENARIOS:
            try:
                out[name] = measure_link(group, rank, **(rank0 if rank == 0 else rank1))
            except ConfigError as error:
                out[name] = ("ConfigError", str(error))
        results.put((rank, True, out))
    except BaseException:  # noqa: BLE001 - reported to the test
        results.put((rank, False, traceback.format_exc()))
    os._exit(0)


@pytest.fixture(scope="module")
def ranks() -> dict[int, dict[str, Any]]:
    """Both ranks' results of every scenario, from one two-process run."""
    # spawn, not fork: this pytest process may hold threads of earlier tests (gloo's, torch's), and a
    # child forked from it can deadlock on a lock one of them held
    context = multiprocessing.get_context("spawn")
    results = context.SimpleQueue()
    port = _free_port()
    children = [context.Process(target=_rank, args=(rank, port, results), daemon=True) for rank in (0, 1)]
    for child in children:
        child.start()
    out: dict[int, Any] = {}
    failures = []
    ends = time.monotonic() + DEADLINE_S
    while len(out) + len(failures) < 2 and time.monotonic() < ends:
        if results.empty():
            time.sleep(0.02)
            continue
        rank, ok, value = results.get()
        (out.__setitem__(rank, value) if ok else failures.append(f"rank {rank}:\n{value}"))
    for child in children:
        child.join(timeout=max(0.0, ends - time.monotonic()) + 5)
    left = [child.pid for child in children if child.is_alive()]
    for child in children:
        if child.is_alive():
            child.kill()
            child.join(timeout=5)
    assert not left, f"children still alive after the deadline: {left}"
    assert not failures, "\n".join(failures)
    assert sorted(out) == [0, 1], f"results from ranks {sorted(out)} within {DEADLINE_S:g} s"
    assert all(child.exitcode == 0 for child in children)
    return out


def test_the_group_is_not_registered_with_torch_distributed(ranks: dict[int, dict[str, Any]]) -> None:
    assert ranks[0]["registered"] is False and ranks[1]["registered"] is False


def test_both_ranks_get_rank_0s_measurement(ranks: dict[int, dict[str, Any]]) -> None:
    for name, _, _ in SCENARIOS:
        if name != "mismatch":  # refused on each rank with its own numbers
            assert ranks[0][name] == ranks[1][name], name


def test_positive_rate_and_the_servers_message_size(ranks: dict[int, dict[str, Any]]) -> None:
    five = ranks[0]["five"]
    assert isinstance(five, LinkMeasurement)
    assert five.message_bytes == HEADER_BYTES + 4 * 1000 == message_bytes(1000)
    assert five.seconds > 0 and five.bytes_per_s > 0
    assert five.bytes_per_s == pytest.approx(2 * five.message_bytes * five.round_trips / five.seconds)
    assert five.round_trip_s == pytest.approx(five.seconds / 5)
    assert ranks[0]["float64"].message_bytes == HEADER_BYTES + 8 * 10
    assert ranks[0]["header only"].message_bytes == HEADER_BYTES
    assert ranks[0]["one"].message_bytes == HEADER_BYTES + 4 * 100_000


def test_the_budget_in_round_trips(ranks: dict[int, dict[str, Any]]) -> None:
    assert ranks[0]["five"].round_trips == 5  # the round-trip cap, the time budget far away
    assert ranks[0]["one"].round_trips == 1
    assert ranks[0]["budget spent"].round_trips == 1  # a spent budget: the first round trip ends it
    assert ranks[0]["float64"].round_trips <= 3 and ranks[0]["header only"].round_trips <= 2


def test_a_size_mismatch_is_refused_on_both_ranks_and_the_group_still_works(ranks: dict[int, dict[str, Any]]) -> None:
    for rank in (0, 1):
        kind, message = ranks[rank]["mismatch"]
        assert kind == "ConfigError" and "\n" not in message
        assert "same message size" in message
    assert ranks[0]["after mismatch"].round_trips == 2


class _Group:
    """Enough of a process group for the argument checks, which run before any message."""

    def __init__(self, rank: int = 0, size: int = 2) -> None:
        self._rank, self._size = rank, size

    def rank(self) -> int:
        return self._rank

    def size(self) -> int:
        return self._size

    def send(self, tensors: Any, dst: int, tag: int) -> Any:
        raise AssertionError("no message may be sent for refused arguments")

    recv = send


@pytest.mark.parametrize(
    "group, kwargs, key",
    [
        (_Group(size=3), {}, "group"),
        (_Group(), dict(rank=1), "rank"),
        (_Group(), dict(rank=True), "rank"),
        (_Group(), dict(numel=-1), "numel"),
        (_Group(), dict(numel=2.5), "numel"),
        (_Group(), dict(dtype="float32"), "dtype"),
        (_Group(), dict(round_trips=0), "round_trips"),
        (_Group(), dict(round_trips=True), "round_trips"),
        (_Group(), dict(min_seconds=-1.0), "min_seconds"),
        (_Group(), dict(min_seconds=math.inf), "min_seconds"),
        (_Group(), dict(min_seconds=math.nan), "min_seconds"),
    ],
)
def test_bad_arguments_are_refused_in_one_line(group: _Group, kwargs: dict[str, Any], key: str) -> None:
    arguments = dict(rank=0, numel=10) | kwargs
    with pytest.raises(ConfigError) as refused:
        measure_link(group, **arguments)
    assert refused.value.key == key and "\n" not in str(refused.value)


def test_link_fraction() -> None:
    link = LinkMeasurement(message_bytes=100, round_trips=10, seconds=1.0)
    assert link.bytes_per_s == 2000.0
    assert link_fraction(1000.0, link) == 0.5
    for bad in (0, -1.0, math.nan, math.inf, "fast"):
        with pytest.raises(ConfigError, match="transport_bytes_per_s"):
            link_fraction(bad, link)
    with pytest.raises(ConfigError, match="link="):
        link_fraction(1.0, None)  # type: ignore[arg-type]
