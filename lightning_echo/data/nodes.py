"""torchdata nodes that turn a map-style dataset into batches with exact, resumable state."""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Dict, Iterable, Optional

import torch
from torch.utils.data import Dataset, RandomSampler, TensorDataset, default_collate
from torchdata.nodes import BaseNode
from typing_extensions import override

from lightning_echo.validation import non_negative_int, positive_int


_DATA_SHARD: Optional[tuple[int, int]] = None


def set_data_shard(shard: Optional[tuple[int, int]]) -> None:
    """Make :func:`distributed_rank_and_size` answer ``shard`` (``(rank, world_size)``) instead of the
    default process group (None: the group again). A strategy whose data ranks differ from its
    process ranks sets it while it fits: a parameter server's P + 1 processes read P shards."""
    global _DATA_SHARD
    _DATA_SHARD = shard


def distributed_rank_and_size() -> tuple[int, int]:
    """``(rank, world_size)`` of this process's data shard: the default process group's, or ``(0, 1)``
    without one, unless a strategy set another (:func:`set_data_shard`)."""
    if _DATA_SHARD is not None:
        return _DATA_SHARD
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class IndexBatches(BaseNode[torch.Tensor]):
    """Batches of example indices for one epoch at a time, sharded by rank.

    Every rank gets the same number of batches: like ``DistributedSampler``, the (shuffled)
    index list is padded by wrapping around to a multiple of ``world_size`` before rank ``r``
    takes every ``world_size``-th index from position ``r``. The permutation of epoch ``e`` is a
    function of ``(seed, e)``, so the state is just ``(epoch, batches served)``. Each new
    ``reset()`` without a state starts the next epoch.
    """

    EPOCH, OFFSET = "epoch", "offset"

    def __init__(
        self,
        num_examples: int,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        rank: Optional[int] = None,
        world_size: Optional[int] = None,
    ) -> None:
        super().__init__()
        self.num_examples = positive_int("num_examples", num_examples)
        self.batch_size = positive_int("batch_size", batch_size)
        self.shuffle = shuffle
        self.seed = non_negative_int("seed", seed)
        self.drop_last = drop_last
        self._rank, self._world_size = rank, world_size
        self._epoch = -1
        self._offset = 0
        self._indices: Optional[torch.Tensor] = None

    @property
    def rank_and_world_size(self) -> tuple[int, int]:
        """The shard this node serves (taken from torch.distributed when not given)."""
        if self._rank is None or self._world_size is None:
            rank, size = distributed_rank_and_size()
            return (self._rank if self._rank is not None else rank, self._world_size or size)
        return self._rank, self._world_size

    def shard_size(self) -> int:
        """Number of examples this rank sees per epoch."""
        return math.ceil(self.num_examples / self.rank_and_world_size[1])

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        n = self.shard_size()
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    @override
    def reset(self, initial_state: Optional[Dict[str, Any]] = None) -> None:
        super().reset(initial_state)
        if initial_state is not None:
            self._epoch, self._offset = int(initial_state[self.EPOCH]), int(initial_state[self.OFFSET])
        else:
            self._epoch, self._offset = self._epoch + 1, 0
        self._indices = self._epoch_indices(self._epoch)

    def _epoch_indices(self, epoch: int) -> torch.Tensor:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(self.num_examples, generator=generator)
        else:
            order = torch.arange(self.num_examples)
        rank, size = self.rank_and_world_size
        padded = math.ceil(self.num_examples / size) * size
        if padded > self.num_examples:
            order = torch.cat([order, order[: padded - self.num_examples]])
        return order[rank::size]

    @override
    def next(self) -> torch.Tensor:
        assert self._indices is not None
        start = self._offset * self.batch_size
        batch = self._indices[start : start + self.batch_size]
        if len(batch) == 0 or (self.drop_last and len(batch) < self.batch_size):
            raise StopIteration
        self._offset += 1
        return batch

    @override
    def get_state(self) -> Dict[str, Any]:
        return {self.EPOCH: self._epoch, self.OFFSET: self._offset}


def fetch_batch(dataset: Dataset, indices: torch.Tensor, collate: Callable[[list], Any] = default_collate) -> Any:
    """The batch of ``dataset`` at ``indices``: tensor indexing for a TensorDataset, else collate."""
    if isinstance(dataset, TensorDataset):
        return tuple(tensor[indices] for tensor in dataset.tensors)
    getitems = getattr(dataset, "__getitems__", None)
    if getitems is not None:
        return collate(getitems(indices.tolist()))
    return collate([dataset[i] for i in indices.tolist()])


class MapNode(BaseNode):
    """Apply ``fn`` to each item of ``source`` (state is the source's)."""

    def __init__(self, source: BaseNode, fn: Callable[[Any], Any]) -> None:
        super().__init__()
        self.source = source
        self.fn = fn

    @override
    def reset(self, initial_state: Optional[Dict[str, Any]] = None) -> None:
        super().reset(initial_state)
        self.source.reset(initial_state)

    @override
    def next(self) -> Any:
        return self.fn(next(self.source))

    @override
    def get_state(self) -> Dict[str, Any]:
        return self.source.state_dict()


