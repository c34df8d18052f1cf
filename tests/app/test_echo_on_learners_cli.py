"""The command line composes data echoing with the straggler algorithms (issue 24)."""

from __future__ import annotations

import csv
import json
import signal
from pathlib import Path

import pytest

from conftest import main_error, run_cli, single_run_overrides
from lightning_echo.app.builders import build_algorithm_settings, build_callbacks, build_datamodule
from lightning_echo.app.config import compose_config
from lightning_echo.app.preflight import validate_config
from lightning_echo.core.learner_data import DataTimes
from lightning_echo.echo import DataEchoing
from lightning_echo.metric_names import LearnerData
from run_resume import assert_same_training_state, interrupt_and_resume

COMPOSED = ["experiment=single", "algorithm=k_async", "echo.factor=auto", "loader=throttle", "loader.slowdown=4"]


def _echoing(cfg) -> list[DataEchoing]:
    return [c for c in build_callbacks(cfg) if isinstance(c, DataEchoing)]


def test_a_straggler_algorithm_with_an_echo_factor_echoes_on_its_simulated_learners() -> None:
    cfg = compose_config(COMPOSED + ["loader.speeds=[1,1,1,1,2,2,2,2]"])
    validate_config(cfg)
    (echo,) = _echoing(cfg)
    assert echo.factor == "auto" and echo.max_factor == 4
    settings = build_algorithm_settings(cfg)
    assert settings.data_times == DataTimes(slowdown=4.0, speeds=(1, 1, 1, 1, 2, 2, 2, 2), prefetch=2)
    assert build_datamodule(cfg).throttle is None  # the learners' loaders are simulated, not the real one
    from hydra.utils import instantiate

    assert instantiate(cfg.algorithm.label) == "k_async K=4 of P=8 + echo auto"
    assert cfg.algorithm["keys"]["echo_factor"] == "auto"


def test_without_an_echo_factor_straggler_algorithms_do_not_echo_and_echo_still_defaults_to_two() -> None:
    assert _echoing(compose_config(["experiment=single", "algorithm=k_async"])) == []
    (echo,) = _echoing(compose_config(["experiment=single", "algorithm=echo"]))
    assert echo.factor == 2
    (echo,) = _echoing(compose_config(["experiment=single", "algorithm=echo", "echo.factor=3"]))
    assert echo.factor == 3


def test_an_echoed_synchronous_run_is_not_the_comparisons_baseline() -> None:
    from hydra.utils import instantiate

    plain = compose_config(["experiment=single", "algorithm=p_sync"])
    echoed = compose_config(["experiment=single", "algorithm=p_sync", "echo.factor=auto"])
    assert instantiate(plain.algorithm.baseline) is True
    assert instantiate(echoed.algorithm.baseline) is False


def test_processes_keep_the_real_throttle() -> None:
    cfg = compose_config(["experiment=single", "algorithm=k_async", "backend=processes", "stale.learners=2",
                          "loader=fixed_rate", "echo.factor=2"])
    assert build_datamodule(cfg).throttle is not None
    assert build_algorithm_settings(cfg).data_times is None
    assert len(_echoing(cfg)) == 1


@pytest.mark.parametrize("args, expected", [
    (["experiment=single", "algorithm=sync", "loader=throttle", "loader.speeds=[1,2]"], "loader.speeds"),
    (COMPOSED + ["loader.speeds=[1,2]"], "one slowdown per learner: 8 entries"),
    (COMPOSED + ["loader.jitter=gamma"], "loader.jitter"),
    (COMPOSED + ["echo.factor=0.5"], "echo.factor"),
    (COMPOSED + ["echo.factor=2", "echo.kind=example"], "echo.kind"),
])
def test_bad_composed_settings_are_one_line(capsys, args, expected) -> None:
    assert expected in main_error(capsys, args)


@pytest.mark.slow
def test_the_composed_command_line_run(tmp_path: Path) -> None:
    result = run_cli(COMPOSED + single_run_overrides() + ["trainer.max_steps=40", "trainer.log_every_n_steps=5"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    (record,) = [json.loads(p.read_text()) for p in tmp_path.rglob("run.json")]
    assert record["status"] == "completed"
    (metrics,) = list(tmp_path.rglob("metrics.csv"))
    rows = list(csv.DictReader(metrics.open()))
    echoed = [float(r[LearnerData.ECHOED_GRADIENTS]) for r in rows if r.get(LearnerData.ECHOED_GRADIENTS)]
    assert echoed and echoed[-1] > 0
    assert any(r.get(LearnerData.LEARNER_FRESH_SAMPLES.format(learner=7)) for r in rows)
    report = run_cli(["report", str(metrics.parents[1]), "--out", str(tmp_path / "report")], tmp_path)
    assert report.returncode == 0, report.stderr[-2000:]
    assert "echoed gradients" in report.stdout and "learners' data wait [s]" in report.stdout
    assert "k_async K=4 of P=8 + echo auto" in report.stdout


def test_a_composed_run_killed_half_way_resumes_exactly(tmp_path: Path) -> None:
    overrides = ["algorithm=k_async", "echo.factor=auto", "loader=throttle", "loader.slowdown=3", "stale.learners=4",
                 "stale.k=2", "trainer.max_steps=24", "trainer.log_every_n_steps=1"]
    whole, split, _ = interrupt_and_resume(tmp_path, overrides, 9, signal.SIGTERM)
    assert_same_training_state(whole, split)
