"""Helpers on batches: nested dicts, lists, tuples (named too) and dataclasses of tensors and
other values, examples on dim 0 of every tensor.

A *container* is a mapping, a list or tuple, or a dataclass instance; anything else is a *leaf*
(a tensor, a string, a number, ``None``, any other object). A list or tuple whose items are all
plain leaves (no tensor, no container) holds one entry per example, as ``default_collate``
makes of strings (ids, file names).
"""

from __future__ import annotations

import copy
import types
import dataclasses
from collections.abc import Mapping, MutableMapping
from typing import Any, Iterator, Optional, Sequence

import torch

from lightning_echo.errors import ConfigError


def _children(batch: Any) -> Optional[list[tuple[str, Any]]]:
    """``(path suffix, value)`` for every item of a container; None for a leaf."""
    if isinstance(batch, Mapping):
        return [(f"[{key!r}]", value) for key, value in batch.items()]
    if isinstance(batch, (list, tuple)):
        return [(f"[{i}]", value) for i, value in enumerate(batch)]
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        return [(f".{field.name}", getattr(batch, field.name)) for field in dataclasses.fields(batch)]
    return None


def _is_example_list(value: Any) -> bool:
    """A non-empty list or tuple of plain leaves (strings, numbers, None): one entry per example."""
    return (
        isinstance(value, (list, tuple))
        and len(value) > 0
        and all(not isinstance(item, torch.Tensor) and _children(item) is None for item in value)
    )


def _walk(batch: Any, path: str = "batch") -> Iterator[tuple[str, Any]]:
    """Every leaf and every example list of ``batch`` with its path, depth first."""
    children = None if _is_example_list(batch) else _children(batch)
    if children is None:
        yield path, batch
        return
    for suffix, value in children:
        yield from _walk(value, path + suffix)


def find_batch_size(batch: Any) -> Optional[int]:
    """Number of examples in ``batch``: the first dimension of its first tensor with one (a
    lone 0-dim tensor counts 1), else the length of its first list of strings or numbers; None
    when neither exists (e.g. an object that is not a container)."""
    parts = [value for _, value in _walk(batch)]
    tensors = [value for value in parts if isinstance(value, torch.Tensor)]
    for tensor in tensors:
        if tensor.dim() > 0:
            return int(tensor.shape[0])
    if tensors:
        return 1
    return next((len(value) for value in parts if _is_example_list(value)), None)


def batch_size_of(batch: Any) -> int:
    """Like :func:`find_batch_size`, but a batch whose size cannot be told raises ``TypeError``."""
    size = find_batch_size(batch)
    if size is None:
        raise TypeError(f"cannot tell the number of examples in a batch of type {type(batch).__name__}")
    return size


def rebuild(batch: Any) -> Any:
    """A copy of ``batch``'s containers (dicts, lists, tuples, dataclasses, nested) holding the
    very same leaves: tensors are shared, not copied. Popping a key from or assigning a field of
    the copy leaves ``batch`` as it was. A plain object of the user's own batch class (one with
    attributes in ``__dict__``) is copied shallowly too, its attributes rebuilt, so that
    ``batch.x = batch.x * 2`` in one serve does not reach the next."""
    if isinstance(batch, torch.Tensor) or isinstance(batch, (str, bytes)):
        return batch
    if type(batch) is dict:
        return {key: rebuild(value) for key, value in batch.items()}
    if type(batch) is list:
        return [rebuild(value) for value in batch]
    if isinstance(batch, MutableMapping):
        rebuilt = copy.copy(batch)  # keeps the mapping's type (OrderedDict, UserDict, ...)
        for key, value in batch.items():
            rebuilt[key] = rebuild(value)
        return rebuilt
    if isinstance(batch, tuple):
        return _same_tuple(batch, [rebuild(value) for value in batch])
    if isinstance(batch, list):
        rebuilt = copy.copy(batch)
        rebuilt[:] = [rebuild(value) for value in batch]
        return rebuilt
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        return _same_dataclass(batch, {f.name: rebuild(getattr(batch, f.name)) for f in dataclasses.fields(batch)})
    if _is_plain_object(batch):
        return _same_object(batch)
    return batch


