"""Every option of ``conf/algorithm`` with tiny settings, and the backends it runs on: the one
registry the cross-method tests (``tests/app/test_algorithm_registry.py``, the parameter-server
world of ``tests/stragglers/processes``) iterate over. A new algorithm option fails
``test_the_registry_covers_every_algorithm_option`` until it is entered here.

Modelled on Composer's algorithm-settings registry: each entry says how to run the method small
and which of the shared tests it is expected to fail, with the reason (``xfail``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from lightning_echo.metric_names import Echo, Progress, Stale

# The straggler algorithms' backends; the others train with the Trainer's own strategy.
NO_BACKEND = "trainer"
SIMULATED, PROCESSES = "simulated", "processes"

# Logged counters that a resumed run must continue exactly as the uninterrupted run logged them
# (the wall-clock ones, time/elapsed_s and the data waits, cannot be equal and are left out).
PROGRESS_COUNTERS = (Progress.FRESH_SAMPLES, Progress.FRESH_BATCHES, Progress.OPTIMIZER_STEPS)
ECHO_COUNTERS = (Echo.FRESH_BATCHES, Echo.FRESH_SAMPLES, Echo.ECHOED_STEPS, Echo.EFFECTIVE_FACTOR)
SIMULATED_COUNTERS = (Progress.SIMULATED_S, Stale.STALENESS_MEAN, Stale.STALENESS_MAX, Stale.STEP_FACTOR, Stale.LR,
                      Stale.DISCARDED, Stale.CANCELLED, Stale.WASTED_TIME, Stale.UTILISATION, Stale.SNAPSHOTS)
# On real processes only the run's totals continue (they are the server's, saved in the checkpoint).
PROCESS_TOTALS = (Stale.DISCARDED, Stale.CANCELLED)


@dataclass(frozen=True)
class AlgorithmCase:
    """One ``conf/algorithm`` option run small: its overrides, the backends it runs on, the
    straggler variant it names (None for the others), the logged counters a resume continues,
    and the shared tests it is known to fail, by ``"<test>[<backend>]"``, with the reason."""

    overrides: tuple[str, ...] = ()
    backends: tuple[str, ...] = (NO_BACKEND,)
    variant: Optional[str] = None
    counters: tuple[str, ...] = PROGRESS_COUNTERS
    xfail: dict[str, str] = field(default_factory=dict)

    def expected_failure(self, test: str, backend: str) -> Optional[str]:
        return self.xfail.get(f"{test}[{backend}]")


def _stragglers(variant: str, *overrides: str) -> AlgorithmCase:
    return AlgorithmCase(
        overrides=("stale.learners=3", "stale.delay.distribution=exponential", "stale.delay.scale=0.01",
                   "stale.delay.speeds=[1,1,3]", *overrides),
        backends=(SIMULATED, PROCESSES),
        variant=variant,
        counters=PROGRESS_COUNTERS + SIMULATED_COUNTERS,
        xfail={"resume_equals_uninterrupted[processes]": "on real processes gradients arrive in the order the "
               "machine's timing gives, so no two runs are alike; the totals still continue (PROCESS_TOTALS)"},
    )


REGISTRY: dict[str, AlgorithmCase] = {
    "sync": AlgorithmCase(),
    "echo": AlgorithmCase(("echo.factor=2.5",), counters=PROGRESS_COUNTERS + ECHO_COUNTERS),
    "echo_sgd": AlgorithmCase(("echo.factor=3", "optimizer.lr=0.1"), counters=PROGRESS_COUNTERS + ECHO_COUNTERS),
    "echo_prox": AlgorithmCase(("echo.factor=2", "optimizer.gamma=0.1"), counters=PROGRESS_COUNTERS + ECHO_COUNTERS),
    "echo_nesterov": AlgorithmCase(("echo.factor=2", "optimizer.lr=0.05"), counters=PROGRESS_COUNTERS + ECHO_COUNTERS),
    "p_sync": _stragglers("sync"),
    "k_sync": _stragglers("k_sync", "stale.k=2"),
    "k_batch_sync": _stragglers("k_batch_sync", "stale.k=2"),
    "k_async": _stragglers("k_async", "stale.k=2", "stale.lr_rule=mishchenko"),
    "k_batch_async": _stragglers("k_batch_async", "stale.k=2", "stale.lr_rule=dutta", "stale.c=0.01"),
    "async": _stragglers("async", "stale.lr_rule=koloskova", "stale.smoothness=10"),
    "rennala": _stragglers("rennala", "stale.k=2"),
    "ringmaster": _stragglers("ringmaster", "stale.max_delay=2", "stale.stop_stale=true"),
}


def cases(backends: tuple[str, ...] = (NO_BACKEND, SIMULATED, PROCESSES)) -> list[tuple[str, str]]:
    """(algorithm, backend) pairs of the registry on the given backends."""
    return [(name, backend) for name, case in REGISTRY.items() for backend in case.backends if backend in backends]


def backend_overrides(backend: str) -> list[str]:
    """The overrides that select ``backend`` (none for the Trainer's own strategy)."""
    return [] if backend == NO_BACKEND else [f"backend={backend}"]
