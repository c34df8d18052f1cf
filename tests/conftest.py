"""Shared fixtures: every test writes runs under its own tmp_path, never the working directory."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from lightning_echo.data.formats.idx import write_idx

TESTS = Path(__file__).resolve().parent
REPOSITORY = TESTS.parent
SCRIPTS = TESTS / "scripts"  # programs the multi-process tests start (a user's script, a world of ranks)
MNIST_DIR = REPOSITORY.parent / "shared" / "data" / "mnist"


@pytest.fixture(autouse=True)
def _isolated_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIGHTNING_ECHO_OUTPUT", str(tmp_path / "le_outputs"))
    monkeypatch.setenv("WANDB_MODE", os.environ.get("WANDB_MODE", "offline"))
    monkeypatch.delenv("LIGHTNING_ECHO_DATA", raising=False)


def quiet_trainer_overrides() -> list[str]:
    """Overrides that keep a CLI run small and quiet."""
    return ["trainer.enable_progress_bar=false", "trainer.accelerator=cpu"]


def single_run_overrides() -> list[str]:
    """One plain run (not the default sync-vs-echo comparison), small and quiet."""
    return ["experiment=single", *quiet_trainer_overrides()]


def console_script() -> str:
    """Path of the installed ``lightning-echo`` script next to this Python."""
    script = Path(sys.executable).with_name("lightning-echo")
    found = str(script) if script.exists() else shutil.which("lightning-echo")
    assert found, "the lightning-echo console script is not installed"
    return found


def run_cli(args: list[str], cwd: Path, env_extra: dict[str, str] | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
    """Run the installed console script in a subprocess and return the completed process."""
    env = dict(os.environ)
    env.update(env_extra or {})
    env["PYTHONUNBUFFERED"] = "1"
    return subprocess.run(
        [console_script(), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def main_error(capsys: pytest.CaptureFixture, args: list[str]) -> str:
    """Run ``lightning_echo.cli.main(args)`` in process: it must exit 2 with one stderr line, returned."""
    from lightning_echo.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def quiet_trainer(callbacks: list, **kwargs: Any) -> Any:
    """A CPU Trainer with no logger, checkpoints, progress bar, summary, sanity check or validation
    (``kwargs`` override any of these)."""
    import pytorch_lightning as pl

    settings: dict[str, Any] = dict(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
    )
    settings.update(kwargs)
    return pl.Trainer(callbacks=callbacks, **settings)


def processes_under(tmp_path: Path) -> list[int]:
    """Live processes whose command line names a path under ``tmp_path`` (the ranks name their spec folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if str(tmp_path) in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


@pytest.fixture
def no_leftovers(tmp_path: Path):
    """After the test: no rank process and no spec folder left (killed if any, so nothing outlives the test)."""
    yield
    left = processes_under(tmp_path)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert left == [], "rank processes outlived the command"
    assert list((tmp_path / "tmp").glob("lightning-echo-ranks-*")) == []


def run_record(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "run.json").read_text())


def only_run_dir(tmp_path: Path) -> Path:
    runs = list((tmp_path / "le_outputs" / "runs").iterdir())
    assert len(runs) == 1, runs  # a rank that re-ran the command line would have made its own
    return runs[0]


def write_mnist_like(
    directory: Path,
    gz: bool = True,
    n_train: int = 48,
    n_val: int = 24,
    image_shape: tuple[int, int] = (28, 28),
    n_labels: dict[str, int] | None = None,
    max_label: int = 9,
) -> Path:
    """The four IDX files with random images and labels; ``n_labels`` overrides a labels file's length."""
    directory.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    suffix = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_val)):
        images = torch.randint(0, 256, (n, *image_shape), generator=generator, dtype=torch.uint8)
        n_lab = (n_labels or {}).get(prefix, n)
        labels = torch.randint(0, max_label + 1, (n_lab,), generator=generator, dtype=torch.uint8)
        write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
    return directory


@pytest.fixture(scope="session")
def mnist_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A data root holding ``mnist/``, and the recipe flags it needs: real MNIST when ``../shared``
    has it; on a clone without it, small random files in the same IDX format (which only
    ``--no-verify-checksums`` accepts)."""
    if MNIST_DIR.is_dir() and any(MNIST_DIR.glob("train-images-idx3-ubyte*")):
        return MNIST_DIR.parent, []
    root = tmp_path_factory.mktemp("data")
    write_mnist_like(root / "mnist", n_train=2000, n_val=200)
    return root, ["--no-verify-checksums"]


@pytest.fixture(scope="module")
def launcher(tmp_path_factory: pytest.TempPathFactory):
    """The parameter-server core's world launcher (``core_worlds.py``), one per test module: torch
    is imported once for all its worlds; its whole process group is killed at the end."""
    from core_worlds import start_launcher, stop_launcher  # it imports this module

    with (tmp_path_factory.mktemp("ps_launcher") / "launcher.log").open("w") as log:
        process = start_launcher(log)
        try:
            yield process
        finally:
            stop_launcher(process)
