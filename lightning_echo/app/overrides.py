"""Command-line overrides checked against the config before Hydra sees them.

Hydra's own errors are right but lead astray: ``echo.facter=2`` gets "To append to your config
use +echo.facter=2", and ``+echo.facter=2`` is then accepted and never read. Here a key the
config does not have is refused with the closest keys it does have; a new key (``+key=value``)
is accepted only where it becomes a constructor argument (under a node with ``_target_``), whose
constructor checks it. A value Hydra cannot parse gets a hint on quoting it.
"""

from __future__ import annotations

import difflib
from typing import Any, Iterator, Optional, Sequence

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from lightning_echo.errors import ConfigError, one_line

_ABSENT = object()
MAX_LISTED_KEYS = 12


def parse_overrides(overrides: Sequence[str]) -> list[Override]:
    """Parse command-line overrides with Hydra's grammar; a syntax error becomes a ConfigError
    naming the override, with a hint on quoting."""
    parser = OverridesParser.create()
    parsed: list[Override] = []
    for text in overrides:
        try:
            parsed += parser.parse_overrides([text])
        except (HydraException, ValueError) as error:  # ValueError: an integer of > 4300 digits
            raise syntax_error(text, error) from None
    return parsed


def syntax_error(text: str, error: Exception) -> ConfigError:
    """The one-line error for an override Hydra cannot parse."""
    key, _, value = text.partition("=")
    if "integer string conversion" in str(error):
        return ConfigError(key, value, "a number may have at most 4300 digits")
    reason = one_line(error, max_lines=1)
    if value.lstrip()[:1] in ("[", "{"):
        hint = "a list or dict must be one shell word: leave out the spaces or quote the whole override"
    else:
        hint = f"quote a value with special characters (= : # ( ) & ; spaces): {quoted_override(key, value)}"
    return ConfigError(key, value, f"cannot parse it ({reason}); {hint}")


def quoted_override(key: str, value: str) -> str:
    """``key=value`` with the value quoted for Hydra and the whole quoted for a POSIX shell:
    ``"+ckpt_path='/runs/epoch=1-step=10.ckpt'"``."""
    if "'" not in value:
        return f"\"{key}='{value}'\""
    return f"'{key}=\"{value}\"'"


def is_group_override(override: Override, groups: Sequence[str]) -> bool:
    """Whether ``override`` picks a config group option (``model=mlp``, ``+experiment=x``)."""
    return override.key_or_group in groups or "/" in override.key_or_group


def check_known_keys(overrides: Sequence[Override], base: DictConfig, groups: Sequence[str]) -> None:
    """Refuse value overrides of keys ``base`` (the job's config composed from its group choices
    alone) does not have, unless added with ``+`` under a node with ``_target_``."""
    for override in overrides:
        if is_group_override(override, groups) or override.is_delete() or override.is_hydra_override():
            continue
        key = override.key_or_group
        if OmegaConf.select(base, key, default=_ABSENT, throw_on_resolution_failure=False) is not _ABSENT:
            continue
        parent_key = key.rpartition(".")[0]
        parent = OmegaConf.select(base, parent_key, default=None, throw_on_resolution_failure=False) if parent_key else base
        target = parent.get("_target_") if isinstance(parent, DictConfig) else None
        if target is not None and (override.is_add() or override.is_force_add()):
            continue  # a constructor argument: the constructor refuses one it does not take
        raise unknown_key_error(override, base, parent if isinstance(parent, DictConfig) else None, target)


def unknown_key_error(override: Override, base: DictConfig, parent: Optional[DictConfig], target: Any) -> ConfigError:
    """``echo.facter=2 is not allowed: no such setting; did you mean echo.factor? (echo has: ...)``."""
    key = override.key_or_group
    typed_key, _, value_text = override.input_line.partition("=")
    parent_key = key.rpartition(".")[0]
    reason = "no such setting"
    if override.is_add() or override.is_force_add():
        reason += " (a key added with + here would be ignored)"
    suggestions = close_keys(key, base)
    if suggestions:
        reason += "; did you mean " + " or ".join(suggestions) + "?"
    if target is not None:
        reason += f"; to pass another argument to {target}, write +{key}={value_text}"
    elif parent is not None:
        keys = sorted(str(k) for k in parent if not str(k).startswith("_"))
        listed = ", ".join(keys[:MAX_LISTED_KEYS]) + (", ..." if len(keys) > MAX_LISTED_KEYS else "")
        reason += f" ({parent_key or 'the config'} has: {listed})"
    return ConfigError(typed_key, override.value(), reason)


def close_keys(key: str, cfg: DictConfig, limit: int = 3) -> list[str]:
    """The keys of ``cfg`` closest to ``key``, for "did you mean": a similar name under the same
    parent, the same name under another parent (``trainer.lr`` -> ``optimizer.lr``), a similar key."""
    known = [k for k in _dotted_keys(cfg) if not k.rpartition(".")[2].startswith("_")]
    parent_key, _, name = key.rpartition(".")
    siblings = {k.rpartition(".")[2]: k for k in known if k.rpartition(".")[0] == parent_key}
    near = [siblings[n] for n in difflib.get_close_matches(name, list(siblings), n=limit, cutoff=0.7)]
    near += [k for k in known if k.rpartition(".")[2] == name and k not in near]
    ancestors = {key.rsplit(".", depth)[0] for depth in range(1, key.count(".") + 1)}
    near += [k for k in difflib.get_close_matches(key, known, n=limit, cutoff=0.8) if k not in near and k not in ancestors]
    return near[:limit]


def _dotted_keys(cfg: DictConfig, prefix: str = "") -> Iterator[str]:
    for name, value in cfg.items_ex(resolve=False):
        dotted = f"{prefix}{name}"
        yield dotted
        if isinstance(value, DictConfig):
            yield from _dotted_keys(value, dotted + ".")
