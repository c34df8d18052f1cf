"""The echo nodes (BatchEcho, ExampleEcho) and the batch helpers, without Lightning."""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any, Dict, List, Optional, Tuple

import pytest
import torch
from torchdata.nodes import BaseNode, Loader

from lightning_echo.core.batches import batch_size_of, select_rows
from lightning_echo.echo.node import BatchEcho, EchoInfo, ExampleEcho
from lightning_echo.errors import ConfigError


class ListNode(BaseNode):
    """Items of a list, with state ``{"i": next position}``."""

    def __init__(self, items: List[Any]) -> None:
        super().__init__()
        self.items = list(items)
        self._i = 0
        self.pulled = 0

    def reset(self, initial_state: Optional[Dict[str, Any]] = None) -> None:
        super().reset(initial_state)
        self._i = int(initial_state["i"]) if initial_state is not None else 0

    def next(self) -> Any:
        if self._i >= len(self.items):
            raise StopIteration
        item = self.items[self._i]
        self._i += 1
        self.pulled += 1
        return item

    def get_state(self) -> Dict[str, Any]:
        return {"i": self._i}


class ProbedNode(ListNode):
    """A ListNode with a ``ready()`` probe that always answers ``is_ready``."""

    def __init__(self, items: List[Any], is_ready: bool) -> None:
        super().__init__(items)
        self.is_ready = is_ready
        self.probes = 0

    def ready(self) -> bool:
        self.probes += 1
        return self.is_ready


def _batches(n: int, size: int = 4) -> List[torch.Tensor]:
    """``n`` distinct batches; batch ``i`` holds ``size`` rows with values ``i * 100 + row``."""
    return [torch.arange(size) + 100 * i for i in range(n)]


def _serve_all(node: BaseNode) -> List[Tuple[Any, EchoInfo]]:
    node.reset()
    return [(item, node.last_info) for item in node]


# -- BatchEcho: fixed factors ------------------------------------------------------------------
def test_batch_echo_integer_factor_serves_each_batch_three_times() -> None:
    source = _batches(5)
    served = _serve_all(BatchEcho(ListNode(source), factor=3))
    assert len(served) == 15
    for i, fresh in enumerate(source):
        group = served[3 * i : 3 * i + 3]
        assert all(item is fresh for item, _ in group)
        infos = [info for _, info in group]
        assert [info.repeat for info in infos] == [0, 1, 2]
        assert [info.fresh_samples for info in infos] == [4, 0, 0]
        assert [info.samples for info in infos] == [4, 4, 4]
        assert [info.same_as_previous for info in infos] == [False, True, True]
        assert [info.is_echo for info in infos] == [False, True, True]
        assert all(info.fresh_index == i for info in infos)


def test_batch_echo_factor_one_is_a_passthrough() -> None:
    source = _batches(4)
    served = _serve_all(BatchEcho(ListNode(source), factor=1))
    assert [item for item, _ in served] == source
    assert all(info.repeat == 0 and not info.is_echo for _, info in served)


def _serves_per_batch(factor: float, seed: int, n: int) -> List[int]:
    node = BatchEcho(ListNode(_batches(n, size=1)), factor=factor, seed=seed)
    counts: Counter = Counter()
    previous: Optional[EchoInfo] = None
    for _ in node:
        info = node.last_info
        counts[info.fresh_index] += 1
        if previous is not None and info.fresh_index == previous.fresh_index:
            assert info.repeat == previous.repeat + 1 and info.same_as_previous
        else:
            assert info.repeat == 0 and not info.same_as_previous
        previous = info
    return [counts[i] for i in range(n)]


