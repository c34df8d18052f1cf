"""Recipes: the "existing project" script runs with and without its three-line change, and the
recipes README and the experiment presets agree."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

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
