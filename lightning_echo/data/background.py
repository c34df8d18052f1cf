"""Background production with a bounded queue, and the Throttle that simulates a slow loader.

:class:`BackgroundQueue` runs its source in a daemon thread, up to ``queue_size`` items ahead,
as a real data loader's workers do. It knows whether the next item is ready (``ready()``), which
adaptive echoing needs. :class:`Throttle` adds a production time per item, so the consumer
really waits: a fixed time per batch, or ``slowdown`` times the measured consumer step time.

Every failure in the thread is raised in the consumer's thread on its next ``next()``; the thread
stops when the source is exhausted, on ``reset``, on ``close`` and when the node is collected.
"""

from __future__ import annotations

import queue
import statistics
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Protocol, runtime_checkable

import torch
from torchdata.nodes import BaseNode
from typing_extensions import override

from lightning_echo.core.delays import unit_mean_delay
from lightning_echo.errors import ConfigError
from lightning_echo.validation import non_negative_float, positive_float, positive_int

_POLL_S = 0.05
_ITEM, _END, _ERROR = "item", "end", "error"


class StepTimeMeter:
    """Median of the consumer's recent step durations, shared between threads.

    The loader that hands batches to the training loop records the time between handing out
    one batch and being asked for the next (time spent waiting inside the loader excluded).
    """

    def __init__(self, window: int = 16) -> None:
        self._samples: deque[float] = deque(maxlen=positive_int("window", window))
        self._lock = threading.Lock()
        self._last_return: Optional[float] = None

    def record(self, seconds: float) -> None:
        """Add one measured step duration."""
        with self._lock:
            self._samples.append(seconds)

    def estimate(self) -> Optional[float]:
        """Median of the recent durations, or None before the first measurement."""
        with self._lock:
            return statistics.median(self._samples) if self._samples else None

    def on_request(self) -> None:
        """Call when the consumer asks for the next batch: closes the current step interval."""
        if self._last_return is not None:
            self.record(time.perf_counter() - self._last_return)

    def on_return(self) -> None:
        """Call when a batch is handed to the consumer: opens the next step interval."""
        self._last_return = time.perf_counter()

    def pause(self) -> None:
        """Forget the open interval (e.g. at the end of an epoch, before validation)."""
        self._last_return = None


@dataclass(frozen=True)
class ThrottleSpec:
    """How slow the simulated loader is.

    Exactly one of ``seconds_per_batch`` (fixed production time per batch) or ``slowdown``
    (production time = ``slowdown`` x the measured consumer step time) must be set. ``jitter``
    names a unit-mean distribution (exponential, shifted_exponential, pareto, lognormal) that
    multiplies each batch's production time; ``jitter_param`` is its shape parameter.
    """

    seconds_per_batch: Optional[float] = None
    slowdown: Optional[float] = None
    jitter: Optional[str] = None
    jitter_param: Optional[float] = None
    seed: int = 0
    queue_size: int = 2

    def __post_init__(self) -> None:
        if self.seconds_per_batch is None and self.slowdown is None:
            raise ConfigError("slowdown", None, "set one of slowdown (x the step time) or seconds_per_batch")
        if self.seconds_per_batch is not None and self.slowdown is not None:
            raise ConfigError("slowdown", self.slowdown, f"is set next to seconds_per_batch={self.seconds_per_batch:g}: set "
                              "exactly one of slowdown or seconds_per_batch (loader=throttle sets slowdown=4, loader=fixed_rate "
                              "a seconds_per_batch: set the other one to null, e.g. loader.slowdown=null)")
        if self.seconds_per_batch is not None:
            non_negative_float("seconds_per_batch", self.seconds_per_batch)
        if self.slowdown is not None:
            positive_float("slowdown", self.slowdown)
        if self.jitter is not None:
            unit_mean_delay(self.jitter, self.jitter_param)
        positive_int("queue_size", self.queue_size)


class _DelayPlan:
    """Production time of each next item; runs in the producer thread."""

    def __init__(self, spec: ThrottleSpec, meter: Optional[StepTimeMeter]) -> None:
        self.spec = spec
        self.meter = meter
        self.jitter = unit_mean_delay(spec.jitter, spec.jitter_param) if spec.jitter else None
        self.generator = torch.Generator().manual_seed(spec.seed)
        self.items = 0

    def next_delay(self, stop: threading.Event) -> float:
        """Seconds the next item takes to produce (may wait for the first step measurement)."""
        self.items += 1
        if self.spec.seconds_per_batch is not None:
            base = self.spec.seconds_per_batch
        else:
            assert self.meter is not None and self.spec.slowdown is not None
            estimate = self.meter.estimate()
            if estimate is None and self.items == 1:
                return 0.0  # the first batch cannot wait for a step that needs it
            while estimate is None and not stop.is_set():
                stop.wait(0.002)
                estimate = self.meter.estimate()
            base = self.spec.slowdown * (estimate or 0.0)
        if self.jitter is not None:
            base *= float(self.jitter.sample(self.generator))
        return base


