"""The data layer: delay distributions, the throttle and background queue, the resumable pipeline.

No Lightning Trainer here. Nothing asserts on wall-clock durations: tests check counts, orders
and states; "eventually" conditions are polled against a deadline of a few seconds.
"""

from __future__ import annotations

import copy
import gc
import math
import threading
import time
from collections import Counter
from typing import Any, Callable, Dict, List, Optional

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler
from torchdata.nodes import BaseNode

from lightning_echo.core.delays import DELAY_NAMES, DelayDistribution, unit_mean_delay
from lightning_echo.data.background import (
    BackgroundQueue,
    StepTimeMeter,
    Throttle,
    ThrottleSpec,
    _DelayPlan,
    find_ready_probe,
)
from lightning_echo.data.nodes import Augment, IndexBatches, MapNode, ShardedIterable, fetch_batch
from lightning_echo.data.pipeline import DataPipeline, throttle, throttled_loader
from lightning_echo.errors import ConfigError

THREAD_PREFIX = "lightning_echo-"
DEADLINE_S = 5.0


# -- helpers -------------------------------------------------------------------------------
def _echo_threads() -> set:
    return {t for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX) and t.is_alive()}


def _eventually(condition: Callable[[], bool], deadline_s: float = DEADLINE_S) -> bool:
    """Poll ``condition`` until it holds or the deadline passes; return its last value."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.01)
    return bool(condition())


def _no_new_threads(before: set) -> bool:
    """True once every ``lightning_echo-*`` thread started after ``before`` was taken has ended."""
    return _eventually(lambda: not (_echo_threads() - before))


@pytest.fixture
def threads_before() -> set:
    """The pipeline threads alive before the test (another test file may own some)."""
    gc.collect()
    return _echo_threads()


def _dataset(n: int) -> TensorDataset:
    """Examples identified by their index: x = index, y = 10 * index."""
    x = torch.arange(n)
    return TensorDataset(x, 10 * x)


def _ids(batches: List[Any]) -> List[int]:
    return [int(i) for batch in batches for i in batch[0]]


def _as_lists(batches: List[Any]) -> List[List[List[float]]]:
    return [[t.tolist() for t in batch] for batch in batches]


class ListNode(BaseNode):
    """Items of a list, with state ``{"i": next position}``."""

    def __init__(self, items: List[Any]) -> None:
        super().__init__()
        self.items = list(items)
        self._i = 0

    def reset(self, initial_state: Optional[Dict[str, Any]] = None) -> None:
        super().reset(initial_state)
        self._i = int(initial_state["i"]) if initial_state is not None else 0

    def next(self) -> Any:
        if self._i >= len(self.items):
            raise StopIteration
        item = self.items[self._i]
        self._i += 1
        return item

    def get_state(self) -> Dict[str, Any]:
        return {"i": self._i}


class CountingNode(BaseNode):
    """An endless source that counts how many items were pulled from it."""

    def __init__(self) -> None:
        super().__init__()
        self.pulled = 0

    def reset(self, initial_state: Optional[Dict[str, Any]] = None) -> None:
        super().reset(initial_state)

    def next(self) -> torch.Tensor:
        self.pulled += 1
        return torch.tensor([self.pulled])

    def get_state(self) -> Dict[str, Any]:
        return {"pulled": self.pulled}


class GatedNode(BaseNode):
    """Yields items only once ``gate`` is set (so the producer has nothing before that)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self._i = 0

    def reset(self, initial_state: Optional[Dict[str, Any]] = None) -> None:
        super().reset(initial_state)

    def next(self) -> int:
        while not self.gate.wait(0.01):
            pass
        self._i += 1
        return self._i

    def get_state(self) -> Dict[str, Any]:
        return {"i": self._i}


