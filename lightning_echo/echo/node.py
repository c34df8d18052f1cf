"""Echo stages (torchdata nodes): serve each fresh batch, or each example, several times.

:class:`BatchEcho` repeats whole batches: a fixed or non-integer factor, or ``"auto"`` (repeat
only while the next fresh batch is not ready, up to ``max_factor``). :class:`ExampleEcho` repeats
examples and mixes them through a shuffle buffer before re-batching (Choi et al.'s example
echoing). Both expose ``last_info``, an :class:`EchoInfo` for the item ``next()`` just returned,
and stop at an optional budget of fresh batches / samples.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

import torch
from torchdata.nodes import BaseNode
from typing_extensions import override

from lightning_echo.core.batches import check_splittable, find_batch_size, rebuild, select_rows
from lightning_echo.core.echo_factor import (
    AUTO,
    EchoFactor,
    adaptive_should_echo,
    check_echo_factor,
    draw_pass_repeats,
    draw_repeats,
    is_integer_factor,
)
from lightning_echo.core.progress import FreshDataBudget
from lightning_echo.data.background import find_ready_probe
from lightning_echo.errors import ConfigError
from lightning_echo.validation import non_negative_int, positive_int

Agree = Callable[[bool], bool]
BatchSizeFn = Callable[[Any], int]


@dataclass(frozen=True)
class EchoInfo:
    """What one served item is.

    ``fresh_index`` numbers the fresh batch it comes from (for example echoing: the newest one
    that contributed), ``repeat`` is 0 the first time a batch is served and counts echoes after,
    ``fresh_samples`` are the examples seen for the first time, ``same_as_previous`` says the
    item is the very same batch as the previous one (so its device copy can be reused).
    """

    fresh_index: int
    repeat: int
    samples: int
    fresh_samples: int
    same_as_previous: bool

    @property
    def is_echo(self) -> bool:
        """True when the item brings no fresh example."""
        return self.fresh_samples == 0


class FreshFetched:
    """How much fresh data an echo stage has fetched, checked against the run's :class:`FreshDataBudget`.

    The count is the stage's fetch position (ahead of training by what the loop prefetched); what
    training consumed is counted by the run's progress ledger.
    """

    BATCHES, SAMPLES = "fresh_batches", "fresh_samples"

    def __init__(self, budget: FreshDataBudget) -> None:
        self.budget = budget
        self.batches = 0
        self.samples = 0

    def exhausted(self) -> bool:
        return self.budget.exhausted(self.samples, self.batches)

    def add(self, samples: int) -> None:
        self.batches += 1
        self.samples += samples

    def state(self) -> Dict[str, int]:
        return {self.BATCHES: self.batches, self.SAMPLES: self.samples}

    def load(self, state: Dict[str, Any]) -> None:
        self.batches, self.samples = int(state[self.BATCHES]), int(state[self.SAMPLES])


def check_batch_size_fn(batch_size_fn: Optional[BatchSizeFn]) -> Optional[BatchSizeFn]:
    """Return ``batch_size_fn`` if it is None or callable, else raise ConfigError."""
    if batch_size_fn is not None and not callable(batch_size_fn):
        raise ConfigError("batch_size_fn", batch_size_fn, "must be a callable taking a batch and returning its number of examples")
    return batch_size_fn


class ExampleCounter:
    """How many examples a fresh batch holds: ``batch_size_fn(batch)`` when given (as for
    Lightning's ``ThroughputMonitor``), else the first dimension of its first tensor
    (:func:`~lightning_echo.core.batches.find_batch_size`); None when that cannot be told."""

    def __init__(self, batch_size_fn: Optional[BatchSizeFn] = None) -> None:
        self.batch_size_fn = check_batch_size_fn(batch_size_fn)

    def __call__(self, batch: Any) -> Optional[int]:
        if self.batch_size_fn is None:
            return find_batch_size(batch)
        size = self.batch_size_fn(batch)
        if isinstance(size, torch.Tensor) and size.numel() == 1:
            size = int(size.item())
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigError("batch_size_fn(batch)", size, "must be the number of examples in the batch, a positive integer")
        return size


def _budget(budget: Optional[FreshDataBudget], max_fresh_batches: Optional[int], max_fresh_samples: Optional[int]) -> FreshDataBudget:
    for key, value in (("max_fresh_batches", max_fresh_batches), ("max_fresh_samples", max_fresh_samples)):
        if value is not None:
            positive_int(key, value)
    return (budget or FreshDataBudget()).merged(max_fresh_samples, max_fresh_batches)


class PassLimit(BaseNode):
    """The first ``limit`` items of each pass over ``source`` (Lightning's ``limit_train_batches``
    applied to fresh batches, below the echo stage)."""

    SOURCE, TAKEN = "source", "taken"

    def __init__(self, source: BaseNode, limit: int) -> None:
        super().__init__()
        self.source = source
        self.limit = non_negative_int("limit", limit)
        self._taken = 0

    @override
    def reset(self, initial_state: Optional[Dict[str, Any]] = None) -> None:
        super().reset(initial_state)
        self.source.reset(None if initial_state is None else initial_state[self.SOURCE])
        self._taken = 0 if initial_state is None else int(initial_state[self.TAKEN])

    @override
    def next(self) -> Any:
        if self._taken >= self.limit:
            raise StopIteration
        item = next(self.source)
        self._taken += 1
        return item

    @override
    def get_state(self) -> Dict[str, Any]:
        return {self.SOURCE: self.source.state_dict(), self.TAKEN: self._taken}


class BatchEcho(BaseNode):
    """Serve every fresh batch of ``source`` ``factor`` times (batch echoing).

    - ``factor`` a number >= 1: ``floor(factor)`` times plus once more with probability
      ``factor - floor(factor)``; the draw for fresh batch ``i`` depends only on ``(seed, i)``.
      With ``pass_batches`` (the number of fresh batches one pass of ``source`` yields), the extra
      serves of a non-integer factor are instead spread over exactly
      ``round((factor - floor(factor)) * pass_batches)`` batches of each pass, drawn at random
      from ``(seed, first fresh index of the pass)``: every pass is then exactly
      ``steps_per_pass(factor, pass_batches)`` steps, a length Lightning can be given.
    - ``factor="auto"``: serve again while the next fresh batch is not ready (``ready()`` of the
      nearest background stage below), never more than ``max_factor`` times in all. ``agree``
      combines the "fresh batch ready" flag across processes (DDP) so every rank decides alike.

    Every serve returns its own copy of the batch's containers (dicts, lists, tuples, plain
    objects and dataclasses) over the same tensors, so a consumer that pops a key or reassigns a field does
    not change the echoes; in-place changes to the tensors themselves are seen by the echoes.
    ``batch_size_fn`` tells the number of examples in a batch (default: the first dimension of
    its first tensor); a batch whose size cannot be told counts as one example, with a warning.

    The state holds the source's state from *before* the current fresh batch, so a pipeline
    restored in the middle of an echo group fetches that batch again and finishes its group.
    """

    SOURCE, SERVED, REPEATS, PASS_START = "source", "served", "repeats", "pass_start"

    def __init__(
        self,
        source: BaseNode,
        factor: EchoFactor = 2,
        max_factor: int = 4,
        seed: int = 0,
        agree: Optional[Agree] = None,
        max_fresh_batches: Optional[int] = None,
        max_fresh_samples: Optional[int] = None,
        budget: Optional[FreshDataBudget] = None,
        batch_size_fn: Optional[BatchSizeFn] = None,
        pass_batches: Optional[int] = None,
    ) -> None:
        super().__init__()
        self.source = source
        self.factor = check_echo_factor(factor, max_factor)
        self.max_factor = max_factor
        self.seed = non_negative_int("seed", seed)
        self.pass_batches = positive_int("pass_batches", pass_batches) if pass_batches is not None else None
        self._pass_start = 0  # fresh index of the first batch of the current pass
        self._pass_repeats: Optional[torch.Tensor] = None
        self.agree = agree
        self.budget = FreshFetched(_budget(budget, max_fresh_batches, max_fresh_samples))
        self.count_examples = ExampleCounter(batch_size_fn)
        self._warned_unknown_size = False
        self._ready = find_ready_probe(source) if self.factor == AUTO else None
        if self.factor == AUTO and self._ready is None:
            raise ConfigError("factor", AUTO, "needs a background stage below the echo (BackgroundQueue or Throttle)")
        self._current: Any = None
        self._current_size = 0
        self._served = 0
        self._repeats = 0
        self._source_state_before: Optional[Dict[str, Any]] = None
        self.budget_exhausted = False
        self.last_info: Optional[EchoInfo] = None

    def _draw_repeats(self, fresh_index: int) -> int:
        if self.factor == AUTO:
            return self.max_factor
        if is_integer_factor(self.factor):
            return int(self.factor)
        position = fresh_index - self._pass_start
        if self.pass_batches is not None and 0 <= position < self.pass_batches:
            if self._pass_repeats is None:
                generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self._pass_start + 7_919)
                self._pass_repeats = draw_pass_repeats(float(self.factor), self.pass_batches, generator)
            return int(self._pass_repeats[position])
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + fresh_index)
        return draw_repeats(float(self.factor), generator)

    def _should_echo(self) -> bool:
        if self._current is None or self._served >= self._repeats:
            return False
        if self.factor != AUTO:
            return True
        assert self._ready is not None
        fresh_ready = bool(self._ready())
        if self.agree is not None:
            fresh_ready = self.agree(fresh_ready)
        return adaptive_should_echo(self._served, self.max_factor, fresh_ready)

    @override
    def reset(self, initial_state: Optional[Dict[str, Any]] = None) -> None:
        super().reset(initial_state)
        self._current, self._served, self._repeats = None, 0, 0
        self.last_info = None
        self._pass_repeats = None
        if initial_state is None:
            self.source.reset(None)
            self._source_state_before = None
            self._pass_start = self.budget.batches
            return
        self.budget.load(initial_state)
        self._pass_start = int(initial_state.get(self.PASS_START, 0))
        self.source.reset(initial_state[self.SOURCE])
        served, repeats = int(initial_state[self.SERVED]), int(initial_state[self.REPEATS])
        if served > 0:
            # Resume inside an echo group: fetch its fresh batch again, without counting it twice.
            self._source_state_before = initial_state[self.SOURCE]
            self._current = next(self.source)
            self._current_size = self._size_of(self._current)
            self._served, self._repeats = served, repeats
        self.budget_exhausted = False

    @override
    def next(self) -> Any:
        fresh_index = self.budget.batches - 1
        if self._should_echo():
            self._served += 1
            self.last_info = EchoInfo(fresh_index, self._served - 1, self._current_size, 0, True)
            return rebuild(self._current)
        if self.budget.exhausted():
            self.budget_exhausted = True
            self._current = None
            raise StopIteration
        self._source_state_before = self.source.state_dict()
        try:
            batch = next(self.source)
        except StopIteration:
            self._current = None
            raise
        size = self._size_of(batch)
        self.budget.add(size)
        self._current, self._current_size, self._served = batch, size, 1
        self._repeats = self._draw_repeats(self.budget.batches - 1)
        self.last_info = EchoInfo(self.budget.batches - 1, 0, size, size, False)
        return rebuild(batch)

    def _size_of(self, batch: Any) -> int:
        size = self.count_examples(batch)
        if size is not None:
            return size
        kind = type(batch).__name__
        if self.budget.budget.max_samples is not None:
            raise ConfigError(
                "max_fresh_samples", self.budget.budget.max_samples,
                f"needs the number of examples in each batch, which cannot be told from a {kind}: pass batch_size_fn",
            )
        if not self._warned_unknown_size:
            self._warned_unknown_size = True
            warnings.warn(
                f"cannot tell the number of examples in a batch of type {kind}: each batch counts as one sample "
                "(fresh_samples counts fresh batches); pass batch_size_fn to count examples",
                stacklevel=2,
            )
        return 1

    @override
    def get_state(self) -> Dict[str, Any]:
        in_group = self._current is not None
        state = {
            self.SOURCE: self._source_state_before if in_group else self.source.state_dict(),
            self.SERVED: self._served if in_group else 0,
            self.REPEATS: self._repeats if in_group else 0,
            self.PASS_START: self._pass_start,
        }
        state.update(self.budget.state())  # includes the current batch, which a restore re-fetches uncounted
        return state


class ExampleEcho(BaseNode):
    """Repeat each example ``factor`` times, mix through a shuffle buffer, re-batch (example echoing).

    Each example of a fresh batch is queued ``floor(factor)`` times plus once more with
    probability ``factor - floor(factor)``. Output batches of ``batch_size`` (default: the size
    of the first fresh batch) are drawn at random from a buffer kept at ``shuffle_buffer``
    entries while fresh data lasts, then drained. Batches are tensors, or dicts, lists, tuples
    and dataclasses of them, whose first dimension indexes examples; lists of strings or
    numbers (ids, file names) are split per example too. ``batch_size_fn`` tells the number of
    examples in a batch (default: the first dimension of its first tensor). A batch with a part
    that is not per example (a per-batch string, a tensor of another length) is refused with a
    :class:`ConfigError` when it is fetched, before it is served.

    Restoring a saved state resumes from the source position of that state; the examples that
    were waiting in the buffer at that moment are not replayed.
    """

    SOURCE, SERVED_BATCHES = "source", "served_batches"

    def __init__(
        self,
        source: BaseNode,
        factor: float = 2.0,
        shuffle_buffer: int = 1024,
        batch_size: Optional[int] = None,
        seed: int = 0,
        max_fresh_batches: Optional[int] = None,
        max_fresh_samples: Optional[int] = None,
        budget: Optional[FreshDataBudget] = None,
        batch_size_fn: Optional[BatchSizeFn] = None,
    ) -> None:
        super().__init__()
        if factor == AUTO:
            raise ConfigError("factor", factor, "example echoing takes a number >= 1; 'auto' works with kind=batch")
        self.source = source
        self.factor = float(check_echo_factor(factor, 1))
        self.shuffle_buffer = positive_int("shuffle_buffer", shuffle_buffer)
        self.batch_size = positive_int("batch_size", batch_size) if batch_size is not None else None
        self.seed = non_negative_int("seed", seed)
        self.budget = FreshFetched(_budget(budget, max_fresh_batches, max_fresh_samples))
        self.count_examples = ExampleCounter(batch_size_fn)
        self._generator = torch.Generator()
        self._entries: list[tuple[Any, int, bool]] = []  # (fresh batch, row, first serve?)
        self._source_done = False
        self._served_batches = 0
        self.budget_exhausted = False
        self.last_info: Optional[EchoInfo] = None

    @override
    def reset(self, initial_state: Optional[Dict[str, Any]] = None) -> None:
        super().reset(initial_state)
        self._entries, self._source_done = [], False
        if initial_state is not None:
            self.budget.load(initial_state)
            self._served_batches = int(initial_state[self.SERVED_BATCHES])
            self.source.reset(initial_state[self.SOURCE])
        else:
            self.source.reset(None)
        self._generator.manual_seed(self.seed * 1_000_003 + self._served_batches)

    def _fill(self) -> None:
        # Keep at least a whole output batch buffered, so short batches only come at the end.
        while not self._source_done and len(self._entries) < max(self.shuffle_buffer, self.batch_size or 0):
            if self.budget.exhausted():
                self.budget_exhausted = True
                self._source_done = True
                return
            try:
                batch = next(self.source)
            except StopIteration:
                self._source_done = True
                return
            size = self.count_examples(batch)
            if size is None:
                raise ConfigError(
                    "kind", "example",
                    f"cannot tell the number of examples in a batch of type {type(batch).__name__}: "
                    "pass batch_size_fn, or use kind='batch'",
                )
            check_splittable(batch, size)
            if self.batch_size is None:
                self.batch_size = size
            self.budget.add(size)
            for row in range(size):
                repeats = draw_repeats(self.factor, self._generator)
                self._entries += [(batch, row, copy == 0) for copy in range(repeats)]

    @override
    def next(self) -> Any:
        self._fill()
        if not self._entries:
            raise StopIteration
        assert self.batch_size is not None
        take = min(self.batch_size, len(self._entries))
        picks = torch.randperm(len(self._entries), generator=self._generator)[:take].tolist()
        chosen = [self._entries[i] for i in picks]
        for i in sorted(picks, reverse=True):
            self._entries[i] = self._entries[-1]
            self._entries.pop()
        fresh = sum(1 for _, _, first in chosen if first)
        self._served_batches += 1
        self.last_info = EchoInfo(self.budget.batches - 1, 0 if fresh else 1, take, fresh, False)
        return select_rows([(batch, row) for batch, row, _ in chosen])

    @override
    def get_state(self) -> Dict[str, Any]:
        state = {self.SOURCE: self.source.state_dict(), self.SERVED_BATCHES: self._served_batches}
        state.update(self.budget.state())
        return state
