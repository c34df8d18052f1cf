"""Throttled train loaders: the simulated slow pipeline, built from torchdata nodes.

``throttled_loader(dataset, batch_size, slowdown=4)`` turns a map-style dataset into a loader
whose batches arrive no faster than the throttle allows; ``throttle(loader, slowdown=4)`` does
the same for any iterable loader (a ``torch.utils.data.DataLoader`` included). Both return a
:class:`DataPipeline`: iterable, sized when the source is, stateful (``state_dict`` /
``load_state_dict``, saved in Lightning checkpoints) and sharded by rank under DDP.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Iterable, Iterator, Literal, Optional, get_args

import torch
from torch.utils.data import (
    DataLoader,
    Dataset,
    IterableDataset,
    RandomSampler,
    default_collate,
)
from torch.utils.data.distributed import DistributedSampler
from torchdata.nodes import BaseNode, Loader

from lightning_echo.data.background import (
    BackgroundQueue,
    StepTimeMeter,
    Throttle,
    ThrottleSpec,
)
from lightning_echo.data.lifetime import StopsAtLightningTeardown
from lightning_echo.data.nodes import (
    Augment,
    IndexBatches,
    IterableNode,
    MapNode,
    ShardedIterable,
    distributed_rank_and_size,
    fetch_batch,
)
from lightning_echo.errors import ConfigError
from lightning_echo.validation import one_of

Placement = Literal["after_augmentation", "before_augmentation"]
PLACEMENTS: tuple[Placement, ...] = get_args(Placement)
AugmentFn = Callable[[Any, torch.Generator], Any]


class DataPipeline(StopsAtLightningTeardown):
    """A train loader made of torchdata nodes: ``source -> [augment] -> [throttle]``.

    Iterating yields batches; ``wait_s`` is the time the consumer spent waiting for the
    throttle. The step time that ``slowdown`` refers to is measured here, between handing out a
    batch and being asked for the next one. :meth:`build` lets an echo stage be inserted before
    or after the augmentation (what ``DataEchoing`` uses).
    """

    def __init__(
        self,
        source: BaseNode,
        length: Optional[Callable[[], Optional[int]]] = None,
        throttle: Optional[ThrottleSpec] = None,
        augment: Optional[AugmentFn] = None,
        augment_seed: int = 0,
    ) -> None:
        self.source = source
        self.throttle_spec = throttle
        self.augment = augment
        self.augment_seed = augment_seed
        self.meter = StepTimeMeter()
        self._length = length or (lambda: None)
        self.queue_node: Optional[BackgroundQueue] = None
        self._loader = Loader(self.build())

    # -- structure -------------------------------------------------------------------------
    def build(self, insert: Optional[Callable[[BaseNode], BaseNode]] = None, placement: Placement = "after_augmentation") -> BaseNode:
        """A fresh node graph, with ``insert(node)`` placed before or after the augmentation."""
        one_of("placement", placement, PLACEMENTS)
        node = self.source
        before = insert is not None and placement == "before_augmentation"
        if self.augment is not None and not before:
            node = Augment(node, self.augment, self.augment_seed)
        if self.throttle_spec is not None:
            node = Throttle(node, self.throttle_spec, self.meter)
            self.queue_node = node
        if insert is not None:
            node = insert(node)
        if self.augment is not None and before:
            node = Augment(node, self.augment, self.augment_seed)
        return node

    # -- iteration -------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Any]:
        iterator = iter(self._loader)
        meter = self.meter
        meter.pause()
        while True:
            meter.on_request()
            try:
                batch = next(iterator)
            except StopIteration:
                meter.pause()
                return
            meter.on_return()
            yield batch

    def __len__(self) -> int:
        length = self._length()
        if length is None:
            raise TypeError("this pipeline's source has no length")
        return length

    @property
    def wait_s(self) -> float:
        """Seconds the consumer has waited for the throttled stage so far."""
        return self.queue_node.wait_s if self.queue_node is not None else 0.0

    # -- state -----------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        return self._loader.state_dict()

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self._loader.load_state_dict(state_dict)

    # -- lifetime --------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the background thread (iterating again restarts it)."""
        if self.queue_node is not None:
            self.queue_node.close()


