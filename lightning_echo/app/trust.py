"""What ``lightning-echo resume`` trusts in a run directory it did not write itself.

Run directories are shared and copied (reports read other people's runs), and a saved config is
code: every ``_target_`` in it is imported and called, every ``settings_checks`` entry too. A
resume therefore builds only what the packaged configs could have built: a callable that the
packaged configs name (resolved, as the run resolved it), or an optimizer or lr scheduler of
``torch.optim`` (``optimizer._target_=torch.optim.AdamW`` is an ordinary choice). Anything else
is refused in one line before anything is built, unless the user says ``--trust-config``.
Checkpoints are read weights-only (no pickled code runs), see :mod:`lightning_echo.app.resume`.
"""

from __future__ import annotations

import functools
import importlib.resources
from pathlib import Path
from typing import Any, Iterator, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lightning_echo.app.config import CONFIG_MODULE
from lightning_echo.errors import ConfigError

CALLABLE_KEYS = ("_target_",)
CALLABLE_BLOCKS = ("settings_checks",)  # every value of these blocks is a dotted callable
ALWAYS_TRUSTED_PREFIXES = ("torch.optim.",)
TRUST_FLAG = "--trust-config"


def _callables(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, the node holding a callable's name) for every callable a config names."""
    if isinstance(node, DictConfig):
        for key in node.keys():
            child_path = f"{path}.{key}" if path else str(key)
            if key in CALLABLE_KEYS:
                yield child_path, node
            elif key in CALLABLE_BLOCKS and not path and isinstance(node._get_node(key), DictConfig):
                block = node[key]
                for name in block.keys():
                    yield f"{child_path}.{name}", block
            else:
                yield from _callables(node._get_node(key), child_path)
    elif isinstance(node, ListConfig):
        for index in range(len(node)):
            yield from _callables(node._get_node(index), f"{path}[{index}]")


def _resolved_name(path: str, parent: DictConfig, key: str) -> str:
    try:
        value = parent[key]
    except OmegaConfBaseException as error:
        raise ConfigError(path, parent._get_node(key)._value(), f"cannot be resolved: {error}") from None
    return str(value)


def callables_named(cfg: DictConfig) -> dict[str, str]:
    """Every callable ``cfg`` names, by dotted key, resolved."""
    named = {}
    for path, parent in _callables(cfg):
        key = path.rsplit(".", 1)[-1]
        named[path] = _resolved_name(path, parent, key)
    return named


@functools.lru_cache(maxsize=1)
def packaged_callables() -> frozenset[str]:
    """The callables the packaged configs name (``lightning_echo/conf``), resolved."""
    import lightning_echo.app.resolvers  # noqa: F401  (the le.* resolvers the configs use)

    root = Path(str(importlib.resources.files(CONFIG_MODULE)))
    names: set[str] = set()
    for path in sorted(root.rglob("*.yaml")):
        loaded = OmegaConf.load(path)
        for dotted, parent in _callables(loaded):
            node = parent._get_node(dotted.rsplit(".", 1)[-1])
            raw = node._value() if node is not None else None
            if isinstance(raw, str) and raw.startswith("${") and not raw.startswith("${le."):
                continue  # an interpolation of another key, e.g. ${backend.strategy}: checked where it points
            try:
                names.add(str(OmegaConf.create({"v": raw}).v))
            except OmegaConfBaseException:
                continue
    return frozenset(names)


def untrusted_callable(cfg: DictConfig) -> Optional[tuple[str, str]]:
    """The first (dotted key, callable) of ``cfg`` that a resume does not build without
    ``--trust-config``; None when every callable is trusted."""
    trusted = packaged_callables()
    for key, name in callables_named(cfg).items():
        if name not in trusted and not name.startswith(ALWAYS_TRUSTED_PREFIXES):
            return key, name
    return None


def check_trusted(cfg: DictConfig, where: Path) -> None:
    """Refuse, in one line, a saved config that names a callable the packaged configs do not."""
    found = untrusted_callable(cfg)
    if found is not None:
        key, name = found
        raise ConfigError("resume", str(where), f"its saved config names {key}={name}, which the packaged configs do "
                          f"not (resume imports and calls what a config names); if you trust this run directory, "
                          f"resume it with {TRUST_FLAG}")