def test_batch_echo_non_integer_factor() -> None:
    serves = _serves_per_batch(2.5, seed=0, n=2000)
    assert set(serves) == {2, 3}
    assert abs(sum(serves) / len(serves) - 2.5) < 0.1
    assert _serves_per_batch(2.5, seed=0, n=2000) == serves
    assert _serves_per_batch(2.5, seed=1, n=2000) != serves


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"factor": 0.5}, "factor"),
        ({"factor": "twice"}, "factor"),
        ({"factor": float("inf")}, "factor"),
        ({"factor": 2, "max_factor": 0}, "max_factor"),
        ({"factor": 2, "seed": -1}, "seed"),
        ({"factor": 2, "max_fresh_batches": 0}, "max_fresh_batches"),
        ({"factor": 2, "max_fresh_samples": -3}, "max_fresh_samples"),
    ],
)
def test_batch_echo_bad_arguments_name_the_setting(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=f"^{key}="):
        BatchEcho(ListNode(_batches(1)), **kwargs)


# -- BatchEcho: factor="auto" ------------------------------------------------------------------
def test_auto_factor_never_echoes_when_fresh_batches_are_ready() -> None:
    source = ProbedNode(_batches(6), is_ready=True)
    served = _serve_all(BatchEcho(source, factor="auto", max_factor=4))
    assert [item for item, _ in served] == source.items
    assert all(info.repeat == 0 for _, info in served)
    assert source.probes > 0


def test_auto_factor_echoes_up_to_max_factor_when_nothing_is_ready() -> None:
    source = ProbedNode(_batches(5), is_ready=False)
    served = _serve_all(BatchEcho(source, factor="auto", max_factor=3))
    assert len(served) == 15
    for i, fresh in enumerate(source.items):
        group = served[3 * i : 3 * i + 3]
        assert all(item is fresh for item, _ in group)
        assert [info.repeat for _, info in group] == [0, 1, 2]


def test_auto_factor_asks_agree_and_follows_its_answer() -> None:
    calls: List[bool] = []

    def agree(local_ready: bool) -> bool:
        calls.append(local_ready)
        return True  # the other ranks have a fresh batch: take it

    source = ProbedNode(_batches(5), is_ready=False)
    served = _serve_all(BatchEcho(source, factor="auto", max_factor=4, agree=agree))
    assert [item for item, _ in served] == source.items
    assert calls and all(flag is False for flag in calls)

    calls.clear()
    source = ProbedNode(_batches(3), is_ready=True)
    served = _serve_all(BatchEcho(source, factor="auto", max_factor=2, agree=lambda r: calls.append(r) or False))
    assert len(served) == 6  # agree said "not ready": echo up to max_factor
    assert calls and all(flag is True for flag in calls)


def test_auto_factor_without_ready_probe_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="^factor="):
        BatchEcho(ListNode(_batches(2)), factor="auto")


# -- BatchEcho: budget -------------------------------------------------------------------------
def test_budget_of_fresh_batches() -> None:
    source = ListNode(_batches(20))
    node = BatchEcho(source, factor=2, max_fresh_batches=5)
    served = _serve_all(node)
    assert len(served) == 10
    assert [info.fresh_index for _, info in served] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert node.budget_exhausted
    assert source.pulled == 5
    with pytest.raises(StopIteration):
        next(node)


def test_budget_of_fresh_samples() -> None:
    source = ListNode(_batches(20, size=4))
    node = BatchEcho(source, factor=2, max_fresh_samples=10)
    served = _serve_all(node)
    assert len(served) == 6  # 4 + 4 + 4 >= 10 examples: three fresh batches, each served twice
    assert sum(info.fresh_samples for _, info in served) == 12
    assert node.budget_exhausted
    assert source.pulled == 3


def test_no_budget_ends_with_the_source() -> None:
    node = BatchEcho(ListNode(_batches(3)), factor=2)
    assert len(_serve_all(node)) == 6
    assert not node.budget_exhausted


# -- BatchEcho: state ----------------------------------------------------------------------------
def _echo_loader(factor: Any, n: int = 9, **kwargs: Any) -> Tuple[Loader, BatchEcho]:
    node = BatchEcho(ListNode(_batches(n, size=2)), factor=factor, seed=5, **kwargs)
    return Loader(node), node


def _record(iterator, node: BatchEcho, k: Optional[int] = None) -> List[Tuple[List[int], int, int]]:
    """``(content, fresh_index, repeat)`` of the next ``k`` items (all of them when None)."""
    out = []
    for item in iterator:
        info = node.last_info
        out.append((item.tolist(), info.fresh_index, info.repeat))
        if k is not None and len(out) == k:
            break
    return out


