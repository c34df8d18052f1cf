"""Recipes: the "existing project" script runs with and without its three-line change, and the
recipes README and the experiment presets agree."""

from __future__ import annotations

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