class FailingNode(BaseNode):
    """Yields 0, 1, 2 and raises ``ValueError("boom")`` at item 3."""

    def __init__(self, fail_at: int = 3) -> None:
        super().__init__()
        self.fail_at = fail_at
        self._i = 0

    def reset(self, initial_state: Optional[Dict[str, Any]] = None) -> None:
        super().reset(initial_state)
        self._i = 0

    def next(self) -> torch.Tensor:
        if self._i == self.fail_at:
            raise ValueError("boom")
        self._i += 1
        return torch.tensor([self._i - 1])

    def get_state(self) -> Dict[str, Any]:
        return {"i": self._i}


def _take_stream(pipeline: DataPipeline, k: int):
    """Consume ``k`` batches of the endless stream of epochs; return them and the live iterator."""
    seen: List[Any] = []
    it = iter(pipeline)
    while len(seen) < k:
        try:
            seen.append(next(it))
        except StopIteration:
            it = iter(pipeline)
    return seen, it


def _drain_stream(pipeline: DataPipeline, it, n: int) -> List[Any]:
    """``n`` more batches of the stream: the rest of ``it``, then whole new epochs."""
    out: List[Any] = list(it) if it is not None else []
    while len(out) < n:
        out += list(pipeline)
    return out[:n]


# -- delay distributions -------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, param",
    [
        ("exponential", None),
        ("shifted_exponential", None),
        ("shifted_exponential", 0.8),
        ("pareto", None),
        ("pareto", 4.0),
        ("lognormal", None),
        ("lognormal", 0.25),
    ],
)
def test_unit_mean_delays_have_mean_one(name: str, param: Optional[float]) -> None:
    dist = unit_mean_delay(name, param)
    assert dist.mean == pytest.approx(1.0)
    draws = dist.sample(torch.Generator().manual_seed(11), 40000)
    assert draws.shape == (40000,) and draws.dtype == torch.float64
    assert bool((draws > 0).all())
    assert draws.mean().item() == pytest.approx(1.0, rel=0.05)


@pytest.mark.parametrize(
    "dist",
    [
        DelayDistribution("exponential", scale=2.5),
        DelayDistribution("shifted_exponential", scale=1.7, shift=0.3),
        DelayDistribution("pareto", scale=0.5, shape=4.0),
        DelayDistribution("lognormal", scale=2.0, sigma=0.3),
    ],
    ids=lambda d: d.name,
)
def test_delay_mean_property_matches_samples(dist: DelayDistribution) -> None:
    draws = dist.sample(torch.Generator().manual_seed(5), 40000)
    assert draws.mean().item() == pytest.approx(dist.mean, rel=0.05)
    if dist.name == "shifted_exponential":
        assert draws.min().item() >= dist.shift
    if dist.name == "pareto":
        assert draws.min().item() >= dist.scale


@pytest.mark.parametrize("name", DELAY_NAMES)
def test_delay_draws_are_seeded(name: str) -> None:
    dist = unit_mean_delay(name)
    a = dist.sample(torch.Generator().manual_seed(3), 100)
    b = dist.sample(torch.Generator().manual_seed(3), 100)
    c = dist.sample(torch.Generator().manual_seed(4), 100)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    one = dist.sample(torch.Generator().manual_seed(3))
    assert one.dim() == 0


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"name": "gamma"}, "distribution"),
        ({"name": "exponential", "scale": 0.0}, "scale"),
        ({"name": "exponential", "scale": float("inf")}, "scale"),
        ({"name": "shifted_exponential", "shift": -0.1}, "shift"),
        ({"name": "pareto", "shape": 1.0}, "shape"),
        ({"name": "lognormal", "sigma": -0.5}, "sigma"),
    ],
)
def test_bad_delay_distribution_names_the_parameter(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=f"^{key}="):
        DelayDistribution(**kwargs)


@pytest.mark.parametrize(
    "name, param, key",
    [
        ("uniform", None, "jitter"),
        ("shifted_exponential", 1.0, "jitter_param"),
        ("shifted_exponential", -0.2, "jitter_param"),
        ("pareto", 1.0, "jitter_param"),
        ("lognormal", -1.0, "jitter_param"),
    ],
)
def test_bad_unit_mean_delay_names_the_parameter(name: str, param: Optional[float], key: str) -> None:
    with pytest.raises(ConfigError, match=f"^{key}="):
        unit_mean_delay(name, param)


