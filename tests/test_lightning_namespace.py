"""lightning_echo works natively with ``pytorch_lightning`` and with ``lightning.pytorch`` (issue 10,
case 6): chosen by what the process imports, never importing the other one.

Each scenario is a fresh Python process (the choice is made once per process), with real fits on
Lightning's demo model. "Alone" scenarios hide the other package with an import hook installed by
a ``sitecustomize`` module, so it behaves as if uninstalled, also for the real console script.
The processes run a few at a time (they mostly import torch and Lightning).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Optional

import pytest

from conftest import TESTS, console_script
from lightning_echo.errors import ConfigError
from lightning_echo.lightning_namespace import ENV_VAR, LightningMissing, choose_package, pl

BOTH = {"pytorch_lightning", "lightning"}
# What uninstalling each package removes (the pytorch-lightning wheel also ships lightning_fabric).
PACKAGE_MODULES = {"pytorch_lightning": "pytorch_lightning,lightning_fabric", "lightning": "lightning"}

UNINSTALL_HOOK = '''
import importlib.abc, os, sys

class _Uninstalled(importlib.abc.MetaPathFinder):
    """Imports of these top-level packages fail as if they were not installed."""
    names = set(filter(None, os.environ.get("LE_TEST_UNINSTALLED", "").split(",")))

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None

sys.meta_path.insert(0, _Uninstalled())
'''

# Fits with DataEchoing + TrainingProgress, an echoed optimizer with EchoIterateAveraging, and
# SimulatedLearnersStrategy by instance and by its registered name; with LightningCLI, DataEchoing
# given on its command line. Prints what it saw as one JSON line.
FITS = '''
import json, sys
import torch
torch.set_num_threads(1)
{first}
import lightning_echo
from lightning_echo import DataEchoing, EchoedProx, EchoIterateAveraging, TrainingProgress
from lightning_echo.lightning_namespace import MODULE
from lightning_echo.stragglers import SimulatedLearnersStrategy
import {module} as lightning_module
from {module}.demos.boring_classes import BoringDataModule, BoringModel

def fit(model=None, **kwargs):
    trainer = lightning_module.Trainer(max_steps=4, logger=False, enable_checkpointing=False,
                                       enable_progress_bar=False, enable_model_summary=False, **kwargs)
    trainer.fit(model or BoringModel())
    return trainer

class ProxModel(BoringModel):
    def configure_optimizers(self):
        return EchoedProx(torch.optim.SGD(self.parameters(), lr=0.1), gamma=0.05)

echo, progress, averaging = DataEchoing(factor=2), TrainingProgress(), EchoIterateAveraging()
fit(ProxModel(), callbacks=[echo, progress, averaging])
by_instance = fit(strategy=SimulatedLearnersStrategy("k_async", learners=2, k=1))
by_name = fit(strategy="simulated_learners")
# a third-party-style module (torchmetrics, a DDP-style DataModule, OneCycleLR sized by the run)
sys.path.insert(0, {tests!r})
from project_modules import DigitsDataModule, OneCycleDigitsModule
one_cycle = OneCycleDigitsModule()
project = lightning_module.Trainer(strategy=SimulatedLearnersStrategy("k_sync", learners=4, k=2), max_epochs=1,
                                   logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                   enable_model_summary=False)
project.fit(one_cycle, datamodule=DigitsDataModule(batch_size=8))
seen = {{
    "module": MODULE,
    "is_callback": isinstance(echo, lightning_module.Callback),
    "echo": [echo.fresh_batches, echo.echoed_steps, progress.fresh_batches, averaging.count],
    "strategies": [type(by_instance.strategy).__name__, type(by_name.strategy).__name__,
                   by_instance.global_step, by_name.global_step],
    "project": [one_cycle.estimated_steps, project.global_step, "train/acc" in project.callback_metrics],
}}
if {cli}:
    from {module}.cli import LightningCLI
    cli = LightningCLI(BoringModel, BoringDataModule, save_config_callback=None, args=[
        "fit", "--trainer.max_steps=4", "--trainer.logger=false", "--trainer.enable_checkpointing=false",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        "--trainer.callbacks+=lightning_echo.echo.DataEchoing", "--trainer.callbacks.factor=2"])
    cli_echo = next(c for c in cli.trainer.callbacks if isinstance(c, DataEchoing))
    seen["cli"] = [cli_echo.fresh_batches, cli_echo.echoed_steps, cli.trainer.global_step]
seen["loaded"] = sorted(name for name in ("pytorch_lightning", "lightning", "lightning_fabric") if name in sys.modules)
print("SEEN " + json.dumps(seen))
'''

# A Trainer from the package lightning_echo did not choose: its callbacks refuse it at setup.
MIXED = '''
import torch
torch.set_num_threads(1)
{first}
import lightning_echo
from lightning_echo import DataEchoing
import {module} as lightning_module
from {module}.demos.boring_classes import BoringModel

trainer = lightning_module.Trainer(max_steps=4, callbacks=[DataEchoing(factor=2)], logger=False,
                                   enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
trainer.fit(BoringModel())
'''


def _run_python(code: str, tmp: Path, uninstalled: tuple[str, ...] = (), env_var: Optional[str] = None,
                args: Optional[list[str]] = None) -> subprocess.CompletedProcess:
    """``python -c code`` (or the console script with ``args``) in a fresh process, with the given
    packages uninstalled (as far as imports can tell) and ``$LIGHTNING_ECHO_LIGHTNING`` set or not."""
    hook_dir = tmp / "hook"
    hook_dir.mkdir(parents=True, exist_ok=True)
    (hook_dir / "sitecustomize.py").write_text(UNINSTALL_HOOK)
    env = {key: value for key, value in os.environ.items() if key != ENV_VAR}
    env.update({
        "PYTHONPATH": os.pathsep.join([str(hook_dir), env.get("PYTHONPATH", "")]),
        "LE_TEST_UNINSTALLED": ",".join(PACKAGE_MODULES[name] for name in uninstalled),
        "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "LIGHTNING_ECHO_OUTPUT": str(tmp / "outputs"),
        "WANDB_MODE": "offline",
    })
    if env_var is not None:
        env[ENV_VAR] = env_var
    command = [console_script(), *args] if args is not None else [sys.executable, "-c", textwrap.dedent(code)]
    return subprocess.run(command, cwd=tmp, env=env, capture_output=True, text=True, timeout=240)


FIRST = {"lightning": "import lightning as L", "pytorch_lightning": "import pytorch_lightning as pl", None: ""}
MODULE_OF = {"lightning": "lightning.pytorch", "pytorch_lightning": "pytorch_lightning"}
CLI_RUN = ["experiment=single", "algorithm=echo", "echo.factor=2", "trainer.max_steps=4",
           "trainer.enable_progress_bar=false", "trainer.accelerator=cpu", "logger=csv"]


def _scenarios() -> dict[str, tuple[str, dict]]:
    """Each scenario that trains (seconds each): its code and how to run it."""
    def fits(package: str, first: Optional[str], cli: bool) -> str:
        return FITS.format(first=FIRST[first], module=MODULE_OF[package], cli=cli, tests=str(TESTS))

    return {
        "lightning_first": (fits("lightning", "lightning", cli=True), {}),
        "pytorch_lightning_first": (fits("pytorch_lightning", "pytorch_lightning", cli=True), {}),
        "lightning_alone": (fits("lightning", None, cli=False), {"uninstalled": ("pytorch_lightning",)}),
        "pytorch_lightning_alone": (fits("pytorch_lightning", None, cli=False), {"uninstalled": ("lightning",)}),
        "console_script_lightning_alone": ("", {"uninstalled": ("pytorch_lightning",), "args": CLI_RUN}),
        "mixed_by_import_order": (MIXED.format(first="", module="lightning.pytorch"), {}),
        # The variable wins over the package imported first, and that package's Trainer is refused.
        "mixed_by_variable": (MIXED.format(first="import pytorch_lightning", module="pytorch_lightning"),
                              {"env_var": "lightning"}),
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, "Future[subprocess.CompletedProcess]"]]:
    """Every scenario's process, started at first use, three at a time."""
    root = tmp_path_factory.mktemp("namespace")
    pool = ThreadPoolExecutor(max_workers=3)
    futures = {}
    for name, (code, options) in _scenarios().items():
        (root / name).mkdir()
        futures[name] = pool.submit(_run_python, code, root / name, **options)
    yield futures
    pool.shutdown(wait=True)


