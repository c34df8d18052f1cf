"""Training progress: what each optimizer step trained on, counted in one place, with one budget.

A *progress source* is the stage that knows what a step consumed: an echo stage knows that an
echoed batch brings no fresh example, a simulated cluster knows the simulated time at each server
update. It reports a :class:`StepReport` per optimizer step; one :class:`ProgressLedger` adds the
reports up and owns the :class:`FreshDataBudget`. The Lightning adapter is
``lightning_echo.callbacks.TrainingProgress``; this module is pure Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Literal, Optional, Protocol, get_args, runtime_checkable

from lightning_echo.validation import one_of, positive_int

Clock = Literal["wall_clock", "simulated"]
CLOCKS: tuple[Clock, ...] = get_args(Clock)
WALL_CLOCK, SIMULATED = CLOCKS


@dataclass(frozen=True)
class StepReport:
    """What one optimizer step trained on.

    ``samples`` examples, of which ``fresh_samples`` are seen for the first time; the step
    completes ``fresh_batches`` fresh batches (1 for a plain or first-served batch, 0 for an
    echo); ``clock_s`` is the source's own clock after the step (simulated seconds), or None
    when the run's time is wall-clock time.
    """

    samples: int
    fresh_samples: int
    fresh_batches: int = 1
    clock_s: Optional[float] = None

    @property
    def is_echo(self) -> bool:
        """True when the step brings no fresh example."""
        return self.fresh_samples == 0


@runtime_checkable
class ProgressSource(Protocol):
    """A stage that knows what each optimizer step consumed: an echo stage, simulated learners.

    ``clock`` names the time axis its runs are measured in (:data:`WALL_CLOCK` or
    :data:`SIMULATED`); ``enforces_budget`` says the stage itself stops producing fresh data at
    the budget (so the ledger must not cut a step group short).
    """

    clock: Clock
    enforces_budget: bool

    def step_report(self) -> Optional[StepReport]:
        """The report of the step being trained on now (None: not known, count it as plain)."""

    def progress_metrics(self, ledger: "ProgressLedger") -> Dict[str, float]:
        """Metrics of this stage to log next to the progress metrics (e.g. ``echo/*``)."""

    def progress_bar(self, ledger: "ProgressLedger") -> Dict[str, float]:
        """Short values to show in the progress bar (e.g. ``fresh``, ``echoed``)."""


class FreshDataBudget:
    """At most ``max_samples`` fresh examples and/or ``max_batches`` fresh batches (None: no limit)."""

    def __init__(self, max_samples: Optional[int] = None, max_batches: Optional[int] = None) -> None:
        self.max_samples = positive_int("budget.fresh_samples", max_samples) if max_samples is not None else None
        self.max_batches = positive_int("budget.fresh_batches", max_batches) if max_batches is not None else None

    @property
    def is_limited(self) -> bool:
        """True when either limit is set."""
        return self.max_samples is not None or self.max_batches is not None

    def exhausted(self, samples: int, batches: int) -> bool:
        """True once ``samples`` fresh examples or ``batches`` fresh batches reach a limit."""
        return (self.max_samples is not None and samples >= self.max_samples) or (
            self.max_batches is not None and batches >= self.max_batches
        )

    def merged(self, max_samples: Optional[int], max_batches: Optional[int]) -> "FreshDataBudget":
        """This budget tightened by other limits (the smaller of each pair)."""

        def tighter(a: Optional[int], b: Optional[int]) -> Optional[int]:
            return b if a is None else a if b is None else min(a, b)

        return FreshDataBudget(tighter(self.max_samples, max_samples), tighter(self.max_batches, max_batches))

    def __repr__(self) -> str:
        return f"FreshDataBudget(max_samples={self.max_samples}, max_batches={self.max_batches})"


class ProgressLedger:
    """The one counter of training progress: steps, fresh data, echoes, data wait, source clock.

    Example::

        ledger = ProgressLedger(FreshDataBudget(max_samples=64))
        ledger.record(StepReport(samples=32, fresh_samples=32))
        ledger.record(StepReport(samples=32, fresh_samples=0, fresh_batches=0))
        assert (ledger.steps, ledger.fresh_samples, ledger.echoed_steps) == (2, 32, 1)
        assert not ledger.budget_exhausted
    """

    STEPS, FRESH_SAMPLES, FRESH_BATCHES, ECHOED_STEPS = "steps", "fresh_samples", "fresh_batches", "echoed_steps"
    DATA_WAIT_S, CLOCK_S, ELAPSED_S = "data_wait_s", "clock_s", "elapsed_s"

    def __init__(self, budget: Optional[FreshDataBudget] = None) -> None:
        self.budget = budget or FreshDataBudget()
        self.steps = 0
        self.fresh_samples = 0
        self.fresh_batches = 0
        self.echoed_steps = 0
        self.data_wait_s = 0.0
        self.clock_s: Optional[float] = None

    def record(self, report: StepReport, optimizer_steps: int = 1) -> None:
        """Add one training batch and the optimizer steps it took (0 for a batch that only ran
        forward, such as ``StochasticWeightAveraging``'s batch-norm pass, or one that accumulated
        its gradient; several under manual optimization)."""
        self.steps += optimizer_steps
        self.fresh_samples += report.fresh_samples
        self.fresh_batches += report.fresh_batches
        self.echoed_steps += optimizer_steps if report.is_echo else 0
        if report.clock_s is not None:
            self.clock_s = report.clock_s

    def add_data_wait(self, seconds: float) -> None:
        """Add time the training loop spent waiting for its next batch."""
        self.data_wait_s += seconds

    @property
    def effective_factor(self) -> float:
        """Optimizer steps per fresh batch so far (0 before the first fresh batch)."""
        return self.steps / self.fresh_batches if self.fresh_batches else 0.0

    @property
    def budget_exhausted(self) -> bool:
        """True once the fresh data trained on reaches the budget."""
        return self.budget.exhausted(self.fresh_samples, self.fresh_batches)

    def state_dict(self) -> Dict[str, Any]:
        return {
            self.STEPS: self.steps,
            self.FRESH_SAMPLES: self.fresh_samples,
            self.FRESH_BATCHES: self.fresh_batches,
            self.ECHOED_STEPS: self.echoed_steps,
            self.DATA_WAIT_S: self.data_wait_s,
            self.CLOCK_S: self.clock_s,
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.steps = int(state.get(self.STEPS, 0))
        self.fresh_samples = int(state[self.FRESH_SAMPLES])
        self.fresh_batches = int(state[self.FRESH_BATCHES])
        self.echoed_steps = int(state.get(self.ECHOED_STEPS, 0))
        self.data_wait_s = float(state.get(self.DATA_WAIT_S, 0.0))
        clock = state.get(self.CLOCK_S)
        self.clock_s = None if clock is None else float(clock)


def check_clock(clock: str) -> str:
    """Validate a clock name."""
    return one_of("clock", clock, CLOCKS)
