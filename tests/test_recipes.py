"""Recipes: the "existing project" script runs with and without its three-line change, and the
recipes README and the experiment presets agree."""

from __future__ import annotations

import importlib
import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import pytest

from lightning_echo.app.config import group_options

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"


def _run_existing_project(*args: str) -> tuple[int, int]:
    result = subprocess.run([sys.executable, str(RECIPES / "existing_project.py"), "--steps", "40", *args],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    match = re.search(r"(\d+) optimizer steps on (\d+) fresh batches", result.stdout)
    assert match, result.stdout
    return int(match.group(1)), int(match.group(2))


@pytest.mark.slow
def test_existing_project_recipe_echoes_with_its_three_line_change() -> None:
    steps, fresh = _run_existing_project()
    assert steps == 40 and 10 <= fresh < 40  # auto echoing: up to 4 serves per fresh batch
    assert _run_existing_project("--no-echo") == (40, 40)
    source = (RECIPES / "existing_project.py").read_text()
    assert len(re.findall(r"# lightning_echo \(\d/3\)", source)) == 3


def test_recipes_readme_names_only_existing_presets_and_every_preset() -> None:
    readme = (RECIPES / "README.md").read_text()
    named = set(re.findall(r"experiment=(\w+)", readme))
    presets = set(group_options("experiment"))
    assert named <= presets, f"README names missing presets: {sorted(named - presets)}"
    assert presets <= named, f"presets without a recipe line: {sorted(presets - named)}"


def _run_recipe(script: str, out: Path, *args: str) -> dict:
    result = subprocess.run([sys.executable, str(RECIPES / script), "--out", str(out), "--points", "4", *args],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    stem = {"dutta_fig8.py": "dutta_fig8", "dutta_fig9.py": "dutta_fig9",
            "mishchenko_least_squares.py": "mishchenko_least_squares"}[script]
    report = (out / f"{stem}.md").read_text()
    assert f"python recipes/{script}" in report and (out / f"{stem}.png").stat().st_size > 0
    return json.loads((out / f"{stem}.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("script, args, methods", [
    ("dutta_fig8.py", ["--horizon-scale", "0.01", "MNIST"], ["sync", "k_sync", "k_batch_async", "async"]),
    ("dutta_fig9.py", ["--horizon-scale", "0.02", "--dataset", "mnist", "MNIST"],
     ["async", "async_adaptive", "paper_lr", "control"]),
    ("mishchenko_least_squares.py", ["--horizon-scale", "0.02", "--no-tune"],
     ["sync", "async", "async_adaptive", "rennala", "ringmaster"]),
])
def test_simulated_learner_recipes_write_their_results(tmp_path: Path, script: str, args: list[str],
                                                       methods: list[str], mnist_files: tuple[Path, list[str]]) -> None:
    root, flags = mnist_files  # "MNIST" stands for the data root (real MNIST, or small files in its format)
    args = [item for arg in args for item in (["--data-root", str(root), *flags] if arg == "MNIST" else [arg])]
    results = _run_recipe(script, tmp_path, *args)
    curves = {curve["method"]["key"]: curve for curve in results["curves"]}
    assert list(curves) == methods
    for curve in curves.values():
        assert curve["updates"][-1] > 0 and len(curve["values"]) >= 2
        assert all(math.isfinite(v) for v in curve["values"])
        assert curve["times"] == sorted(curve["times"])
    if script == "dutta_fig8.py":  # sync waits for all 8 learners, async for one: far fewer updates
        assert curves["sync"]["updates"][-1] * 5 < curves["async"]["updates"][-1]
        assert curves["async"]["mean_staleness"] > curves["k_batch_async"]["mean_staleness"] > 0
        assert curves["k_sync"]["mean_staleness"] == 0
    if script == "mishchenko_least_squares.py":  # the histogram equals the schedule replayed on its own
        assert results["replayed_staleness"] == curves["async"]["staleness_per_update"]
        assert curves["rennala"]["discarded"] > 0 and curves["ringmaster"]["cancelled"] > 0


@pytest.mark.slow
def test_the_echo_on_stragglers_recipe_writes_its_results(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(RECIPES / "echo_stragglers.py"), "--out", str(tmp_path), "--points", "20",
                             "--horizon-scale", "0.05", "--seeds", "1"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = (tmp_path / "echo_stragglers.md").read_text()
    assert "python recipes/echo_stragglers.py" in report and (tmp_path / "echo_stragglers.png").stat().st_size > 0
    runs = json.loads((tmp_path / "echo_stragglers.json").read_text())["runs"]
    keys = {(r["cluster"], r["key"]) for r in runs}
    assert ("data-bound", "async+echo") in keys and ("data-rich", "sync+echo") in keys and len(runs) == 12
    by = {(r["cluster"], r["key"]): r for r in runs}
    assert by[("data-bound", "async+echo")]["echoed_gradients"] > 0 and by[("data-bound", "async")]["echoed_gradients"] == 0
    # a data-rich cluster never waits long enough for p_sync's learners to echo: the same run
    assert by[("data-rich", "sync+echo")]["final"] == by[("data-rich", "sync")]["final"]


# -- findings computed from the numbers (issue 21) ----------------------------------------------------
def _recipe(name: str) -> Any:
    """A recipe script as a module (they import their sibling ``simulated_runs`` by name)."""
    if str(RECIPES) not in sys.path:
        sys.path.insert(0, str(RECIPES))
    return importlib.import_module(name)


def _curve(key: str, times: list[float], values: list[float], gradients: Optional[list[int]] = None) -> Any:
    runs = _recipe("simulated_runs")
    gradients = gradients if gradients is not None else [int(10 * t) for t in times]
    return runs.Curve(runs.Method(key, key, "async", 0.1), times=times, values=values, gradients=gradients,
                      updates=gradients)


def test_fig8_ordering_headline_follows_the_times() -> None:
    fig8 = _recipe("dutta_fig8")
    paper = {"async": 80.0, "k_batch_async": 240.0, "k_sync": 280.0, "sync": 1084.0}
    holds = fig8.ordering_sentence(paper, 1.0)
    assert holds.startswith("**The paper's ordering holds.**") and "sync needs 1084 s" in holds
    swapped = fig8.ordering_sentence({**paper, "k_batch_async": 300.0}, 1.0)
    assert "does not hold" in swapped and "K-batch-async is not sooner than K-sync" in swapped
    assert "holds.**" not in swapped
    tied = fig8.ordering_sentence({**paper, "async": 240.0}, 1.0)  # equal times: within one evaluation
    assert "async is not sooner than K-batch-async" in tied
    unreached = fig8.ordering_sentence({**paper, "sync": None, "k_sync": None}, 0.75)
    assert "K-sync is not sooner than sync" in unreached and "not within the run" in unreached
    assert "far behind" in holds and "last" in fig8.ordering_sentence({**paper, "sync": 300.0}, 1.0)


def test_fig8_k_batch_async_sentences_follow_the_numbers() -> None:
    fig8 = _recipe("dutta_fig8")
    times = {"async": 80.0, "k_batch_async": 240.0, "k_sync": 280.0, "sync": 1084.0}
    per_update = {"k_batch_async": 0.494, "k_sync": 0.626}
    assert fig8.kbatch_sentence(times, per_update, 1.0).startswith("K-batch-async beats K-sync in time")
    slower = fig8.kbatch_sentence({**times, "k_batch_async": 320.0}, per_update, 1.0)
    assert slower.startswith("K-batch-async does not beat K-sync in time here")
    assert "despite its faster updates" in slower
    assert "not faster" in fig8.kbatch_sentence(times, {"k_batch_async": 0.7, "k_sync": 0.626}, 1.0)
    assert fig8.between_sentence(times).startswith("**K-batch-async between async and sync**")
    assert "not between" in fig8.between_sentence({**times, "k_batch_async": 60.0})
    gradients = {"async": 656, "k_batch_async": 1892, "k_sync": 1788, "sync": 5000}
    assert fig8.gradients_sentence(gradients, 1.0).endswith("async is ahead.")
    assert "async is not ahead of K-sync" in fig8.gradients_sentence({**gradients, "async": 1800}, 1.0)


def test_fig9_stability_headline_follows_the_curves() -> None:
    fig9 = _recipe("dutta_fig9")
    times = [0.0, 20.0, 40.0, 60.0, 80.0, 100.0]
    settled = _curve("async_adaptive", times, [2.5, 1.2, 1.1, 1.05, 1.02, 1.01])
    jumping = _curve("async", times, [2.5, 9.0, 4.0, 3.9, 21.1, 7.4])
    below_start_but_wide = _curve("async", times, [2.5, 1.2, 1.0, 0.6, 2.0, 0.7])
    diverged = _curve("async", times[:3], [2.5, 9.0, 60.0])
    diverged.diverged_at = 40.0
    assert fig9.stable(settled, 100.0) and not fig9.stable(jumping, 100.0)
    assert not fig9.stable(below_start_but_wide, 100.0) and not fig9.stable(diverged, 100.0)
    assert (fig9.stability_headline(fig9.stable(jumping, 100.0), fig9.stable(settled, 100.0))
            == "**The fixed step becomes unstable, eq. (13) stays stable.**")
    assert "Both stay stable" in fig9.stability_headline(True, True)
    assert "Both become unstable" in fig9.stability_headline(False, False)
    assert "eq. (13) does not" in fig9.stability_headline(True, False)
    assert fig9.run_state(jumping, 100.0).startswith("does not settle")
    assert fig9.run_state(settled, 100.0).startswith("stays between")
    assert fig9.run_state(diverged, 100.0).startswith("diverged")
    assert "comes from the staleness" in fig9.control_sentence(False, True)
    assert "not only" in fig9.control_sentence(False, False)


def test_mishchenko_findings_follow_the_curves() -> None:
    mish = _recipe("mishchenko_least_squares")
    times = [0.0, 50.0, 100.0, 150.0, 200.0, 250.0, 275.0, 300.0]
    sync = _curve("sync", times, [1.0, 2e-2, 1e-2, 1e-4, 5e-5, 2.99e-5, 2.5e-5, 1.5e-5])
    fast = _curve("async", times, [1.0, 1e-3, 1e-4, 5e-5, 4.5e-5, 4.15e-5, 1.9e-5, 1.8e-5])
    sentence = mish.end_against_targets(sync, [fast, fast], 250.0)
    assert sentence.startswith("**Minibatch SGD ends lower, asynchronous SGD gets there sooner.**")
    assert "minibatch SGD ends lower (2.99e-5 against 4.15e-5 / 4.15e-5 at t = 250)" in sentence
    assert "reaches every target from 1e-2 down to 2e-5 sooner" in sentence
    no_2e5 = _curve("async", times, [1.0, 1e-3, 1e-4, 5e-5, 4.5e-5, 4.15e-5, 3e-5, 3e-5])
    assert "every target from 1e-2 down to 5e-5 sooner" in mish.end_against_targets(sync, [fast, no_2e5], 250.0)
    late = _curve("async", times, [1.0, 0.5, 1e-2, 1e-4, 2e-5, 1e-5, 1e-5, 1e-5])  # ties sync down to 5e-5
    contradicted = mish.end_against_targets(sync, [late], 250.0)
    assert "reaches every target" not in contradicted and "asynchronous SGD ends lower (2.99e-5 against 1e-5 at t = 250) and is sooner" in contradicted
    assert "sooner to 1 of the 9 targets from 1e-2 down to 2e-5" in contradicted
    assert "not to 1e-2, 5e-3, 2e-3, 1e-3, 5e-4, 2e-4, 1e-4, 5e-5" in contradicted
    one_target = _curve("async", times, [1.0, 1e-2, 6e-3, 6e-3, 6e-3, 6e-3, 6e-3, 6e-3])
    assert "reaches 1e-2, the only target all reach, sooner" in mish.end_against_targets(sync, [fast, one_target], 250.0)
    assert "cannot be checked" in mish.time_headline(None, None, None)
    assert mish.time_headline(154.0, 63.0, 63.0) == "**In time, asynchronous SGD beats minibatch SGD** (the claim)"
    assert "only with the delay-adaptive step" in mish.time_headline(154.0, 160.0, 63.0)
    assert "does not beat" in mish.time_headline(154.0, None, 200.0)
    assert mish.gradients_headline(600, 641, 641).startswith("**Against gradients minibatch SGD is ahead**")
    assert "is not ahead here" in mish.gradients_headline(700, 641, 800)
    assert [mish.sci(v) for v in (2.9854e-5, 1e-4, 9.996e-5, 0.01)] == ["2.99e-5", "1e-4", "1e-4", "1e-2"]


def test_committed_findings_are_what_their_numbers_say() -> None:
    runs, results = _recipe("simulated_runs"), RECIPES / "results"
    fig8 = _recipe("dutta_fig8")
    curves = runs.load_curves(results / "dutta_fig8.json")
    by = {c.method.key: c for c in curves}
    target = fig8.ordering_target(curves)
    times = {key: by[key].first_time(target) for key in fig8.PAPER_ORDER}
    per_update = {key: by[key].times[-1] / by[key].total_updates for key in fig8.PAPER_ORDER}
    report = (results / "dutta_fig8.md").read_text()
    assert fig8.ordering_sentence(times, target) in report
    assert fig8.kbatch_sentence(times, per_update, target) in report

    fig9 = _recipe("dutta_fig9")
    by = {c.method.key: c for c in runs.load_curves(results / "dutta_fig9.json")}
    report = (results / "dutta_fig9.md").read_text()
    headline = fig9.stability_headline(fig9.stable(by["async"], 100.0), fig9.stable(by["async_adaptive"], 100.0))
    assert f"- {headline} " in report and fig9.run_state(by["async"], 100.0) in report

    mish = _recipe("mishchenko_least_squares")
    by = {c.method.key: c for c in runs.load_curves(results / "mishchenko_least_squares.json")}
    report = (results / "mishchenko_least_squares.md").read_text()
    sentence = mish.end_against_targets(by["sync"], [by["async"], by["async_adaptive"]], 250.0)
    assert "minibatch SGD ends lower (2.99e-5 against 4.15e-5 / 3.31e-5 at t = 250)" in sentence
    assert "reaches every target from 1e-2 down to 2e-5 sooner" in sentence
    assert f"- {sentence}" in report
    first = [by[k].first_time(mish.MISH_TARGET) for k in ("sync", "async", "async_adaptive")]
    assert f"- {mish.time_headline(*first)}: " in report


def test_agarwal_breaks_ties_between_equally_fast_step_sizes_by_its_stated_rule() -> None:
    agarwal = _recipe("agarwal_convex")

    def job(lr: float, steps: int, loss: Optional[float]) -> Any:
        return agarwal.Job("sgd", 1024, 2, lr, True, steps, steps * 512, loss)

    # directory-name order lists step size 4 first; 2 reaches the target in as many steps
    tie_same_loss = [job(4.0, 52, 0.4840), job(2.0, 52, 0.4840), job(1.0, 60, 0.4800)]
    for jobs in (tie_same_loss, tie_same_loss[::-1]):
        assert agarwal.best_per_setting(jobs)[("sgd", 1024, 2)].lr == 2.0
    tie_lower_loss = [job(2.0, 52, 0.4841), job(4.0, 52, 0.4835)]
    for jobs in (tie_lower_loss, tie_lower_loss[::-1]):
        assert agarwal.best_per_setting(jobs)[("sgd", 1024, 2)].lr == 4.0
    assert agarwal.best_per_setting([job(4.0, 48, 0.49), job(2.0, 52, 0.47)])[("sgd", 1024, 2)].lr == 4.0
    shown = agarwal.table(tie_same_loss, agarwal.best_per_setting(tie_same_loss))
    assert "| sgd | 1024 | 2 | 2 (tied in steps: 4) | 52 | 26624 |  |" in shown  # not at the grid edge
    assert "lowest loss" in agarwal.TIE_RULE and "smallest step size" in agarwal.TIE_RULE
    assert "ties: the lowest loss at that step, then the smallest step size" in (RECIPES / "README.md").read_text()
    committed = (RECIPES / "results" / "agarwal_synthetic.md").read_text()
    assert agarwal.TIE_RULE in committed and "| sgd | 1024 | 2 | 4 (tied in steps: 2) | 52 | 26144 | yes |" in committed


# -- no machine's paths in committed results ---------------------------------------------------------------
def test_recipe_commands_name_placeholders_for_machine_paths() -> None:
    runs = _recipe("simulated_runs")
    script = str(RECIPES / "dutta_fig8.py")  # as sys.argv[0] holds it, wherever the clone is
    assert (runs.command_line([script, "--data-root", "/srv/datasets/mnist", "--seed", "1"])
            == "python recipes/dutta_fig8.py --data-root DATA_ROOT --seed 1")
    assert (runs.command_line([script, "--data-root=../shared/data", "--out", "/tmp/f8"])
            == "python recipes/dutta_fig8.py --data-root=DATA_ROOT --out OUT_DIR")
    assert runs.command_line([script, "--out", "runs"]) == "python recipes/dutta_fig8.py --out runs"
    assert runs.command_line([script, "--out", "../elsewhere"]).endswith("--out OUT_DIR")
    lines = runs.command_lines([script, "--data-root", "/data"])
    assert lines[0] == "    python recipes/dutta_fig8.py --data-root DATA_ROOT" and "`DATA_ROOT` is" in lines[-1]
    assert runs.command_lines([script]) == ["    python recipes/dutta_fig8.py"]


MACHINE_PATH = re.compile(r"(?<![\w<`$])(?:/(?:work|tmp|home|root|mnt|Users|srv|scratch)/|\.\./shared\b)")


def test_committed_results_quote_no_path_of_the_machine_that_made_them() -> None:
    files = [RECIPES / "README.md", *sorted((RECIPES / "results").glob("*.md")),
             *sorted((RECIPES / "results").glob("*.json"))]
    found = {f"{path.name}: {match.group(0)}" for path in files for match in MACHINE_PATH.finditer(path.read_text())}
    assert not found, sorted(found)
    for path in files:  # every quoted command: no absolute or parent-relative path at all
        for command in re.findall(r"python recipes/\S+\.py[^\n`\"]*", path.read_text()):
            assert not re.search(r"(?:^|[\s=])(?:/|\.\./|~/)", command.split(".py", 1)[1]), f"{path.name}: {command}"