@pytest.mark.parametrize("factor", [3, 2.5])
def test_batch_echo_resumes_inside_an_echo_group(factor: Any) -> None:
    loader, node = _echo_loader(factor)
    uninterrupted = _record(iter(loader), node)
    total = Counter(fresh for _, fresh, _ in uninterrupted)
    assert len(total) == 9

    for cut in range(1, len(uninterrupted)):
        loader, node = _echo_loader(factor)
        it = iter(loader)
        before = _record(it, node, cut)
        state = copy.deepcopy(loader.state_dict())
        rest = _record(it, node)
        assert before + rest == uninterrupted

        restored_loader, restored_node = _echo_loader(factor)
        restored_loader.load_state_dict(state)
        resumed = _record(iter(restored_loader), restored_node)
        assert [(c, r) for c, _, r in resumed] == [(c, r) for c, _, r in rest], f"cut={cut}"
        assert resumed == rest, f"cut={cut}"
        assert Counter(fresh for _, fresh, _ in before + resumed) == total


def test_batch_echo_resume_keeps_the_budget() -> None:
    loader, node = _echo_loader(2, max_fresh_batches=4)
    uninterrupted = _record(iter(loader), node)
    assert len(uninterrupted) == 8
    loader, node = _echo_loader(2, max_fresh_batches=4)
    it = iter(loader)
    before = _record(it, node, 3)
    state = copy.deepcopy(loader.state_dict())
    restored_loader, restored_node = _echo_loader(2, max_fresh_batches=4)
    restored_loader.load_state_dict(state)
    assert before + _record(iter(restored_loader), restored_node) == uninterrupted
    assert restored_node.budget_exhausted


# -- ExampleEcho ----------------------------------------------------------------------------------
def _tuple_batches(n: int, size: int) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    x = torch.arange(n)
    return [(x[i : i + size], 10 * x[i : i + size]) for i in range(0, n, size)]


def _dict_batches(n: int, size: int) -> List[Dict[str, torch.Tensor]]:
    return [{"x": x, "y": y} for x, y in _tuple_batches(n, size)]


@pytest.mark.parametrize("kind", ["tuple", "dict", "tensor"])
@pytest.mark.parametrize("shuffle_buffer", [8, 1000])
def test_example_echo_repeats_every_example(kind: str, shuffle_buffer: int) -> None:
    n, size, factor = 22, 4, 3
    batches: List[Any]
    if kind == "tuple":
        batches = _tuple_batches(n, size)
    elif kind == "dict":
        batches = _dict_batches(n, size)
    else:
        batches = [x for x, _ in _tuple_batches(n, size)]
    node = ExampleEcho(ListNode(batches), factor=factor, shuffle_buffer=shuffle_buffer, seed=1)
    served = _serve_all(node)

    ids: List[int] = []
    for out, _ in served:
        if kind == "tuple":
            assert isinstance(out, tuple) and len(out) == 2
            x, y = out
            assert torch.equal(y, 10 * x)
        elif kind == "dict":
            assert set(out) == {"x", "y"}
            x = out["x"]
            assert torch.equal(out["y"], 10 * x)
        else:
            x = out
        ids += x.tolist()
    assert Counter(ids) == {i: factor for i in range(n)}

    sizes = [batch_size_of(out) for out, _ in served]
    assert all(s == size for s in sizes[:-1]) and 0 < sizes[-1] <= size
    assert sum(info.fresh_samples for _, info in served) == n
    assert all(info.samples == s for (_, info), s in zip(served, sizes))


def test_example_echo_mixes_examples() -> None:
    batches = _tuple_batches(40, 4)
    served = _serve_all(ExampleEcho(ListNode(batches), factor=2, shuffle_buffer=64, seed=0))
    first = served[0][0][0].tolist()
    assert first not in ([0, 0, 1, 1], [0, 1, 2, 3])  # drawn at random from the buffer, not in order
    again = _serve_all(ExampleEcho(ListNode(batches), factor=2, shuffle_buffer=64, seed=0))
    assert [o[0].tolist() for o, _ in again] == [o[0].tolist() for o, _ in served]