# -- ThrottleSpec ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({}, "slowdown"),
        ({"seconds_per_batch": 0.1, "slowdown": 2.0}, "slowdown"),
        ({"seconds_per_batch": -0.1}, "seconds_per_batch"),
        ({"seconds_per_batch": float("nan")}, "seconds_per_batch"),
        ({"slowdown": -1.0}, "slowdown"),
        ({"slowdown": 0.0}, "slowdown"),
        ({"seconds_per_batch": 0.1, "jitter": "uniform"}, "jitter"),
        ({"seconds_per_batch": 0.1, "jitter": "pareto", "jitter_param": 0.5}, "jitter_param"),
        ({"seconds_per_batch": 0.1, "queue_size": 0}, "queue_size"),
    ],
)
def test_throttle_spec_validation_names_the_setting(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=f"^{key}="):
        ThrottleSpec(**kwargs)


def test_throttle_spec_accepts_valid_settings() -> None:
    ThrottleSpec(seconds_per_batch=0.0)
    ThrottleSpec(slowdown=4, jitter="lognormal", jitter_param=0.3, queue_size=1)


def test_slowdown_throttle_needs_a_meter() -> None:
    with pytest.raises(ConfigError, match="^slowdown="):
        Throttle(ListNode([1]), ThrottleSpec(slowdown=2.0))


def test_throttled_loader_rejects_jitter_without_throttle() -> None:
    with pytest.raises(ConfigError, match="^jitter="):
        throttled_loader(_dataset(4), 2, jitter="exponential")


# -- the delay plan --------------------------------------------------------------------------
def test_delay_plan_fixed_seconds_per_batch() -> None:
    plan = _DelayPlan(ThrottleSpec(seconds_per_batch=0.25), meter=None)
    stop = threading.Event()
    assert [plan.next_delay(stop) for _ in range(5)] == [0.25] * 5


def test_delay_plan_slowdown_uses_median_step_time() -> None:
    meter = StepTimeMeter(window=4)
    plan = _DelayPlan(ThrottleSpec(slowdown=3.0), meter)
    stop = threading.Event()
    assert plan.next_delay(stop) == 0.0  # first item: no measurement yet, nothing to wait for
    for seconds in (0.1, 0.5, 0.2):
        meter.record(seconds)
    assert meter.estimate() == pytest.approx(0.2)
    assert plan.next_delay(stop) == pytest.approx(0.6)
    for seconds in (0.4, 0.4, 0.4):  # window of 4 keeps 0.2, 0.4, 0.4, 0.4
        meter.record(seconds)
    assert plan.next_delay(stop) == pytest.approx(1.2)


def test_delay_plan_waits_for_the_first_measurement() -> None:
    meter = StepTimeMeter()
    plan = _DelayPlan(ThrottleSpec(slowdown=2.0), meter)
    stop = threading.Event()
    assert plan.next_delay(stop) == 0.0
    result: List[float] = []
    waiter = threading.Thread(target=lambda: result.append(plan.next_delay(stop)), daemon=True)
    waiter.start()
    time.sleep(0.05)
    assert result == []  # no measurement yet: the second item cannot be planned
    meter.record(0.125)
    waiter.join(timeout=DEADLINE_S)
    assert result == [pytest.approx(0.25)]


def test_delay_plan_stop_ends_the_wait() -> None:
    plan = _DelayPlan(ThrottleSpec(slowdown=2.0), StepTimeMeter())
    stop = threading.Event()
    plan.next_delay(stop)
    stop.set()
    assert plan.next_delay(stop) == 0.0


def test_step_time_meter_intervals() -> None:
    meter = StepTimeMeter()
    assert meter.estimate() is None
    meter.on_request()  # nothing handed out yet: no interval
    assert meter.estimate() is None
    meter.on_return()
    meter.on_request()
    assert meter.estimate() is not None and meter.estimate() >= 0
    meter.pause()
    meter.on_request()  # paused: no new interval
    assert len(meter._samples) == 1


