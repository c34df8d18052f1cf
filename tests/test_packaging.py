"""The installed package ships its Hydra configs and lists every subpackage."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from lightning_echo.app.config import GROUPS

REPO = Path(__file__).resolve().parents[1]


def test_every_package_is_listed_in_pyproject() -> None:
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {
        ".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "lightning_echo").rglob("__init__.py")
    } | {"lightning_echo.conf"}
    assert on_disk == listed


@pytest.mark.slow
def test_non_editable_install_finds_every_config(tmp_path: Path) -> None:
    target = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(REPO)],
        capture_output=True, text=True, timeout=300,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    assert (target / "lightning_echo" / "conf" / "config.yaml").is_file()
    workdir = tmp_path / "unrelated"
    workdir.mkdir()
    probe = (
        "import lightning_echo, pathlib\n"
        "from lightning_echo.app.config import GROUPS, compose_config, group_options\n"
        "assert str(pathlib.Path(lightning_echo.__file__).resolve()).startswith(str(pathlib.Path(r'%s').resolve())), lightning_echo.__file__\n"
        "n = 0\n"
        "for g in GROUPS:\n"
        "    for o in group_options(g):\n"
        "        compose_config([f'{g}={o}']); n += 1\n"
        "print('composed', n)\n"
    ) % target
    env = dict(os.environ, PYTHONPATH=str(target))
    result = subprocess.run([sys.executable, "-c", probe], cwd=workdir, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    expected = sum(len(list((REPO / "conf" / g).glob("*.yaml"))) for g in GROUPS)
    assert result.stdout.strip() == f"composed {expected}"
    run = subprocess.run(
        [sys.executable, "-m", "lightning_echo", "experiment=single", "trainer.max_steps=5", "trainer.enable_progress_bar=false"],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=240,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "outputs: " in run.stdout and list(workdir.iterdir()) == []
