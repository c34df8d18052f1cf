"""What a run's settings are for a comparison: which runs are seeds of one configuration, which
settings tell configurations apart, and which runs trained the same data.

A run records its whole resolved config (``config`` in its flat record). Two runs are seeds of
one configuration when those configs are equal except for every key named ``seed`` and the keys
listed in :data:`NOT_A_RESULT_SETTING`. Records without the resolved config (older runs) are
compared by their flat keys instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from lightning_echo.records import ALGORITHM_KEYS, BASELINE, CLOCK, LABEL

SEED = "seed"  # every key of this name is the run's seed or a copy of it (data shuffling, echoing, delays)
RESOLVED = "config"  # the flat record's key holding the whole resolved config

# The one list of settings that cannot change a run's result: a key, or a section with all its keys.
NOT_A_RESULT_SETTING: tuple[str, ...] = (
    "paths",                        # where outputs are written
    "logger",                       # where metrics are logged
    "report",                       # how the report after a sweep is built
    "checkpoint",                   # when checkpoints are saved (a resumed run equals an uninterrupted one)
    "settings_checks",              # which class checks each settings block before a run
    "hydra",
    "validate_before_training",     # one extra validation before the first step
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.enable_checkpointing",
    "data.download",                # how the files got there, not what they hold
    "data.verify_checksums",
    # Settings pools of the algorithms (present for every algorithm so sweeps compose): what a run's
    # algorithm uses from them is resolved into its `algorithm` (and `optimizer`) section.
    "echo",
    "stale",
)
# Keys of the data section that say how the data is served, not which data it is.
DATA_LOADING: tuple[str, ...] = ("data.batch_size", "data.num_workers")
# Flat keys that describe a run rather than set it up (records without the resolved config).
FLAT_DESCRIPTORS = {"group", "name", RESOLVED, LABEL, ALGORITHM_KEYS, CLOCK, BASELINE}
# Sections a baseline and the runs compared with it may differ in (resolved configs), and the
# flat keys that say the same (flat records add the algorithm's declared keys).
ALGORITHM_SECTION, OPTIMIZER_SECTION = "algorithm", "optimizer"
_MISSING = object()


@dataclass(frozen=True)
class Settings:
    """A run's settings as compared: ``values`` (key -> value), the keys its algorithm's label
    stands for (``own``), the keys a baseline may differ in (``common``), and ``data``, what
    identifies the data it trained on."""

    values: dict[str, Any]
    own: frozenset[str]
    common: frozenset[str]
    data: dict[str, Any]

    @property
    def identity(self) -> str:
        """Equal for runs of one configuration (seeds)."""
        return canonical(self.values)

    def context(self) -> dict[str, Any]:
        """The settings outside the algorithm and the optimizer (what a baseline must share)."""
        return {k: v for k, v in self.values.items() if k not in self.common}


def canonical(value: Any) -> str:
    """A text equal for equal settings (sorted keys; numbers as JSON writes them)."""
    return json.dumps(value, sort_keys=True, default=str)


def run_settings(config: Mapping[str, Any]) -> Settings:
    """The settings of a run with flat record ``config`` (its resolved config when it has one)."""
    resolved = config.get(RESOLVED)
    if isinstance(resolved, Mapping):
        values = {k: v for k, v in flatten(resolved).items() if not _ignored(k)}
        own = frozenset(k for k in values if _under(k, ALGORITHM_SECTION))
        common = own | {k for k in values if _under(k, OPTIMIZER_SECTION)}
        data = {k: v for k, v in values.items() if _under(k, "data") and k not in DATA_LOADING}
        return Settings(values, own, frozenset(common), data)
    values = {k: v for k, v in config.items()
              if k not in FLAT_DESCRIPTORS and k != SEED and not isinstance(v, (dict, list))}
    declared = config.get(ALGORITHM_KEYS)
    own = {ALGORITHM_SECTION} | (set(map(str, declared)) if isinstance(declared, (list, tuple)) else set())
    return Settings(values, frozenset(own & set(values)), frozenset((own | {OPTIMIZER_SECTION}) & set(values)),
                    {"data": config.get("data")})


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists stay values)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


def _under(key: str, section: str) -> bool:
    return key == section or key.startswith(section + ".")


def _ignored(key: str) -> bool:
    return key.rsplit(".", 1)[-1] == SEED or any(_under(key, listed) for listed in NOT_A_RESULT_SETTING)


def differing_keys(all_settings: Sequence[Settings]) -> list[str]:
    """The keys whose value (or presence) differs between ``all_settings`` (sorted)."""
    keys = sorted({k for settings in all_settings for k in settings.values})
    return [k for k in keys if len({canonical(s.values.get(k, "<absent>")) for s in all_settings}) > 1]


def shown_keys(settings: Settings, others: Sequence[Settings], keys: Sequence[str]) -> list[str]:
    """Of ``keys`` (those that differ), the ones worth showing in ``settings``' label: keys it has
    and its own algorithm does not stand for, skipping a component's settings when they differ
    only because the component (its ``_target_``) differs, which the label already shows."""
    shown = []
    for key in keys:
        if key not in settings.values or key in settings.own:
            continue
        owner = _component_of(key, settings.values)
        if owner is not None and not key.endswith("._target_"):
            peers = [s for s in others if s.values.get(owner, _MISSING) == settings.values[owner]]
            if len({canonical(s.values.get(key, "<absent>")) for s in peers}) < 2:
                continue
        shown.append(key)
    return shown


def _component_of(key: str, values: Mapping[str, Any]) -> Optional[str]:
    """The ``_target_`` key of the innermost component holding ``key``, if any."""
    parts = key.split(".")[:-1]
    while parts:
        candidate = ".".join(parts) + "._target_"
        if candidate in values:
            return candidate
        parts.pop()
    return None


def describe(key: str, value: Any) -> str:
    """``model.hidden_sizes=[8]``; a component's ``_target_`` as ``model=MLP``."""
    if key.endswith("._target_") and isinstance(value, str):
        parts = value.split(".")
        while len(parts) > 1 and not parts[0][:1].isupper():
            parts.pop(0)
        return f"{key[: -len('._target_')]}={'.'.join(parts)}"
    return f"{key}={value}"