def _seen(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("SEEN "))
    return json.loads(line[len("SEEN "):])


def _last_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0, result.stdout[-2000:]
    return result.stderr.strip().splitlines()[-1]


# -- both installed: the one imported first -------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("package, other", [("lightning", "pytorch_lightning"), ("pytorch_lightning", "lightning")])
def test_the_lightning_imported_first_is_used_and_the_other_never_loaded(runs: dict, package: str, other: str) -> None:
    seen = _seen(runs[f"{package}_first"].result())
    assert seen["module"] == MODULE_OF[package] and seen["is_callback"]
    # 4 steps at factor 2: 2 fresh batches, 2 echoes; the echoed optimizer averaged per fresh batch.
    assert seen["echo"] == [2, 2, 2, 2]
    assert seen["strategies"] == ["SimulatedLearnersStrategy", "SimulatedLearnersStrategy", 4, 4]
    assert seen["project"] == [6, 6, True]  # 12 mini-batches, K = 2: 6 updates, as the one-cycle schedule was told
    # LightningCLI took DataEchoing from its command line and echoed.
    assert seen["cli"] == [2, 2, 4]
    assert not set(PACKAGE_MODULES[other].split(",")) & set(seen["loaded"]), seen["loaded"]


# -- each alone -------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("package", ["lightning", "pytorch_lightning"])
def test_each_package_alone_works(runs: dict, package: str) -> None:
    # The other package is hidden as if uninstalled, and lightning_echo is imported before any
    # Lightning: it finds the one that is installed (with a direct import of the other, it fails).
    seen = _seen(runs[f"{package}_alone"].result())
    assert seen["module"] == MODULE_OF[package] and seen["is_callback"]
    assert seen["echo"] == [2, 2, 2, 2]
    assert seen["project"] == [6, 6, True]
    assert seen["strategies"] == ["SimulatedLearnersStrategy", "SimulatedLearnersStrategy", 4, 4]