class Augment(BaseNode):
    """Apply a random batch transform ``fn(batch, generator)`` with a seeded, resumable generator.

    The generator is re-seeded from ``(seed, items seen)`` for every batch, so a resumed
    pipeline draws exactly the augmentations the uninterrupted one would have.
    """

    SOURCE, COUNT = "source", "count"

    def __init__(self, source: BaseNode, fn: Callable[[Any, torch.Generator], Any], seed: int = 0) -> None:
        super().__init__()
        self.source = source
        self.fn = fn
        self.seed = non_negative_int("seed", seed)
        self._count = 0
        self._generator = torch.Generator()

    @override
    def reset(self, initial_state: Optional[Dict[str, Any]] = None) -> None:
        super().reset(initial_state)
        if initial_state is not None:
            self.source.reset(initial_state[self.SOURCE])
            self._count = int(initial_state[self.COUNT])
        else:
            self.source.reset(None)

    @override
    def next(self) -> Any:
        batch = next(self.source)
        self._generator.manual_seed(self.seed * 1_000_003 + self._count)
        self._count += 1
        return self.fn(batch, self._generator)

    @override
    def get_state(self) -> Dict[str, Any]:
        return {self.SOURCE: self.source.state_dict(), self.COUNT: self._count}


class IterableNode(BaseNode):
    """Any iterable as a node; its state is the iterable's own when it has one, else a count.

    Like ``torchdata.nodes.IterableWrapper``, but it decides once whether the iterable is
    stateful: that protocol check is slow, and echo stages read the state every fresh batch.
    A non-stateful iterable is restored by re-iterating and skipping the items already seen,
    which is exact only if it yields the same order again: a ``DataLoader`` that shuffles from
    the global random state does not, and restoring one in the middle of a pass warns.
    """

    COUNT, ITERABLE = "count", "iterable"

    def __init__(self, iterable: Iterable) -> None:
        super().__init__()
        self.iterable = iterable
        self._stateful = callable(getattr(iterable, "state_dict", None)) and callable(
            getattr(iterable, "load_state_dict", None)
        )
        self._iterator: Optional[Any] = None
        self._count = 0

    @override
    def reset(self, initial_state: Optional[Dict[str, Any]] = None) -> None:
        super().reset(initial_state)
        self._count = 0
        if initial_state is not None and self._stateful:
            self.iterable.load_state_dict(initial_state[self.ITERABLE])  # type: ignore[attr-defined]
        self._iterator = iter(self.iterable)
        if initial_state is not None:
            self._count = int(initial_state[self.COUNT])
            if not self._stateful:
                if self._count and shuffles_from_global_state(self.iterable):
                    warnings.warn(
                        f"resuming in the middle of a pass over a {type(self.iterable).__name__} that shuffles and has no "
                        f"state_dict: its {self._count} items already used are skipped from a new shuffle, so the "
                        "rest of the pass is not the one the uninterrupted run saw; for an exact resume use a stateful "
                        "loader (torchdata's StatefulDataLoader, or the command line's loader=throttle / fixed_rate)",
                        stacklevel=2)
                for _ in range(self._count):
                    next(self._iterator)

    @override
    def next(self) -> Any:
        item = next(self._iterator)  # type: ignore[arg-type]
        self._count += 1
        return item

    def close(self) -> None:
        """Drop the current iterator: a ``DataLoader`` iterator stops its worker processes when
        dropped. The next ``reset`` iterates afresh."""
        self._iterator = None

    @override
    def get_state(self) -> Dict[str, Any]:
        state: Dict[str, Any] = {self.COUNT: self._count}
        if self._stateful:
            state[self.ITERABLE] = self.iterable.state_dict()  # type: ignore[attr-defined]
        return state


def shuffles_from_global_state(iterable: Any) -> bool:
    """Whether ``iterable`` is a ``DataLoader`` whose sampler draws a new random order from the
    global random state at each pass (a ``RandomSampler`` without its own generator)."""
    sampler = getattr(iterable, "sampler", None)
    batch_sampler = getattr(iterable, "batch_sampler", None)
    inner = getattr(batch_sampler, "sampler", None)
    return any(isinstance(s, RandomSampler) and s.generator is None for s in (sampler, inner))


class ShardedIterable:
    """Every ``world_size``-th item of ``iterable`` starting at ``rank`` (ranks see equal counts).

    For sources that yield the same sequence on every rank. Items beyond the last full round
    are dropped so that all ranks take the same number of steps.
    """

    def __init__(self, iterable: Iterable, rank: int, world_size: int) -> None:
        self.iterable = iterable
        self.rank = non_negative_int("rank", rank)
        self.world_size = positive_int("world_size", world_size)

    def __iter__(self):
        round_items: list = []
        for item in self.iterable:
            round_items.append(item)
            if len(round_items) == self.world_size:
                yield round_items[self.rank]
                round_items = []

    def __len__(self) -> int:
        return len(self.iterable) // self.world_size  # type: ignore[arg-type]
