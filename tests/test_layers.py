"""The layers point one way (README "Layout"): a module imports only its own layer and those below,
and the lower layers stay free of the frameworks above them. Checked on the source (AST), so a
lazy import inside a function counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import lightning_echo

PACKAGE = Path(lightning_echo.__file__).parent

# Lowest first. A module may import lightning_echo modules of its own rank or lower.
LAYERS: dict[str, int] = {
    "errors": 0, "validation": 0, "records": 0, "metric_names": 0, "protocols": 0,
    "lightning_namespace": 0,  # picks pytorch_lightning or lightning.pytorch (imports it by name, not by statement)
    "core": 1,
    "data": 2,
    "lightning_internals": 2,  # Lightning internals, used by the data layer too (loader lifetime)
    "combinations": 2,  # which components and Trainer settings combine (duck-typed, no Lightning import)
    "callbacks": 3,  # the run's own callbacks (progress, divergence, target): below the methods that use them
    "report": 3,
    "echo": 4, "echoed_optim": 4, "stragglers": 4, "models": 4,
    "app": 5,
    "advisor": 5,  # records runs (a callback) and replays them through app's builders and the strategies
    "cli": 6, "__main__": 6, "__init__": 6,
}
# Third-party packages each layer must not import (the frameworks of the layers above it).
FORBIDDEN: dict[int, set[str]] = {
    0: {"torch", "pytorch_lightning", "lightning", "torchdata", "hydra", "omegaconf", "wandb", "matplotlib"},
    1: {"pytorch_lightning", "lightning", "torchdata", "hydra", "omegaconf", "wandb", "matplotlib"},
    2: {"hydra", "omegaconf", "wandb", "matplotlib"},
    3: {"hydra", "omegaconf"},
    4: {"hydra", "omegaconf"},
}
REPORT_FORBIDDEN = {"pytorch_lightning", "lightning", "torchdata", "hydra", "omegaconf"}
# Importing it imports Lightning: it counts as Lightning for FORBIDDEN.
NAMESPACE_MODULE = "lightning_echo.lightning_namespace"
LIGHTNING_ROOTS = {"pytorch_lightning", "lightning"}


def _layer_of(module: str) -> tuple[str, int]:
    top = module.split(".")[1] if "." in module else "__init__"
    assert top in LAYERS, f"{module}: its top-level package {top!r} has no layer in tests/test_layers.py"
    return top, LAYERS[top]


def _modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1] if len(parts) > 2 else (*parts[:-1], "__init__")
        found.append((".".join(parts), path))
    return found


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "lightning_echo":  # `from lightning_echo import module` imports that module
                names += [f"lightning_echo.{alias.name}" for alias in node.names]
            else:
                names.append(node.module)
    return names


def test_every_module_has_a_layer() -> None:
    for module, _ in _modules():
        _layer_of(module)


def _violations(module: str, imported: list[str]) -> list[str]:
    top, rank = _layer_of(module)
    problems = []
    for name in imported:
        root = name.split(".")[0]
        if name == NAMESPACE_MODULE:
            root = "pytorch_lightning"
        if root == "lightning_echo":
            other_top, other_rank = _layer_of(name)
            if other_rank > rank:
                problems.append(f"{module} (layer {rank}) imports {name} (layer {other_rank})")
        elif root in FORBIDDEN.get(rank, set()) or (top == "report" and root in REPORT_FORBIDDEN):
            problems.append(f"{module} (layer {rank}) imports {name}")
    return problems


def test_imports_point_down() -> None:
    problems = [p for module, path in _modules() for p in _violations(module, _imports(path))]
    assert not problems, "\n".join(problems)


def test_lightning_is_imported_only_through_the_namespace_module() -> None:
    # Each of pytorch_lightning and lightning.pytorch works alone (README "pytorch_lightning or
    # lightning"): no module names either package; they import the chosen one from NAMESPACE_MODULE.
    direct = [f"{module} imports {name}" for module, path in _modules() for name in _imports(path)
              if name.split(".")[0] in LIGHTNING_ROOTS]
    assert not direct, "\n".join(direct) + f"\nimport Lightning from {NAMESPACE_MODULE} (pl, import_lightning) instead"


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    # The check itself can fail: a core module importing Lightning is reported.
    bad = tmp_path / "bad.py"
    bad.write_text("import pytorch_lightning\nfrom lightning_echo.app import job\nfrom lightning_echo import cli\n")
    assert _imports(bad) == ["pytorch_lightning", "lightning_echo.app", "lightning_echo.cli"]
    assert _layer_of("lightning_echo.app.job")[1] > _layer_of("lightning_echo.core.progress")[1]
    assert "pytorch_lightning" in FORBIDDEN[_layer_of("lightning_echo.core.progress")[1]]
    # A core module importing the namespace module imports Lightning; a data module may.
    core = tmp_path / "core_module.py"
    core.write_text("from lightning_echo.lightning_namespace import pl\n")
    assert _violations("lightning_echo.core.progress", _imports(core)) == [
        "lightning_echo.core.progress (layer 1) imports lightning_echo.lightning_namespace"]
    assert _violations("lightning_echo.data.pipeline", _imports(core)) == []
