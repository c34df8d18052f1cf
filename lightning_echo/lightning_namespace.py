"""Which Lightning lightning_echo builds on: ``pytorch_lightning`` or ``lightning.pytorch``.

Lightning ships one Trainer under two names, the ``pytorch_lightning`` package and the ``pytorch``
part of the ``lightning`` package (``import lightning as L``). Their classes are distinct: a
callback built on one is not a callback of the other's Trainer. lightning_echo picks one, once,
when it is first imported:

1. ``$LIGHTNING_ECHO_LIGHTNING`` (``lightning`` or ``pytorch_lightning``) when set;
2. else the one this process has already imported, if exactly one is;
3. else ``pytorch_lightning`` if installed, else ``lightning``.

Every module of the package imports Lightning from here (``from lightning_echo.lightning_namespace
import pl``, and :func:`import_lightning` for submodules), so the other package is never imported.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import warnings
from types import ModuleType
from typing import Collection, Optional

from lightning_echo.errors import ConfigError, LightningEchoError

ENV_VAR = "LIGHTNING_ECHO_LIGHTNING"
# The package a user installs and imports -> the module that holds its Trainer.
MODULES = {"pytorch_lightning": "pytorch_lightning", "lightning": "lightning.pytorch"}
SUPPORTED = "2.2 to 2.x"
INSTALL_HINT = "pip install 'pytorch-lightning>=2.2,<3' (or 'lightning>=2.2,<3' for `import lightning`)"


class LightningMissing(LightningEchoError, ImportError):
    """The Lightning package lightning_echo would build on is not installed."""


class MixedLightningError(LightningEchoError, RuntimeError):
    """A lightning_echo component built on one Lightning package meets a Trainer of the other."""


def choose_package(env_value: Optional[str], imported: Collection[str], installed: Collection[str]) -> tuple[str, str]:
    """The Lightning package to build on (a key of :data:`MODULES`) and why, from the environment
    variable's value, the packages already imported and those installed."""
    if env_value is not None and env_value.strip():
        choice = env_value.strip()
        if choice not in MODULES:
            raise ConfigError(ENV_VAR, env_value, "must be lightning (lightning.pytorch) or pytorch_lightning")
        return choice, f"{ENV_VAR}={choice}"
    loaded = [name for name in MODULES if name in imported]
    if len(loaded) == 1:
        return loaded[0], f"{loaded[0]} was imported before lightning_echo"
    for name in MODULES:
        if name in installed:
            return name, f"{name} is installed" + (" (and both were imported)" if len(loaded) == 2 else "")
    raise LightningMissing(f"lightning_echo needs PyTorch Lightning {SUPPORTED}, and neither pytorch_lightning "
                           f"nor lightning is installed: {INSTALL_HINT}")


def _is_installed(name: str) -> bool:
    if name in sys.modules:
        return sys.modules[name] is not None  # None: the import is blocked, as if not installed
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _import_chosen(package: str, reason: str) -> ModuleType:
    try:
        return importlib.import_module(MODULES[package])
    except ImportError as error:
        raise LightningMissing(f"lightning_echo builds on {package} ({reason}), which cannot be imported "
                               f"({error}): pip install '{package.replace('_', '-')}>=2.2,<3'"
                               + (f", or unset {ENV_VAR}" if reason.startswith(ENV_VAR) else "")) from None


PACKAGE, REASON = choose_package(
    os.environ.get(ENV_VAR),
    imported={name for name in MODULES if sys.modules.get(name) is not None},
    installed={name for name in MODULES if _is_installed(name)},
)
MODULE = MODULES[PACKAGE]
pl = _import_chosen(PACKAGE, REASON)


def import_lightning(path: str) -> ModuleType:
    """The chosen Lightning's submodule ``path`` (e.g. ``"utilities.exceptions"``)."""
    return importlib.import_module(f"{MODULE}.{path}")


def lightning_of(obj: object) -> Optional[str]:
    """``"pytorch_lightning"`` or ``"lightning.pytorch"``: the Lightning ``obj``'s class comes from
    (its first class that comes from either); None for anything else."""
    for cls in type(obj).__mro__:
        for module in MODULES.values():
            if cls.__module__ == module or cls.__module__.startswith(module + "."):
                return module
    return None


def _how_to_use(package: str) -> str:
    return f"set {ENV_VAR}={package}, or import {package} (and not {PACKAGE}) before lightning_echo"


def require_same_lightning(trainer: object, component: object) -> None:
    """Refuse, in one line that says how to fix it, a Trainer from the Lightning package
    lightning_echo did not choose (``component`` is the callback or strategy being set up)."""
    if isinstance(trainer, pl.Trainer):
        return
    other = lightning_of(trainer)
    if other is None:
        raise MixedLightningError(f"{type(component).__name__} needs a {MODULE}.Trainer, got {type(trainer).__name__}")
    package = next(name for name, module in MODULES.items() if module == other)
    raise MixedLightningError(
        f"{type(component).__name__} is a {MODULE} component ({REASON}) but the Trainer is a {other}.Trainer: "
        + _how_to_use(package)
    )


_warned_other_imported = False


def warn_if_other_lightning_imported(component: object) -> None:
    """Warn (once per process) when a component is built while the other Lightning package is
    imported too. Its Trainer would refuse the component before :func:`require_same_lightning`
    can: a callback with ``ValueError: Expected a parent`` (Lightning < 2.6), a strategy with
    ``invalid strategy name``; this line says how to fix that."""
    global _warned_other_imported
    other = next(name for name in MODULES if name != PACKAGE)
    if _warned_other_imported or sys.modules.get(other) is None:
        return
    _warned_other_imported = True
    warnings.warn(
        f"{type(component).__name__} is a {MODULE} component ({REASON}), and {other} is imported too: a "
        f"{MODULES[other]}.Trainer refuses it; to train with that one, {_how_to_use(other)}",
        stacklevel=3,
    )