@pytest.mark.parametrize("jitter", DELAY_NAMES)
def test_delay_plan_jitter_has_mean_one_and_is_seeded(jitter: str) -> None:
    stop = threading.Event()

    def delays(seed: int, n: int) -> torch.Tensor:
        plan = _DelayPlan(ThrottleSpec(seconds_per_batch=2.0, jitter=jitter, seed=seed), None)
        return torch.tensor([plan.next_delay(stop) for _ in range(n)], dtype=torch.float64)

    a = delays(7, 8000)
    assert bool((a > 0).all())
    assert (a / 2.0).mean().item() == pytest.approx(1.0, rel=0.06)
    assert torch.equal(a[:50], delays(7, 50))
    assert not torch.equal(a[:50], delays(8, 50))


# -- ordering, completeness, length ----------------------------------------------------------
@pytest.mark.parametrize("throttled", [True, False])
def test_epoch_yields_every_example_once(throttled: bool) -> None:
    kwargs = {"seconds_per_batch": 0.0} if throttled else {}
    pipeline = throttled_loader(_dataset(23), 5, seed=1, **kwargs)
    assert len(pipeline) == 5
    batches = list(pipeline)
    assert len(batches) == 5
    assert [len(b[0]) for b in batches] == [5, 5, 5, 5, 3]
    ids = _ids(batches)
    assert sorted(ids) == list(range(23))
    assert ids != list(range(23))  # shuffled
    for x, y in batches:
        assert torch.equal(y, 10 * x)


def test_drop_last_length() -> None:
    pipeline = throttled_loader(_dataset(23), 5, drop_last=True, seconds_per_batch=0.0)
    assert len(pipeline) == 4
    batches = list(pipeline)
    assert len(batches) == 4 and all(len(b[0]) == 5 for b in batches)
    assert len(set(_ids(batches))) == 20
    assert len(throttled_loader(_dataset(20), 5, drop_last=True)) == 4
    assert len(throttled_loader(_dataset(20), 5)) == 4
    assert len(throttled_loader(_dataset(21), 5)) == 5


def test_unshuffled_order() -> None:
    pipeline = throttled_loader(_dataset(10), 4, shuffle=False, seconds_per_batch=0.0)
    assert _ids(list(pipeline)) == list(range(10))
    assert _ids(list(pipeline)) == list(range(10))


def test_epochs_differ_and_seed_fixes_orders() -> None:
    def orders(seed: int) -> List[List[int]]:
        pipeline = throttled_loader(_dataset(30), 4, seed=seed, seconds_per_batch=0.0)
        return [_ids(list(pipeline)) for _ in range(3)]

    first = orders(0)
    for epoch in first:
        assert sorted(epoch) == list(range(30))
    assert first[0] != first[1] and first[1] != first[2]
    assert orders(0) == first
    assert orders(1) != first


# -- resume -----------------------------------------------------------------------------------
def _make_resumable(augment: Optional[Callable] = None) -> DataPipeline:
    return throttled_loader(_dataset(17), 3, seed=4, seconds_per_batch=0.0, queue_size=2, augment=augment)


@pytest.mark.parametrize("cut", [0, 1, 3, 5, 6, 7, 8, 10])  # 6 batches per epoch: 6 is the boundary
def test_resume_yields_the_same_remaining_batches(cut: int, threads_before: set) -> None:
    original = _make_resumable()
    total = 2 * len(original) + 3
    _, it = _take_stream(original, cut)
    state = copy.deepcopy(original.state_dict())
    expected = _drain_stream(original, it, total - cut)

    restored = _make_resumable()
    restored.load_state_dict(state)
    got = _drain_stream(restored, None, total - cut)
    assert _as_lists(got) == _as_lists(expected)
    original.close()
    restored.close()
    assert _no_new_threads(threads_before)


