"""The report's pure core: seeds averaged on a common grid, time to target, speed-ups, labels,
and turning logged rows into points."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_echo.echo.labels import echo_label
from lightning_echo.report import table
from lightning_echo.report.aggregate import band, compare_runs, configuration_label, first_at_or_below
from lightning_echo.report.runs import Point, Run, series_from_rows


def run_record(**config) -> dict:
    """A flat run config as the command line writes it: the algorithm declares its keys and label."""
    settings = {"algorithm": "sync", "echo_factor": 1, "seed": 0, "group": "g", **config}
    echo = settings["algorithm"] == "echo"
    settings.setdefault("algorithm_keys", ["echo_factor", "echo_kind"] if echo else ["echo_factor"])
    settings.setdefault("label", echo_label(settings["echo_factor"], settings.get("echo_kind", "batch")) if echo else "sync")
    return settings


def make_run(name: str, values: list[float], seconds_per_step: float, status: str = "completed", **config) -> Run:
    """A run logging ``values`` of val/loss at steps 0, 10, 20, ... (fresh samples = 4 x steps)."""
    points = [Point(10 * i, 10 * i * seconds_per_step, 40.0 * i, v) for i, v in enumerate(values)]
    return Run(Path(name), name, "g", run_record(**config), status, "csv", {"val/loss": points})


def test_band_is_mean_min_max_of_the_interpolated_curves() -> None:
    runs = [make_run("a", [1.0, 0.5, 0.0], 0.1), make_run("b", [3.0, 2.5, 2.0, 1.5], 0.1)]
    result = band(runs, "val/loss", "step")
    assert result.x[0] == 0 and result.x[-1] == 20  # up to the shorter run's end
    middle = result.x.index(min(result.x, key=lambda x: abs(x - 10)))
    x = result.x[middle]
    a, b = 1.0 - 0.05 * x, 3.0 - 0.05 * x
    assert result.mean[middle] == pytest.approx((a + b) / 2)
    assert result.low[middle] == pytest.approx(a) and result.high[middle] == pytest.approx(b)


def test_first_at_or_below_takes_the_first_logged_crossing() -> None:
    points = make_run("a", [1.0, 0.6, 0.4, 0.7, 0.3], 0.5).series["val/loss"]
    reached = first_at_or_below(points, 0.5)
    assert reached is not None and (reached.step, reached.elapsed_s, reached.fresh_samples) == (20, 10.0, 80.0)
    assert first_at_or_below(points, 0.1) is None


def test_default_target_and_speedup_against_the_matching_synchronous_runs() -> None:
    runs = [
        # sync at two slowdowns (two seeds at slowdown 2), each reaching 0.5 at step 20
        make_run("s2a", [1.0, 0.8, 0.5], 1.0, slowdown=2, seed=0),
        make_run("s2b", [1.0, 0.8, 0.5], 1.0, slowdown=2, seed=1),
        make_run("s4", [1.0, 0.8, 0.5], 2.0, slowdown=4),
        # echo reaching it at step 10, with cheaper wall-clock per step
        make_run("e2", [1.0, 0.5, 0.4], 0.5, algorithm="echo", echo_factor=4, slowdown=2),
        make_run("e4", [1.0, 0.5, 0.4], 0.5, algorithm="echo", echo_factor=4, slowdown=4),
    ]
    comparison = compare_runs(runs)
    assert comparison.target == pytest.approx(0.5 * 1.01)
    by_label = {c.label: c for c in comparison.configurations}
    assert set(by_label) == {"sync, slowdown=2", "sync, slowdown=4", "echo x4, slowdown=2", "echo x4, slowdown=4"}
    assert len(by_label["sync, slowdown=2"].runs) == 2
    # sync@2 reaches at 20 s, echo@2 at 5 s; sync@4 at 40 s, echo@4 at 5 s.
    assert by_label["echo x4, slowdown=2"].baseline == "sync, slowdown=2"
    assert by_label["echo x4, slowdown=2"].speedup == pytest.approx(4.0)
    assert by_label["echo x4, slowdown=4"].speedup == pytest.approx(8.0)
    assert by_label["sync, slowdown=4"].speedup == pytest.approx(1.0)


def test_given_target_unreached_runs_and_excluded_runs() -> None:
    sync = make_run("s", [1.0, 0.9, 0.8], 1.0)
    crashed = make_run("c", [1.0, 0.7], 1.0, status="crashed", algorithm="echo", echo_factor=2)
    silent = Run(Path("t"), "t", "g", run_record(algorithm="echo", echo_factor=2), "completed", "csv",
                 {"train/loss": [Point(0, 0.0, 0.0, 1.0)]})
    comparison = compare_runs([sync, crashed, silent], target_loss=0.75)
    assert comparison.target == 0.75 and "(given)" in comparison.target_rule
    assert [run.name for run, _ in comparison.excluded] == ["t"]
    assert any("left out, no val/loss logged (logged: train/loss)" in w for w in comparison.warnings)
    assert any("crashed at step 10" in w for w in comparison.warnings)
    by_label = {c.label: c for c in comparison.configurations}
    assert by_label["sync"].reached == [] and by_label["sync"].speedup is None
    assert by_label["echo x2"].mean_to_target("step") == 10  # the crashed run's partial curve counts


def test_runs_of_different_data_are_flagged() -> None:
    runs = [make_run("a", [1.0], 1.0, data="SyntheticDataModule"), make_run("b", [1.0], 1.0, data="MNISTDataModule")]
    assert any("different data" in w for w in compare_runs(runs).warnings)


def test_configuration_labels() -> None:
    echo_keys = {"algorithm", "optimizer", "echo_factor", "echo_kind"}
    assert configuration_label({"algorithm": "sync", "echo_factor": 1}, ["algorithm", "echo_factor"], "sync", echo_keys) == "sync"
    assert configuration_label({"algorithm": "echo", "echo_factor": "auto", "slowdown": 8.0},
                               ["algorithm", "slowdown"], echo_label("auto"), echo_keys) == "echo auto, slowdown=8.0"
    assert configuration_label({"algorithm": "echo", "echo_factor": 2, "echo_kind": "example"},
                               ["echo_kind"], echo_label(2, "example"), echo_keys) == "echo x2 (example echoing)"


def test_rows_become_points_at_the_progress_logged_at_or_before_their_step() -> None:
    rows = [
        {"step": 0, "progress/optimizer_steps": 0, "time/elapsed_s": 0.0, "progress/fresh_samples": 0},
        {"step": 0, "val/loss": 2.0},
        {"step": 4, "train/loss": 1.5},
        {"step": 5, "progress/optimizer_steps": 5, "time/elapsed_s": 1.0, "progress/fresh_samples": 320},
        {"step": 5, "progress/optimizer_steps": 5, "time/elapsed_s": 1.5, "progress/fresh_samples": 320},  # at validation
        {"step": 5, "val/loss": 1.2},
    ]
    series = series_from_rows(rows, step_key="step")
    assert [(p.step, p.elapsed_s, p.fresh_samples, p.value) for p in series["val/loss"]] == [(0, 0.0, 0.0, 2.0), (5, 1.5, 320.0, 1.2)]
    assert [(p.step, p.elapsed_s) for p in series["train/loss"]] == [(4, 0.0)]
    assert set(series) == {"val/loss", "train/loss"}


def resolved_run(name: str, overrides: list[str], values: list[float], seconds_per_step: float = 1.0,
                 status: str = "completed") -> Run:
    """A run with the record the command line writes for ``experiment=single`` plus ``overrides``
    (flat keys and the whole resolved config), logging ``values`` at steps 0, 10, 20, ..."""
    from lightning_echo.app.config import compose_config
    from lightning_echo.app.job import flat_run_config

    config = flat_run_config(compose_config(["experiment=single", *overrides]), "g")
    points = [Point(10 * i, 10 * i * seconds_per_step, 40.0 * i, v) for i, v in enumerate(values)]
    return Run(Path(name), name, "g", config, status, "csv", {"val/loss": points})


def test_runs_are_seeds_only_when_their_whole_resolved_config_is_equal_but_the_seed() -> None:
    runs = [
        # Seeds of one configuration: they differ only in the seed and in settings that cannot
        # change the result (where outputs go, the progress bar, the echo settings sync never reads).
        resolved_run("a0", ["model=mlp", "model.hidden_sizes=[8]", "seed=0", "paths.output_root=/a"], [2.0, 1.0]),
        resolved_run("a1", ["model=mlp", "model.hidden_sizes=[8]", "seed=1", "paths.output_root=/b",
                            "trainer.enable_progress_bar=false", "echo.factor=4"], [2.0, 1.2]),
        resolved_run("b0", ["model=mlp", "model.hidden_sizes=[256]", "seed=0"], [2.0, 0.8]),
        resolved_run("c0", ["model=logreg", "seed=0"], [2.0, 0.9]),
    ]
    by_label = {c.label: [run.name for run in c.runs] for c in compare_runs(runs).configurations}
    assert by_label == {"sync, model=MLP, model.hidden_sizes=[8]": ["a0", "a1"],
                        "sync, model=MLP, model.hidden_sizes=[256]": ["b0"],
                        "sync, model=LogisticRegression": ["c0"]}


def test_runs_on_different_data_get_their_own_target_and_baseline() -> None:
    small, large = "data.n_examples=1024", "data.n_examples=2048"
    runs = [
        resolved_run("sync-small", [small], [2.0, 1.5, 1.0]),
        resolved_run("echo-small", [small, "algorithm=echo"], [2.0, 1.0, 0.9]),
        resolved_run("sync-large", [large], [1.0, 0.7, 0.5]),
        resolved_run("echo-large", [large, "algorithm=echo"], [1.0, 0.5, 0.45]),
    ]
    comparison = compare_runs(runs)
    assert [(t.data, t.value) for t in comparison.targets] == [
        (small, pytest.approx(1.0 * 1.01)), (large, pytest.approx(0.5 * 1.01))]
    assert comparison.target is None and any("different data" in w for w in comparison.warnings)
    by_label = {c.label: c for c in comparison.configurations}
    assert by_label[f"echo x2, {large}"].baseline == f"sync, {large}"
    # each echo run reaches its own data's target at step 10, its baseline at step 20
    assert by_label[f"echo x2, {small}"].speedup == pytest.approx(2.0)
    assert by_label[f"echo x2, {large}"].speedup == pytest.approx(2.0)


def test_a_diverged_run_sets_no_target_final_loss_or_time_to_target() -> None:
    runs = [
        make_run("s0", [2.0, 1.0, 0.5], 1.0, seed=0),
        make_run("s1", [2.0], 1.0, status="diverged", seed=1),  # only its loss before training was finite
        make_run("e", [2.0, 0.5, 0.4], 1.0, algorithm="echo", echo_factor=2),
    ]
    comparison = compare_runs(runs)
    assert comparison.target == pytest.approx(0.5 * 1.01)  # not from the diverged run's 2.0
    sync = next(c for c in comparison.configurations if c.label == "sync")
    assert sync.final_mean == 0.5 and [run.name for run in sync.counted] == ["s0"]
    assert len(sync.reached) == 1
    row = next(row for row in table.rows(comparison) if row[0] == "sync")
    assert row[1] == "2 (1 diverged)" and row[2] == "20.0 (1/2 reached)" and row[5] == "0.5000"
    assert any("s1: diverged" in w and "sets no target" in w for w in comparison.warnings)
    # A configuration whose every run diverged has no final loss, no time to target, no speed-up.
    alone = compare_runs([make_run("d", [2.0], 1.0, status="diverged", algorithm="echo", echo_factor=2), runs[0]])
    diverged_row = next(row for row in table.rows(alone) if row[0] == "echo x2")
    assert diverged_row[2:] == ["diverged (0/1)"] * 3 + ["diverged", "-"]