def _is_plain_object(value: Any) -> bool:
    """An instance of a user's class holding its state in ``__dict__`` (not a class, function,
    module or ``torch.nn.Module``)."""
    return (isinstance(getattr(value, "__dict__", None), dict) and not isinstance(value, type)
            and not callable(value) and not isinstance(value, types.ModuleType))


def _same_object(like: Any) -> Any:
    try:
        rebuilt = copy.copy(like)
    except Exception:  # a class that cannot be copied stays shared, as before
        return like
    if rebuilt is like or not isinstance(getattr(rebuilt, "__dict__", None), dict):
        return like
    for name, value in vars(like).items():
        rebuilt.__dict__[name] = rebuild(value)
    return rebuilt


def _same_tuple(like: tuple, items: list[Any]) -> tuple:
    if hasattr(like, "_fields"):  # a namedtuple
        return type(like)(*items)
    return tuple(items) if type(like) is tuple else type(like)(items)


def _same_dataclass(like: Any, values: dict[str, Any]) -> Any:
    rebuilt = copy.copy(like)
    for name, value in values.items():
        object.__setattr__(rebuilt, name, value)  # frozen dataclasses too
    return rebuilt


def tensor_versions(batch: Any) -> tuple[int, ...]:
    """The in-place version counters of every tensor in ``batch`` (each in-place change bumps one)."""
    return tuple(value._version for _, value in _walk(batch) if isinstance(value, torch.Tensor))


def check_splittable(batch: Any, size: int) -> None:
    """Raise a one-line ConfigError unless every part of ``batch`` holds one entry per example
    (tensors whose first dimension is ``size``, lists of ``size`` strings or numbers), as
    example echoing needs to re-batch single examples."""
    for path, value in _walk(batch):
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == size:
            continue
        if _is_example_list(value) and len(value) == size:
            continue
        what = f"a tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else f"a {type(value).__name__}"
        if _is_example_list(value):
            what = f"a {type(value).__name__} of {len(value)} entries"
        raise ConfigError(
            "kind", "example",
            f"cannot split {path} ({what}) into the batch's {size} examples; example echoing needs every part of a "
            "batch to hold one entry per example (a tensor or a list of strings or numbers): use kind='batch'",
        )


def select_rows(rows: Sequence[tuple[Any, int]]) -> Any:
    """Build one batch from ``(batch, row)`` pairs, keeping the structure of the batches
    (checked beforehand with :func:`check_splittable`)."""
    first = rows[0][0]
    if isinstance(first, torch.Tensor):
        return torch.stack([batch[row] for batch, row in rows])
    if _is_example_list(first):
        picked = [batch[row] for batch, row in rows]
        return _same_tuple(first, picked) if isinstance(first, tuple) else picked
    if isinstance(first, Mapping):
        values = {key: select_rows([(batch[key], row) for batch, row in rows]) for key in first}
        if type(first) is dict or not isinstance(first, MutableMapping):
            return values
        rebuilt = copy.copy(first)  # keeps the mapping's type (OrderedDict, UserDict, ...)
        rebuilt.update(values)
        return rebuilt
    if isinstance(first, (list, tuple)):
        fields = [select_rows([(batch[i], row) for batch, row in rows]) for i in range(len(first))]
        return _same_tuple(first, fields) if isinstance(first, tuple) else fields
    if dataclasses.is_dataclass(first) and not isinstance(first, type):
        names = [f.name for f in dataclasses.fields(first)]
        return _same_dataclass(first, {name: select_rows([(getattr(b, name), row) for b, row in rows]) for name in names})
    raise TypeError(f"cannot re-batch examples of type {type(first).__name__}")