def test_resume_from_state_of_a_finished_epoch_starts_the_next() -> None:
    original = _make_resumable()
    first = list(original)
    state = copy.deepcopy(original.state_dict())
    second = list(original)
    restored = _make_resumable()
    restored.load_state_dict(state)
    resumed = list(restored)
    assert _as_lists(resumed) == _as_lists(second)
    assert _ids(first) != _ids(second)


def _augment(batch: Any, generator: torch.Generator) -> Any:
    x, y = batch
    return x.double() + torch.rand(x.shape, generator=generator, dtype=torch.float64), y


@pytest.mark.parametrize("cut", [2, 6, 9])
def test_augment_is_reproducible_across_restore(cut: int) -> None:
    original = _make_resumable(augment=_augment)
    total = 2 * len(original)
    before, it = _take_stream(original, cut)
    state = copy.deepcopy(original.state_dict())
    expected = _drain_stream(original, it, total - cut)
    restored = _make_resumable(augment=_augment)
    restored.load_state_dict(state)
    got = _drain_stream(restored, None, total - cut)
    assert _as_lists(got) == _as_lists(expected)
    noise = [x - y.double() / 10 for x, y in before + expected]
    assert all(bool(((n >= 0) & (n < 1)).all()) for n in noise)
    flat = torch.cat(noise)
    assert len(set(flat.tolist())) == len(flat)  # every draw is a new one


def test_augment_node_reseeds_per_batch_index() -> None:
    batches = [(torch.zeros(2), torch.zeros(2)) for _ in range(5)]
    a = Augment(ListNode(batches), _augment, seed=3)
    first = [x for x, _ in a]
    b = Augment(ListNode(batches), _augment, seed=3)
    b.reset({"source": {"i": 2}, "count": 2})
    assert [x.tolist() for x, _ in b] == [x.tolist() for x in first[2:]]
    c = Augment(ListNode(batches), _augment, seed=4)
    assert [x.tolist() for x, _ in c] != [x.tolist() for x in first]