def _produce(
    source: BaseNode,
    items: "queue.Queue[tuple]",
    stop: threading.Event,
    plan: Optional[_DelayPlan],
) -> None:
    """Producer thread body. Holds no reference to the node that owns it (so it can be collected)."""

    def put(message: tuple) -> bool:
        while not stop.is_set():
            try:
                items.put(message, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    try:
        while not stop.is_set():
            delay = plan.next_delay(stop) if plan is not None else 0.0
            started = time.perf_counter()
            try:
                item = next(source)
            except StopIteration:
                put((_END,))
                return
            state = source.state_dict()
            remaining = delay - (time.perf_counter() - started)
            if remaining > 0 and stop.wait(remaining):
                return
            if not put((_ITEM, item, state)):
                return
    except BaseException as error:  # noqa: BLE001 - every failure must reach the consumer
        put((_ERROR, error))


class BackgroundQueue(BaseNode):
    """Produce ``source``'s items in a daemon thread, at most ``queue_size`` ahead of the consumer."""

    SOURCE_KEY = "source"

    def __init__(self, source: BaseNode, queue_size: int = 2) -> None:
        super().__init__()
        self.source = source
        self.queue_size = positive_int("queue_size", queue_size)
        self._items: Optional[queue.Queue] = None
        self._stop: Optional[threading.Event] = None
        self._thread: Optional[threading.Thread] = None
        self._finalizer: Optional[weakref.finalize] = None
        self._source_state: Optional[Dict[str, Any]] = None
        self._exhausted = False
        self.wait_s = 0.0
        self.items_delivered = 0

    def _delay_plan(self) -> Optional[_DelayPlan]:
        return None

    @override
    def reset(self, initial_state: Optional[Dict[str, Any]] = None) -> None:
        super().reset(initial_state)
        self.close()
        self.source.reset(initial_state[self.SOURCE_KEY] if initial_state is not None else None)
        self._source_state = self.source.state_dict()
        self._exhausted = False
        self._items = queue.Queue(maxsize=self.queue_size)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=_produce,
            args=(self.source, self._items, self._stop, self._delay_plan()),
            name=f"lightning_echo-{type(self).__name__}",
            daemon=True,
        )
        self._finalizer = weakref.finalize(self, _stop_thread, self._stop, self._thread)
        self._thread.start()

    @override
    def next(self) -> Any:
        if self._exhausted or self._items is None:
            raise StopIteration
        started = time.perf_counter()
        while True:
            try:
                message = self._items.get(timeout=_POLL_S)
                break
            except queue.Empty:
                if self._thread is None or not self._thread.is_alive():
                    if self._items.empty():
                        raise RuntimeError("lightning_echo: the data pipeline thread stopped without a result") from None
        self.wait_s += time.perf_counter() - started
        kind = message[0]
        if kind == _ITEM:
            self._source_state = message[2]
            self.items_delivered += 1
            return message[1]
        self._exhausted = True
        self.close()
        if kind == _END:
            raise StopIteration
        error = message[1]
        if hasattr(error, "add_note"):
            error.add_note("(raised in lightning_echo's background data pipeline thread)")
        raise error

    def ready(self) -> bool:
        """True when the next item (or the end of the data) is waiting in the queue."""
        return self._items is not None and not self._items.empty()

    @override
    def get_state(self) -> Dict[str, Any]:
        return {self.SOURCE_KEY: self._source_state}

    def close(self) -> None:
        """Stop the producer thread and wait for it (a no-op when none is running)."""
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None
        self._thread = None

    @property
    def thread_alive(self) -> bool:
        """Whether a producer thread is running."""
        return self._thread is not None and self._thread.is_alive()


def _stop_thread(stop: threading.Event, thread: threading.Thread) -> None:
    stop.set()
    if thread.is_alive() and thread is not threading.current_thread():
        thread.join(timeout=5.0)


class Throttle(BackgroundQueue):
    """Deliver ``source``'s items no faster than ``spec`` says, producing ahead in the background.

    Each item takes at least its production time (``spec.seconds_per_batch``, or
    ``spec.slowdown`` x the median step time recorded in ``meter``, times a jitter draw); the
    consumer waits for real when it runs ahead. With ``slowdown`` the first item comes at once
    and later ones wait for the first step measurement.

    Example::

        from lightning_echo.data.nodes import IterableNode

        node = Throttle(IterableNode(batches), ThrottleSpec(seconds_per_batch=0.05))
        node.reset()
        first = next(node)  # about 0.05 s after reset, produced in a background thread
        node.close()
    """

    def __init__(self, source: BaseNode, spec: ThrottleSpec, meter: Optional[StepTimeMeter] = None) -> None:
        super().__init__(source, queue_size=spec.queue_size)
        if spec.slowdown is not None and meter is None:
            raise ConfigError("slowdown", spec.slowdown, "needs a StepTimeMeter fed by the training loop")
        self.spec = spec
        self.meter = meter

    def _delay_plan(self) -> Optional[_DelayPlan]:
        return _DelayPlan(self.spec, self.meter)


@runtime_checkable
class ReportsReadiness(Protocol):
    """A node that can tell whether its next item is already waiting (a background queue)."""

    def ready(self) -> bool:
        """True when the next item (or the end of the data) is waiting."""


@runtime_checkable
class WrapsSource(Protocol):
    """A node that reads from one node below it."""

    source: BaseNode


def find_ready_probe(node: Optional[BaseNode]) -> Optional[Callable[[], bool]]:
    """The ``ready`` method of ``node`` or of the nearest node below it that has one."""
    seen = 0
    while node is not None and seen < 32:
        if isinstance(node, ReportsReadiness):
            return node.ready
        node = node.source if isinstance(node, WrapsSource) else None
        seen += 1
    return None
