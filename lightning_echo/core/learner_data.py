"""Each simulated learner's own data stream, and batch echoing on it (pure Python, no Lightning).

A learner's loader produces fresh mini-batches back to back, each in a time drawn from its
data-time source, and holds at most ``prefetch`` finished batches that the learner has not taken
yet (a prefetching loader with a bounded queue): batch ``i`` is ready at

    ready_i = max(ready_{i-1}, taken_{i-prefetch}) + d_i

where ``taken_j`` is when the learner took batch ``j`` (0 before the first ``prefetch``). When
the server starts the learner at time ``t``, :meth:`LearnerDataStreams.take` says which batch it
computes on and when the computation can begin:

- without echoing, or when echoing does not apply: the next fresh batch, at ``max(t, ready)``
  (the learner waits ``max(0, ready - t)`` for its data);
- with a number as echo factor ``e``: each fresh batch is computed on ``floor(e)`` times, plus
  once more with probability ``e - floor(e)`` (``DataEchoing``'s rule), the repeats at once;
- with ``"auto"``: the current batch again, at once, while the next fresh batch is not ready and
  the batch was served fewer than ``max_factor`` times; otherwise the next fresh batch.

With data times of zero and ``"auto"`` (or factor 1), every computation begins when it is
started, on a fresh batch: the schedule is the one without data streams, bit for bit.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any, Deque, Optional

import torch

from lightning_echo.core.delays import ComputeTimes, ComputeTimeSource, DelayDistribution, TraceComputeTimes, unit_mean_delay
from lightning_echo.core.echo_factor import AUTO, EchoFactor, check_echo_factor, draw_repeats
from lightning_echo.errors import ConfigError
from lightning_echo.validation import non_negative_int, positive_float, positive_int

# Data streams draw from seed * DATA_SEED_STRIDE + 1, apart from the compute times' stream of ``seed``.
DATA_SEED_STRIDE = 1_000_003


@dataclass(frozen=True)
class DataTimes:
    """How long each simulated learner's loader takes per fresh mini-batch (one of three bases).

    - ``seconds_per_batch``: a fixed time (simulated seconds), the same base for every learner;
    - ``slowdown``: that many times the learner's own mean compute time (a loader ``slowdown``
      times slower than the step, as ``loader.slowdown`` is for a real run);
    - ``trace``: a CSV of recorded data times, in the compute-time trace format
      (``learner,seconds`` or ``seconds`` rows), replayed.

    ``jitter`` (``exponential``, ``shifted_exponential``, ``pareto``, ``lognormal``; unit mean,
    shaped by ``jitter_param``) multiplies each draw of the first two; ``speeds[i]`` makes learner
    ``i``'s loader that many times slower. ``prefetch`` is how many finished batches a loader holds
    ahead of its learner.

    Example::

        times = DataTimes(slowdown=4, speeds=(1, 1, 2, 2))
        source = times.source(ComputeTimes(DelayDistribution("exponential")), learners=4)
        source.mean(3)  # 8.0: learner 3's loader takes 8x a mean compute time of 1
    """

    seconds_per_batch: Optional[float] = None
    slowdown: Optional[float] = None
    jitter: Optional[str] = None
    jitter_param: Optional[float] = None
    speeds: Optional[tuple[float, ...]] = None
    trace: Optional[str] = None
    prefetch: int = 2

    def __post_init__(self) -> None:
        bases = [k for k in ("seconds_per_batch", "slowdown", "trace") if getattr(self, k) is not None]
        if len(bases) != 1:
            key = bases[1] if bases else "slowdown"
            also = f" (it is set next to {bases[0]})" if bases else ""
            raise ConfigError(key, getattr(self, key), f"set exactly one of seconds_per_batch, slowdown or trace{also}")
        if self.seconds_per_batch is not None:
            positive_float("seconds_per_batch", self.seconds_per_batch)
        if self.slowdown is not None:
            positive_float("slowdown", self.slowdown)
        if self.speeds is not None:
            speeds = tuple(positive_float(f"speeds[{i}]", s) for i, s in enumerate(self.speeds))
            if not speeds:
                raise ConfigError("speeds", self.speeds, "must hold one slowdown > 0 per learner")
            object.__setattr__(self, "speeds", speeds)
        if self.trace is not None and (self.jitter is not None or self.speeds is not None):
            raise ConfigError("jitter" if self.jitter is not None else "speeds",
                              self.jitter if self.jitter is not None else list(self.speeds or ()),
                              f"is set next to trace={self.trace!r}, which replays recorded times: leave it unset")
        if self.jitter is not None:
            unit_mean_delay(self.jitter, self.jitter_param)  # refuses a bad name or shape in one line
        elif self.jitter_param is not None:
            raise ConfigError("jitter_param", self.jitter_param, "needs a jitter to shape: set jitter too")
        positive_int("prefetch", self.prefetch)

    def check_learners(self, learners: int) -> None:
        """Refuse ``speeds`` that do not hold one slowdown per learner."""
        if self.speeds is not None and len(self.speeds) != learners:
            raise ConfigError("speeds", list(self.speeds), f"must hold one slowdown per learner: {learners} entries")

    def source(self, compute_times: ComputeTimeSource, learners: int) -> ComputeTimeSource:
        """The per-learner data-time source for ``learners`` learners whose compute times are
        ``compute_times`` (a ``slowdown`` is relative to each learner's mean compute time)."""
        self.check_learners(learners)
        if self.trace is not None:
            return TraceComputeTimes.from_csv(self.trace, learners=learners)
        speeds = self.speeds or (1.0,) * learners
        if self.seconds_per_batch is not None:
            bases = [self.seconds_per_batch * s for s in speeds]
        else:
            bases = [float(self.slowdown) * compute_times.mean(i) * s for i, s in enumerate(speeds)]  # type: ignore[arg-type]
        jitter = unit_mean_delay(self.jitter, self.jitter_param) if self.jitter else DelayDistribution("constant", value=1.0)
        return ComputeTimes(jitter, speeds=bases)


@dataclass(frozen=True)
class LearnerEcho:
    """Batch echoing on each learner: ``factor`` a number >= 1 or ``"auto"`` (capped at ``max_factor``
    serves per fresh batch), as ``DataEchoing`` takes them; ``seed`` fixes a non-integer factor's draws."""

    factor: EchoFactor = AUTO
    max_factor: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        check_echo_factor(self.factor, self.max_factor)
        non_negative_int("seed", self.seed)


@dataclass(frozen=True)
class BatchTake:
    """What a started learner computes on: fresh batch ``fresh_index`` of its stream (0, 1, ...),
    served for the ``serve``-th time (0: fresh, > 0: an echo), beginning at ``begin`` after waiting
    ``wait`` for its data."""

    fresh_index: int
    serve: int
    begin: float
    wait: float

    @property
    def is_echo(self) -> bool:
        return self.serve > 0


class _Stream:
    """One learner's loader and current batch."""

    __slots__ = ("next_index", "next_ready", "last_ready", "taken", "current", "current_ready", "serves", "repeats",
                 "fresh", "echoes", "wait")

    def __init__(self) -> None:
        self.next_index = 0  # the next fresh batch to take
        self.next_ready: Optional[float] = None  # its ready time, once drawn
        self.last_ready = 0.0  # ready time of the batch before it
        self.taken: Deque[float] = collections.deque()  # take times of the last `prefetch` fresh batches
        self.current = -1  # the fresh batch being served (-1: none yet)
        self.current_ready = 0.0  # when it was ready
        self.serves = 0  # times it was served
        self.repeats = 0  # times to serve it (a number as factor)
        self.fresh = 0
        self.echoes = 0
        self.wait = 0.0


class LearnerDataStreams:
    """Every learner's data stream and echo rule, for :class:`~lightning_echo.core.schedule.ScheduleSimulation`.

    ``data_times`` draws each learner's time per fresh batch (None: batches are always ready);
    ``echo`` is the echo rule (None: every computation takes a fresh batch). Deterministic for a
    ``seed``; :meth:`state_dict` / :meth:`load_state_dict` carry everything.
    """

    def __init__(self, learners: int, data_times: Optional[ComputeTimeSource] = None, echo: Optional[LearnerEcho] = None,
                 prefetch: int = 2, seed: int = 0) -> None:
        self.learners = positive_int("learners", learners)
        self.prefetch = positive_int("prefetch", prefetch)
        self.echo = echo
        self.seed = non_negative_int("seed", seed)
        if data_times is not None:
            data_times.check_learners(learners)
        self.data_times = data_times.seeded(seed * DATA_SEED_STRIDE + 1) if data_times is not None else None
        self._generator = torch.Generator().manual_seed(echo.seed if echo is not None else 0)
        self._streams = [_Stream() for _ in range(learners)]

    def _ready(self, stream: _Stream, learner: int) -> float:
        """When the stream's next fresh batch is (or will be) ready."""
        if stream.next_ready is None:
            held_since = stream.taken[0] if len(stream.taken) == self.prefetch else 0.0
            draw = self.data_times.sample(learner) if self.data_times is not None else 0.0
            stream.next_ready = max(stream.last_ready, held_since) + draw
        return stream.next_ready

    def _echoes(self, stream: _Stream, learner: int, now: float) -> bool:
        echo = self.echo
        if echo is None or stream.current < 0:
            return False
        if echo.factor == AUTO:
            return stream.serves < echo.max_factor and self._ready(stream, learner) > now
        return stream.serves < stream.repeats

    def take(self, learner: int, now: float) -> BatchTake:
        """``learner`` starts a computation at ``now``: on which batch, and when it begins."""
        stream = self._streams[learner]
        if stream.current >= 0 and stream.serves == 0:  # its first computation was cancelled before it began
            begin = max(now, stream.current_ready)
            stream.serves = 1
            stream.wait += begin - now
            return BatchTake(stream.current, 0, begin, begin - now)
        if self._echoes(stream, learner, now):
            stream.serves += 1
            stream.echoes += 1
            return BatchTake(stream.current, stream.serves - 1, now, 0.0)
        ready = self._ready(stream, learner)
        begin = ready if ready > now else now
        stream.taken.append(begin)
        if len(stream.taken) > self.prefetch:
            stream.taken.popleft()
        stream.current, stream.current_ready, stream.serves = stream.next_index, ready, 1
        stream.next_index += 1
        stream.last_ready, stream.next_ready = ready, None
        echo = self.echo
        if echo is not None and echo.factor != AUTO:
            stream.repeats = draw_repeats(float(echo.factor), self._generator)
        stream.fresh += 1
        stream.wait += begin - now
        return BatchTake(stream.current, 0, begin, begin - now)

    def cancel(self, learner: int, now: float, begin: float) -> None:
        """``learner``'s computation that begins (or began) at ``begin`` is cancelled at ``now``: a
        fresh batch it had not begun on stays its next one (the wait not yet spent is not counted)."""
        if begin <= now:
            return
        stream = self._streams[learner]
        stream.wait -= begin - now
        if stream.serves == 1:
            stream.serves = 0

    def waits(self) -> list[float]:
        """Each learner's time spent waiting for data, counted up to the begin of its current computation."""
        return [s.wait for s in self._streams]

    def statistics(self) -> dict[str, Any]:
        """Per learner: fresh batches taken, echoes served, time spent waiting for data."""
        return {
            "fresh_batches_per_learner": [s.fresh for s in self._streams],
            "echoes_per_learner": [s.echoes for s in self._streams],
            "data_wait_per_learner": [s.wait for s in self._streams],
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "streams": [{key: (list(getattr(s, key)) if key == "taken" else getattr(s, key)) for key in _Stream.__slots__}
                        for s in self._streams],
            "generator": self._generator.get_state(),
            "data_times": self.data_times.state_dict() if self.data_times is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["streams"]) != self.learners:
            raise ValueError(f"the state holds {len(state['streams'])} learners' streams, not {self.learners}")
        for stream, saved in zip(self._streams, state["streams"]):
            for key in _Stream.__slots__:
                setattr(stream, key, collections.deque(saved[key]) if key == "taken" else saved[key])
        self._generator.set_state(state["generator"])
        if self.data_times is not None and state["data_times"] is not None:
            self.data_times.load_state_dict(state["data_times"])


def data_times_from_config(config: Any, prefetch_key: str = "queue_size") -> Optional[DataTimes]:
    """A ``loader`` config block (``name``, ``seconds_per_batch``, ``slowdown``, ``jitter``,
    ``jitter_param``, ``queue_size``, and for simulated learners ``speeds``, ``trace``) as
    :class:`DataTimes`; None for ``name: none`` or nothing set. A ``trace`` replaces the base
    (``slowdown`` and ``seconds_per_batch`` next to it are ignored)."""
    if config is None or isinstance(config, DataTimes):
        return config
    if not hasattr(config, "get"):
        raise ConfigError("data_delay", config, "must be a mapping like the loader group, a DataTimes, or null")
    if config.get("name", None) == "none":
        return None
    known = {"name", "seconds_per_batch", "slowdown", "jitter", "jitter_param", "speeds", "trace", prefetch_key, "prefetch"}
    unknown = sorted(k for k in config.keys() if k not in known)
    if unknown:
        raise ConfigError(unknown[0], config[unknown[0]], "is not a data-time setting; use " + ", ".join(sorted(known - {"name"})))
    if all(config.get(k) is None for k in ("seconds_per_batch", "slowdown", "trace")):
        return None
    speeds = config.get("speeds")
    prefetch = config.get("prefetch", config.get(prefetch_key, 2))
    if config.get("trace") is not None:  # replaces the base: the loader group's default slowdown is ignored
        return DataTimes(trace=str(config.get("trace")), jitter=config.get("jitter"),
                         speeds=tuple(speeds) if speeds is not None else None, prefetch=2 if prefetch is None else prefetch)
    return DataTimes(
        seconds_per_batch=config.get("seconds_per_batch"), slowdown=config.get("slowdown"), jitter=config.get("jitter"),
        jitter_param=config.get("jitter_param"), speeds=tuple(speeds) if speeds is not None else None,
        trace=None if config.get("trace") is None else str(config.get("trace")), prefetch=2 if prefetch is None else prefetch,
    )