def throttled_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool = True,
    seed: int = 0,
    drop_last: bool = False,
    collate_fn: Callable[[list], Any] = default_collate,
    seconds_per_batch: Optional[float] = None,
    slowdown: Optional[float] = None,
    jitter: Optional[str] = None,
    jitter_param: Optional[float] = None,
    queue_size: int = 2,
    augment: Optional[AugmentFn] = None,
    rank: Optional[int] = None,
    world_size: Optional[int] = None,
) -> DataPipeline:
    """A throttled loader over a map-style ``dataset`` (shuffled per epoch, sharded by rank).

    Give ``seconds_per_batch`` or ``slowdown`` (or neither, for an unthrottled pipeline).
    ``augment(batch, generator)`` is a random batch transform, seeded for exact resumption.

    Example::

        loader = throttled_loader(train_set, batch_size=128, slowdown=4, jitter="exponential")
        trainer.fit(model, train_dataloaders=loader)
    """
    if isinstance(dataset, IterableDataset):
        raise ConfigError("dataset", type(dataset).__name__, "must be map-style; use throttle(loader) for iterables")
    indices = IndexBatches(len(dataset), batch_size, shuffle, seed, drop_last, rank, world_size)  # type: ignore[arg-type]
    source = MapNode(indices, lambda idx: fetch_batch(dataset, idx, collate_fn))
    spec = _spec(seconds_per_batch, slowdown, jitter, jitter_param, seed, queue_size)
    return DataPipeline(source, length=lambda: len(indices), throttle=spec, augment=augment, augment_seed=seed)


def throttle(
    loader: Iterable,
    *,
    seconds_per_batch: Optional[float] = None,
    slowdown: Optional[float] = None,
    jitter: Optional[str] = None,
    jitter_param: Optional[float] = None,
    seed: int = 0,
    queue_size: int = 2,
) -> DataPipeline:
    """Throttle any iterable train loader (a ``DataLoader`` included), sharding it by rank.

    A ``DataLoader`` over a map-style dataset gets a ``DistributedSampler`` under DDP, as
    Lightning would give it; any other iterable is sharded round-robin by batch.
    """
    spec = _spec(seconds_per_batch, slowdown, jitter, jitter_param, seed, queue_size)
    sharded = _ShardOnIter(loader)
    return DataPipeline(IterableNode(sharded), length=sharded.length, throttle=spec)


class _ShardOnIter:
    """Shards ``loader`` by the rank found when iteration starts (DDP is set up by then)."""

    def __init__(self, loader: Iterable) -> None:
        self.loader = loader
        self._epoch = 0

    def _sharded(self) -> Iterable:
        rank, size = distributed_rank_and_size()
        if size == 1:
            return self.loader
        if isinstance(self.loader, DataLoader) and not isinstance(self.loader.dataset, IterableDataset):
            return _with_distributed_sampler(self.loader, rank, size, self._epoch)
        return ShardedIterable(self.loader, rank, size)

    def __iter__(self) -> Iterator[Any]:
        iterable = self._sharded()
        self._epoch += 1
        return iter(iterable)

    def length(self) -> Optional[int]:
        try:
            total = len(self.loader)  # type: ignore[arg-type]
        except TypeError:
            return None
        _, size = distributed_rank_and_size()
        if size == 1:
            return total
        loader = self.loader
        if isinstance(loader, DataLoader) and not isinstance(loader.dataset, IterableDataset) and loader.batch_size:
            per_rank = math.ceil(len(loader.dataset) / size)  # type: ignore[arg-type]
            return per_rank // loader.batch_size if loader.drop_last else math.ceil(per_rank / loader.batch_size)
        return total // size


def _with_distributed_sampler(loader: DataLoader, rank: int, size: int, epoch: int) -> DataLoader:
    sampler = DistributedSampler(
        loader.dataset, num_replicas=size, rank=rank, shuffle=isinstance(loader.sampler, RandomSampler), drop_last=False
    )
    sampler.set_epoch(epoch)
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        persistent_workers=loader.persistent_workers,
    )


def _spec(
    seconds_per_batch: Optional[float],
    slowdown: Optional[float],
    jitter: Optional[str],
    jitter_param: Optional[float],
    seed: int,
    queue_size: int,
) -> Optional[ThrottleSpec]:
    if seconds_per_batch is None and slowdown is None:
        if jitter is not None:
            raise ConfigError("jitter", jitter, "needs slowdown or seconds_per_batch to jitter")
        return None
    return ThrottleSpec(seconds_per_batch, slowdown, jitter, jitter_param, seed, queue_size)