# -- sharding ----------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [20, 21])
def test_two_shards_cover_the_data_like_distributed_sampler(n: int) -> None:
    shards = [throttled_loader(_dataset(n), 4, seed=2, rank=r, world_size=2, seconds_per_batch=0.0) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == math.ceil(math.ceil(n / 2) / 4)
    for _epoch in range(2):
        ids = [_ids(list(shard)) for shard in shards]
        assert len(ids[0]) == len(ids[1]) == math.ceil(n / 2)
        assert set(ids[0]) | set(ids[1]) == set(range(n))
        counts = Counter(ids[0] + ids[1])
        assert sum(counts.values()) == 2 * math.ceil(n / 2)
        duplicated = [i for i, c in counts.items() if c > 1]
        assert len(duplicated) == (n % 2)  # padded by one example when n is odd
        for shard in ids:
            assert len(set(shard)) == len(shard)  # no repeat inside a shard


@pytest.mark.parametrize("n", [10, 11])
def test_unshuffled_shards_equal_distributed_sampler(n: int) -> None:
    for rank in (0, 1):
        node = IndexBatches(n, 3, shuffle=False, rank=rank, world_size=2)
        ours = [int(i) for batch in node for i in batch]
        sampler = DistributedSampler(range(n), num_replicas=2, rank=rank, shuffle=False)
        assert ours == list(sampler)


@pytest.mark.parametrize("n, world_size", [(7, 2), (10, 3), (9, 3)])
def test_sharded_iterable_gives_equal_counts(n: int, world_size: int) -> None:
    shards = [list(ShardedIterable(range(n), rank, world_size)) for rank in range(world_size)]
    assert all(len(s) == n // world_size for s in shards)
    assert all(len(ShardedIterable(range(n), rank, world_size)) == n // world_size for rank in range(world_size))
    for rank, shard in enumerate(shards):
        assert shard == list(range(rank, world_size * (n // world_size), world_size))
    with pytest.raises(ConfigError, match="^world_size="):
        ShardedIterable(range(n), 0, 0)


def test_fetch_batch_uses_collate_for_plain_datasets() -> None:
    data = [{"x": torch.tensor([float(i)]), "y": i} for i in range(6)]
    batch = fetch_batch(data, torch.tensor([4, 1]))
    assert batch["x"].tolist() == [[4.0], [1.0]] and batch["y"].tolist() == [4, 1]
    x, y = fetch_batch(_dataset(6), torch.tensor([5, 0]))
    assert x.tolist() == [5, 0] and y.tolist() == [50, 0]


# -- throttle(loader) ---------------------------------------------------------------------------
def test_throttle_over_a_dataloader_yields_its_batches() -> None:
    loader = DataLoader(_dataset(11), batch_size=4, shuffle=False)
    pipeline = throttle(loader, seconds_per_batch=0.0)
    assert len(pipeline) == len(loader) == 3
    for _epoch in range(2):
        got = list(pipeline)
        expected = list(loader)
        assert len(got) == len(expected)
        for a, b in zip(got, expected):
            assert all(torch.equal(u, v) for u, v in zip(a, b))


@pytest.mark.parametrize("cut", [1, 2, 3])
def test_throttle_over_a_dataloader_resumes(cut: int) -> None:
    def make() -> DataPipeline:
        return throttle(DataLoader(_dataset(11), batch_size=2, shuffle=False), seconds_per_batch=0.0)

    original = make()
    _, it = _take_stream(original, cut)
    state = copy.deepcopy(original.state_dict())
    expected = _drain_stream(original, it, 8)
    restored = make()
    restored.load_state_dict(state)
    assert _as_lists(_drain_stream(restored, None, 8)) == _as_lists(expected)


def test_throttle_over_an_unsized_iterable_has_no_length() -> None:
    pipeline = throttle(iter([torch.zeros(1)]), seconds_per_batch=0.0)
    with pytest.raises(TypeError):
        len(pipeline)


# -- the background queue ---------------------------------------------------------------------
@pytest.mark.timeout(30)
@pytest.mark.parametrize("queue_size", [1, 3])
def test_background_production_is_bounded(queue_size: int, threads_before: set) -> None:
    source = CountingNode()
    node = BackgroundQueue(source, queue_size=queue_size)
    node.reset()
    try:
        assert _eventually(lambda: source.pulled >= queue_size + 1)
        time.sleep(0.3)
        assert source.pulled <= queue_size + 1  # queue full plus the one item the producer holds
        assert [int(next(node)) for _ in range(5)] == [1, 2, 3, 4, 5]
        assert node.items_delivered == 5
    finally:
        node.close()
    assert _no_new_threads(threads_before)


@pytest.mark.timeout(30)
def test_throttle_production_is_bounded() -> None:
    source = CountingNode()
    node = Throttle(source, ThrottleSpec(seconds_per_batch=0.0, queue_size=2))
    node.reset()
    try:
        time.sleep(0.3)
        assert source.pulled <= 3
    finally:
        node.close()


@pytest.mark.timeout(30)
def test_ready_reports_a_queued_item(threads_before: set) -> None:
    source = GatedNode()
    node = BackgroundQueue(source, queue_size=2)
    assert node.ready() is False  # not started
    node.reset()
    try:
        assert node.ready() is False
        assert node.thread_alive
        source.gate.set()
        assert _eventually(node.ready)
        assert next(node) == 1
        assert find_ready_probe(MapNode(node, lambda x: x)) == node.ready
    finally:
        source.gate.set()
        node.close()
    assert not node.thread_alive
    assert _no_new_threads(threads_before)


def test_ready_is_true_at_the_end_of_the_data() -> None:
    node = BackgroundQueue(ListNode([]), queue_size=2)
    node.reset()
    assert _eventually(node.ready)
    with pytest.raises(StopIteration):
        next(node)
    with pytest.raises(StopIteration):
        next(node)


def test_find_ready_probe_walks_sources() -> None:
    assert find_ready_probe(MapNode(ListNode([1]), lambda x: x)) is None
    queue_node = BackgroundQueue(ListNode([1]))
    assert find_ready_probe(MapNode(MapNode(queue_node, str), str)) == queue_node.ready


@pytest.mark.timeout(30)
def test_failure_reaches_the_consumer(threads_before: set) -> None:
    node = BackgroundQueue(FailingNode(fail_at=3), queue_size=2)
    node.reset()
    assert [int(next(node)) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(ValueError, match="boom") as raised:
        next(node)
    assert any("background" in note for note in getattr(raised.value, "__notes__", []))
    assert _no_new_threads(threads_before)
    with pytest.raises(StopIteration):
        next(node)


@pytest.mark.timeout(30)
def test_failure_reaches_the_pipeline_consumer(threads_before: set) -> None:
    pipeline = DataPipeline(FailingNode(fail_at=3), throttle=ThrottleSpec(seconds_per_batch=0.0))
    got: List[int] = []
    with pytest.raises(ValueError, match="boom"):
        for batch in pipeline:
            got.append(int(batch))
    assert got == [0, 1, 2]
    assert _no_new_threads(threads_before)


# -- thread lifetime ------------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_thread_ends_with_the_epoch(threads_before: set) -> None:
    pipeline = throttled_loader(_dataset(12), 4, seconds_per_batch=0.0)
    assert len(list(pipeline)) == 3
    assert _no_new_threads(threads_before)
    assert not pipeline.queue_node.thread_alive


@pytest.mark.timeout(30)
def test_close_stops_the_thread_and_iteration_restarts(threads_before: set) -> None:
    pipeline = throttled_loader(_dataset(12), 4, seconds_per_batch=0.0)
    it = iter(pipeline)
    next(it)
    assert _echo_threads() - threads_before
    pipeline.close()
    assert not pipeline.queue_node.thread_alive
    assert _no_new_threads(threads_before)
    pipeline.close()  # idempotent
    assert sorted(_ids(list(pipeline))) == list(range(12))  # a new epoch starts a new thread
    assert _no_new_threads(threads_before)


@pytest.mark.timeout(30)
def test_lightning_teardown_stops_the_thread(threads_before: set) -> None:
    pipeline = throttled_loader(_dataset(12), 2, seconds_per_batch=0.0)
    it = iter(pipeline)
    next(it)
    assert pipeline.queue_node.thread_alive
    pipeline._iterator = None
    assert pipeline._iterator is None
    assert not pipeline.queue_node.thread_alive
    assert _no_new_threads(threads_before)


def _start_and_abandon() -> None:
    pipeline = throttled_loader(_dataset(40), 2, seconds_per_batch=0.0, queue_size=2)
    it = iter(pipeline)
    next(it)
    next(it)
    assert pipeline.queue_node.thread_alive


@pytest.mark.timeout(30)
def test_thread_ends_when_the_pipeline_is_collected(threads_before: set) -> None:
    _start_and_abandon()
    gc.collect()
    assert _no_new_threads(threads_before)


@pytest.mark.timeout(30)
def test_wait_s_and_items_delivered_are_counted() -> None:
    pipeline = throttled_loader(_dataset(8), 2, seconds_per_batch=0.0)
    assert pipeline.wait_s == 0.0
    list(pipeline)
    assert pipeline.queue_node.items_delivered == 4
    assert pipeline.wait_s >= 0.0
    assert throttled_loader(_dataset(8), 2).wait_s == 0.0


def test_sharded_dataloader_length_with_drop_last(monkeypatch) -> None:
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_echo.data import pipeline

    monkeypatch.setattr(pipeline, "distributed_rank_and_size", lambda: (0, 2))
    for n, batch_size, drop_last in [(6, 4, True), (6, 4, False), (21, 4, True), (21, 4, False)]:
        loader = pipeline.throttle(DataLoader(TensorDataset(torch.arange(n)), batch_size=batch_size, drop_last=drop_last))
        assert len(loader) == len(list(loader)), (n, batch_size, drop_last)
