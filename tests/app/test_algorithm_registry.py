"""The cross-method tests, driven by the algorithm registry (``tests/algorithm_registry.py``): for
every ``conf/algorithm`` option on each of its backends, the config composes and passes every
check; on one process it runs a few steps, a run stopped by SIGTERM and resumed ends exactly as
the uninterrupted run, and the counters it logs continue across the resume as that run logged
them. Real processes (``backend=processes``) run their few steps and resume in the parameter
server's world (``tests/stragglers/processes/test_processes_strategy.py``, same registry).
"""

from __future__ import annotations

import csv
import signal
from pathlib import Path

import pytest

from algorithm_registry import NO_BACKEND, PROCESSES, REGISTRY, SIMULATED, backend_overrides, cases
from lightning_echo.app.config import compose_config, group_options
from lightning_echo.app.job import flat_run_config
from lightning_echo.app.preflight import validate_config
from lightning_echo.stragglers.settings import BACKENDS
from run_resume import SMALL, THROTTLED, assert_same_training_state, interrupt_and_resume

STOP_AT = 7  # SIGTERM after this step: mid-epoch, and mid echo group for factors 2, 2.5 and 3


def _overrides(name: str, backend: str) -> list[str]:
    return [f"algorithm={name}", *backend_overrides(backend), *REGISTRY[name].overrides]


def _xfail_if_known(name: str, test: str, backend: str) -> None:
    reason = REGISTRY[name].expected_failure(test, backend)
    if reason is not None:
        pytest.xfail(reason)


def test_the_registry_covers_every_algorithm_option() -> None:
    assert sorted(REGISTRY) == group_options("algorithm")
    assert group_options("backend") == sorted(BACKENDS) == sorted((SIMULATED, PROCESSES))
    stragglers = {name for name, case in REGISTRY.items() if case.variant is not None}
    for name, case in REGISTRY.items():
        assert case.backends == ((SIMULATED, PROCESSES) if name in stragglers else (NO_BACKEND,)), name


@pytest.mark.parametrize("name,backend", cases())
def test_every_algorithm_composes_and_passes_every_check_on_its_backends(name: str, backend: str) -> None:
    cfg = compose_config(SMALL + _overrides(name, backend))
    validate_config(cfg)
    flat = flat_run_config(cfg)
    assert flat["algorithm"] == name and flat["label"]
    assert flat["clock"] == ("simulated" if backend == SIMULATED else "wall_clock")
    if backend == PROCESSES:
        assert cfg.trainer.devices == cfg.stale.learners + 1 and flat["label"].endswith("(processes)")
    if REGISTRY[name].variant is not None:
        assert cfg.algorithm.settings.variant == REGISTRY[name].variant


def _logged(run_dir: Path, names: tuple[str, ...]) -> dict[str, list[tuple[int, float]]]:
    """Each counter's logged (step, value) pairs, in step order."""
    with (run_dir / "csv" / "metrics.csv").open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    return {name: sorted({(int(float(r["step"])), float(r[name])) for r in rows if r.get(name)}) for name in names}


@pytest.mark.slow
@pytest.mark.parametrize("name,backend", cases())
def test_resume_equals_the_uninterrupted_run_and_logged_counters_continue(tmp_path: Path, name: str, backend: str) -> None:
    _xfail_if_known(name, "resume_equals_uninterrupted", backend)  # before anything runs: the reason is the result
    case = REGISTRY[name]
    overrides = THROTTLED + _overrides(name, backend) + ["trainer.max_steps=16", "trainer.log_every_n_steps=1"]
    whole, split, _ = interrupt_and_resume(tmp_path, overrides, STOP_AT, signal.SIGTERM)
    assert_same_training_state(whole, split)
    logged_whole, logged_split = _logged(whole, case.counters), _logged(split, case.counters)
    for counter in case.counters:
        assert logged_whole[counter], f"{counter} was not logged"
        assert any(step > STOP_AT for step, _ in logged_whole[counter]), counter
        assert logged_split[counter] == logged_whole[counter], counter