def test_example_echo_non_integer_factor() -> None:
    n = 2000
    node = ExampleEcho(ListNode(_tuple_batches(n, 10)), factor=1.5, shuffle_buffer=200, seed=3)
    ids = [i for out, _ in _serve_all(node) for i in out[0].tolist()]
    counts = Counter(ids)
    assert set(counts) == set(range(n)) and set(counts.values()) == {1, 2}
    assert abs(len(ids) / n - 1.5) < 0.05


def test_example_echo_budget() -> None:
    node = ExampleEcho(ListNode(_tuple_batches(40, 4)), factor=2, shuffle_buffer=8, max_fresh_samples=10)
    served = _serve_all(node)
    ids = [i for out, _ in served for i in out[0].tolist()]
    assert Counter(ids) == {i: 2 for i in range(12)}  # three fresh batches reach the budget
    assert node.budget_exhausted


def test_example_echo_rejects_auto() -> None:
    with pytest.raises(ConfigError, match="^factor="):
        ExampleEcho(ListNode(_tuple_batches(4, 2)), factor="auto")
    with pytest.raises(ConfigError, match="^shuffle_buffer="):
        ExampleEcho(ListNode(_tuple_batches(4, 2)), factor=2, shuffle_buffer=0)


# -- batch helpers ----------------------------------------------------------------------------------
def test_batch_size_of() -> None:
    x = torch.zeros(5, 3)
    assert batch_size_of(x) == 5
    assert batch_size_of(torch.tensor(1.0)) == 1
    assert batch_size_of((x, torch.zeros(5))) == 5
    assert batch_size_of([torch.zeros(2), torch.zeros(7)]) == 2
    assert batch_size_of({"a": torch.zeros(4, 2), "b": torch.zeros(4)}) == 4
    assert batch_size_of({"nested": (torch.zeros(6),)}) == 6
    with pytest.raises(TypeError):
        batch_size_of("not a batch")
    with pytest.raises(TypeError):
        batch_size_of(())


def test_select_rows_keeps_the_structure() -> None:
    a = torch.arange(6).reshape(3, 2)
    b = 10 + torch.arange(6).reshape(3, 2)
    rows = select_rows([(a, 2), (b, 0), (a, 0)])
    assert rows.tolist() == [[4, 5], [10, 11], [0, 1]]

    tup = select_rows([((a, a[:, 0]), 1), ((b, b[:, 0]), 2)])
    assert isinstance(tup, tuple) and tup[0].tolist() == [[2, 3], [14, 15]] and tup[1].tolist() == [2, 14]

    lst = select_rows([([a, a[:, 1]], 0), ([b, b[:, 1]], 1)])
    assert isinstance(lst, list) and lst[0].tolist() == [[0, 1], [12, 13]] and lst[1].tolist() == [1, 13]

    dct = select_rows([({"x": a, "y": a[:, 0]}, 1), ({"x": b, "y": b[:, 0]}, 0)])
    assert set(dct) == {"x", "y"} and dct["x"].tolist() == [[2, 3], [10, 11]] and dct["y"].tolist() == [2, 10]

    with pytest.raises(TypeError):
        select_rows([("text", 0)])


def test_auto_echo_above_augment_without_background_stage_is_refused() -> None:
    from torchdata.nodes import IterableWrapper

    from lightning_echo.data.nodes import Augment

    source = Augment(IterableWrapper([torch.zeros(2, 3)] * 3), lambda batch, generator: batch)
    with pytest.raises(ConfigError, match="^factor='auto'"):
        BatchEcho(source, factor="auto")


def test_example_echo_small_buffer_still_gives_full_batches() -> None:
    from torchdata.nodes import IterableWrapper

    batches = [torch.arange(4 * i, 4 * i + 4) for i in range(8)]
    node = ExampleEcho(IterableWrapper(batches), factor=1.5, shuffle_buffer=1, seed=0)
    sizes = [len(batch) for batch in node]
    assert all(size == 4 for size in sizes[:-1]) and 1 <= sizes[-1] <= 4
