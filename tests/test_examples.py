"""Every ``Example::`` block of the package's docstrings, and every Python block of its method
cards (``lightning_echo/**/README.md``) and of the README, runs as written.

Examples that mention ``model``, ``dm``, ``train_set``, ``train_loader``, ``batches``, ``params``
or ``trainer`` without defining them get small real ones (a BoringModel, its data); a
``Trainer`` (or ``pl.Trainer``) is a quiet Trainer capped at a few steps, so an example written
for 20,000 steps still runs in a second. A README block preceded by ``<!-- example: not run
(reason) -->`` is a script that cannot run inside a test process (one that Lightning re-runs for
its other processes); the reason is required, and such blocks are few.
"""

from __future__ import annotations

import ast
import importlib
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.demos.boring_classes import BoringDataModule, BoringModel, RandomDataset
from torch.utils.data import DataLoader

import lightning_echo

PACKAGE = Path(lightning_echo.__file__).parent
MAX_EXAMPLE_STEPS = 8


def _quick_trainer(**kwargs: Any) -> pl.Trainer:
    kwargs["max_steps"] = min(int(kwargs.get("max_steps", MAX_EXAMPLE_STEPS)), MAX_EXAMPLE_STEPS)
    kwargs.setdefault("max_epochs", 1)
    for key, value in dict(logger=False, enable_progress_bar=False, enable_checkpointing=False,
                           enable_model_summary=False, accelerator="cpu", limit_val_batches=2).items():
        kwargs.setdefault(key, value)
    return pl.Trainer(**kwargs)


def _namespace(module_globals: dict[str, Any]) -> dict[str, Any]:
    namespace = {name: getattr(lightning_echo, name) for name in lightning_echo.__all__}
    namespace.update(module_globals)
    namespace.update(
        pl=pl, torch=torch, Trainer=_quick_trainer, model=BoringModel(), dm=BoringDataModule(),
        train_set=RandomDataset(32, 64), train_loader=DataLoader(RandomDataset(32, 64), batch_size=8),
        batches=[torch.randn(8, 32) for _ in range(4)], trainer=_quick_trainer(),
        params=[torch.nn.Parameter(torch.zeros(32))],
    )
    return namespace


def _docstring_examples() -> list[tuple[str, str]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module_name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        tree = ast.parse(path.read_text())
        for node in [tree, *ast.walk(tree)]:
            if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            doc = ast.get_docstring(node, clean=False)
            if not doc or "Example::" not in doc:
                continue
            block = doc.split("Example::", 1)[1]
            lines = block.splitlines()[1:]
            body = []
            for line in lines:
                if line.strip() and not line.startswith(" " * 8) and not line.startswith("\t"):
                    break
                body.append(line)
            code = textwrap.dedent("\n".join(body)).strip()
            name = getattr(node, "name", "<module>")
            found.append((f"{module_name}:{name}", code))
    return found


def _method_card_blocks() -> list[tuple[str, str]]:
    found = []
    for path in sorted(PACKAGE.rglob("README.md")):
        for index, code in enumerate(re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)):
            found.append((f"{path.relative_to(PACKAGE)}#{index}", code))
    return found


NOT_RUN = re.compile(r"<!-- example: not run \((.+?)\) -->\n```python\n(.*?)```", flags=re.S)


def _readme_blocks() -> tuple[list[tuple[str, str]], list[str]]:
    """The README's Python blocks to run, with the quick Trainer for ``pl.Trainer``; and the
    reasons of those marked not run."""
    text = (PACKAGE.parent / "README.md").read_text()
    not_run = [reason for reason, _ in NOT_RUN.findall(text)]
    runnable = NOT_RUN.sub("", text)
    blocks = re.findall(r"```python\n(.*?)```", runnable, flags=re.S)
    return [(f"README.md#{i}", code.replace("pl.Trainer(", "Trainer(")) for i, code in enumerate(blocks)], not_run


DOCSTRING_EXAMPLES = _docstring_examples()
METHOD_CARD_BLOCKS = _method_card_blocks()
README_BLOCKS, README_NOT_RUN = _readme_blocks()


def test_examples_are_found() -> None:
    # Guards the collectors: the package documents its main classes with examples.
    names = " ".join(name for name, _ in DOCSTRING_EXAMPLES)
    for expected in ("DataEchoing", "TrainingProgress", "EchoedProx", "ProgressLedger"):
        assert expected in names
    assert any(name.startswith("echo/README.md") for name, _ in METHOD_CARD_BLOCKS)
    assert any(name.startswith("echoed_optim/README.md") for name, _ in METHOD_CARD_BLOCKS)
    assert len(README_BLOCKS) >= 4 and len(README_NOT_RUN) <= 1, (len(README_BLOCKS), README_NOT_RUN)
    assert all(len(reason) > 20 for reason in README_NOT_RUN)


@pytest.mark.parametrize("name,code", DOCSTRING_EXAMPLES, ids=[n for n, _ in DOCSTRING_EXAMPLES])
def test_docstring_example_runs(name: str, code: str) -> None:
    module = importlib.import_module(name.split(":", 1)[0])
    exec(compile(code, name, "exec"), _namespace(vars(module)))  # noqa: S102 - the package's own examples


@pytest.mark.parametrize("name,code", METHOD_CARD_BLOCKS, ids=[n for n, _ in METHOD_CARD_BLOCKS])
def test_method_card_code_runs(name: str, code: str) -> None:
    exec(compile(code, name, "exec"), _namespace({}))  # noqa: S102 - the package's own examples


@pytest.mark.parametrize("name,code", README_BLOCKS, ids=[n for n, _ in README_BLOCKS])
def test_readme_code_runs(name: str, code: str) -> None:
    exec(compile(code, name, "exec"), _namespace({}))  # noqa: S102 - the project's own examples
