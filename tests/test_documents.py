"""The documents match the code: the README's layout and ARCHITECTURE.md's layers name every
package, the README names every config group, top-level settings block and logged metric that
exists (and no metric that does not), every ``lightning_echo.*`` name the configs mention exists,
and the packaged method cards and design notes ship with the package."""

from __future__ import annotations

import importlib
import re
import tomllib
from pathlib import Path

import pytest
import yaml

import lightning_echo
from conftest import REPOSITORY
from lightning_echo import metric_names
from lightning_echo.app.config import GROUPS

PACKAGE = Path(lightning_echo.__file__).parent
README = (REPOSITORY / "README.md").read_text()
ARCHITECTURE = (REPOSITORY / "ARCHITECTURE.md").read_text()
METRIC_PREFIXES = ("progress/", "time/", "echo/", "stale/", "ps/", "train/", "val/")


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    following = re.search(r"^##? ", text[start + len(heading):], flags=re.M)
    return text[start:start + len(heading) + (following.start() if following else len(text))]


def _packages() -> list[str]:
    """Every package and top-level module of lightning_echo, as a path relative to it (``stragglers/simulated``)."""
    found = [str(p.parent.relative_to(PACKAGE)) for p in PACKAGE.rglob("__init__.py") if p.parent != PACKAGE]
    found += [p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    return sorted(found)


def test_the_readme_layout_and_the_architecture_name_every_package() -> None:
    layout, layers = _section(README, "## Layout"), _section(ARCHITECTURE, "## Layers")
    assert _packages(), "no packages found"
    for name in _packages():
        short = name.rsplit("/", 1)[-1]
        assert f"{short}/" in layout or f"{short}" in layout, f"README's layout does not name {name}"
        top = name.split("/")[0]
        assert top.removesuffix(".py") in layers or top in layers, f"ARCHITECTURE.md's layers do not name {name}"


def test_the_readme_names_every_config_group_and_option() -> None:
    table = _section(README, "### Config groups")
    for group in GROUPS:
        if group == "paths":  # where runs are written: paths.output_root, described under Command line
            continue
        row = next((line for line in table.splitlines() if line.startswith(f"| `{group}` |")), None)
        assert row is not None, f"the config-group table has no row for {group}"
        for option in (REPOSITORY / "conf" / group).glob("*.yaml"):
            assert f"`{option.stem}`" in row, f"{group}={option.stem} is not in the README's table"


def test_the_readme_names_every_top_level_settings_block() -> None:
    config = yaml.safe_load((REPOSITORY / "conf" / "config.yaml").read_text())
    for key in config:
        if key in ("defaults", "settings_checks"):
            continue
        assert f"`{key}" in README, f"the README never names the top-level setting {key}"
    for block in config["settings_checks"]:
        assert f"`{block}." in _section(README, "### Bad input"), f"Bad input does not say {block}.* is checked"


def _readme_metrics() -> set[str]:
    names = set(re.findall(r"`([a-z_]+/[a-z_<>{}0-9/]+)`", README))
    return {n for n in names if n.startswith(METRIC_PREFIXES)}


def test_every_metric_the_readme_names_is_in_the_table_and_every_logged_one_is_named() -> None:
    table = set(metric_names.all_names())
    patterns = {name.replace("{learner}", "<i>") for name in table}
    named = _readme_metrics()
    assert named, "the README names no metric"
    unknown = sorted(n for n in named if n not in patterns)
    assert not unknown, f"the README names metrics nothing logs: {unknown}"
    missing = sorted(n for n in patterns if n not in named)
    assert not missing, f"metrics logged but not in the README: {missing}"


def _dotted_names(text: str) -> set[str]:
    return set(re.findall(r"\blightning_echo(?:\.[A-Za-z_][A-Za-z0-9_]*)+", text))


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        try:
            for attribute in parts[cut:]:
                target = getattr(target, attribute)
        except AttributeError:
            return False
        return True
    return False


@pytest.mark.parametrize("path", sorted((REPOSITORY / "conf").rglob("*.yaml")), ids=lambda p: str(p.relative_to(REPOSITORY)))
def test_every_name_a_config_mentions_exists(path: Path) -> None:
    missing = sorted(name for name in _dotted_names(path.read_text()) if not _resolves(name))
    assert not missing, f"{path.name} names what does not exist: {missing}"


def test_every_name_the_documents_mention_exists() -> None:
    texts = [README, ARCHITECTURE, *(p.read_text() for p in PACKAGE.rglob("README.md"))]
    missing = sorted(name for text in texts for name in _dotted_names(text) if not _resolves(name))
    assert not missing, f"the documents name what does not exist: {missing}"


def test_every_readme_of_the_package_ships_with_it() -> None:
    package_data = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    for readme in PACKAGE.rglob("README.md"):
        package = ".".join(("lightning_echo", *readme.parent.relative_to(PACKAGE).parts))
        assert "README.md" in package_data.get(package, []), f"{readme} is not packaged ({package})"