@pytest.mark.slow
def test_the_command_line_runs_with_lightning_alone(runs: dict) -> None:
    # Models, datamodules, loggers (the configs' _target_s) and DataEchoing, from the console script.
    result = runs["console_script_lightning_alone"].result()
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = Path(next(line for line in result.stdout.splitlines() if line.startswith("outputs: ")).split(": ", 1)[1])
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "completed"
    assert (run_dir / "csv" / "metrics.csv").exists()
    assert "4 steps" in result.stdout and "128 fresh samples" in result.stdout  # 2 fresh batches of 64


# -- the environment variable and no Lightning (these fail before torch is imported) ----------------
def test_a_bad_variable_is_one_line(tmp_path: Path) -> None:
    result = _run_python("import lightning_echo", tmp_path, env_var="lightning.pytorch")
    assert _last_line(result) == (
        f"lightning_echo.errors.ConfigError: {ENV_VAR}='lightning.pytorch' is not allowed: "
        "must be lightning (lightning.pytorch) or pytorch_lightning")


def test_a_variable_naming_a_missing_package_is_one_line(tmp_path: Path) -> None:
    line = _last_line(_run_python("import lightning_echo", tmp_path, env_var="lightning", uninstalled=("lightning",)))
    assert line.startswith("lightning_echo.lightning_namespace.LightningMissing: lightning_echo builds on lightning")
    assert line.endswith(f"pip install 'lightning>=2.2,<3', or unset {ENV_VAR}")


def test_no_lightning_at_all_says_what_to_install(tmp_path: Path) -> None:
    line = _last_line(_run_python("import lightning_echo", tmp_path, uninstalled=("lightning", "pytorch_lightning")))
    assert "neither pytorch_lightning nor lightning is installed: pip install 'pytorch-lightning>=2.2,<3'" in line


# -- mixed ------------------------------------------------------------------------------------------
# Lightning 2.6 lets a foreign callback reach its setup hook, which refuses it; older releases refuse
# it in the Trainer's constructor ("Expected a parent"), so the warning given when it was built,
# with the other package imported, is what says how to fix it there.
REFUSED_AT_SETUP = tuple(int(part) for part in pl.__version__.split(".")[:2]) >= (2, 6)


@pytest.mark.slow
@pytest.mark.parametrize("scenario, chosen, reason, trainer_package", [
    # lightning_echo imported first chose pytorch_lightning (installed); the Trainer is lightning's.
    ("mixed_by_import_order", "pytorch_lightning", "pytorch_lightning is installed", "lightning"),
    # The variable chose lightning.pytorch although pytorch_lightning was imported first.
    ("mixed_by_variable", "lightning", f"{ENV_VAR}=lightning", "pytorch_lightning"),
])
def test_a_trainer_of_the_other_package_is_refused_with_the_fix(
        runs: dict, scenario: str, chosen: str, reason: str, trainer_package: str) -> None:
    result = runs[scenario].result()
    fix = f"set {ENV_VAR}={trainer_package}, or import {trainer_package} (and not {chosen}) before lightning_echo"
    component = f"DataEchoing is a {MODULE_OF[chosen]} component ({reason})"
    assert (f"{component}, and {trainer_package} is imported too: a {MODULE_OF[trainer_package]}.Trainer refuses it; "
            f"to train with that one, {fix}") in result.stderr
    line = _last_line(result)
    if REFUSED_AT_SETUP:
        assert line == (f"lightning_echo.lightning_namespace.MixedLightningError: {component} but the Trainer is a "
                        f"{MODULE_OF[trainer_package]}.Trainer: {fix}")


# -- the rule itself --------------------------------------------------------------------------------
def test_the_choice_rule() -> None:
    assert choose_package(None, set(), BOTH)[0] == "pytorch_lightning"
    assert choose_package(None, set(), {"lightning"})[0] == "lightning"
    assert choose_package(None, {"lightning"}, BOTH) == ("lightning", "lightning was imported before lightning_echo")
    assert choose_package(None, BOTH, BOTH) == ("pytorch_lightning", "pytorch_lightning is installed (and both were imported)")
    assert choose_package(" lightning ", {"pytorch_lightning"}, BOTH) == ("lightning", f"{ENV_VAR}=lightning")
    assert choose_package("", {"lightning"}, BOTH)[0] == "lightning"  # an empty variable is unset
    with pytest.raises(ConfigError, match=f"{ENV_VAR}='Lightning' is not allowed"):
        choose_package("Lightning", set(), BOTH)
    with pytest.raises(LightningMissing, match="neither pytorch_lightning nor lightning is installed"):
        choose_package(None, set(), set())
