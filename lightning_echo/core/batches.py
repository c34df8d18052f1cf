"""Helpers on batches: tuples, lists or dicts of tensors (or one tensor), examples on dim 0."""

from __future__ import annotations

from typing import Any, Sequence

import torch


def batch_size_of(batch: Any) -> int:
    """Number of examples in ``batch`` (length of its first tensor)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() > 0 else 1
    if isinstance(batch, dict):
        for value in batch.values():
            return batch_size_of(value)
    if isinstance(batch, (list, tuple)):
        for value in batch:
            return batch_size_of(value)
    raise TypeError(f"cannot tell the number of examples in a batch of type {type(batch).__name__}")


def select_rows(rows: Sequence[tuple[Any, int]]) -> Any:
    """Build one batch from ``(batch, row)`` pairs, keeping the structure of the batches."""
    first = rows[0][0]
    if isinstance(first, torch.Tensor):
        return torch.stack([batch[row] for batch, row in rows])
    if isinstance(first, dict):
        return {key: select_rows([(batch[key], row) for batch, row in rows]) for key in first}
    if isinstance(first, (list, tuple)):
        fields = [select_rows([(batch[i], row) for batch, row in rows]) for i in range(len(first))]
        return type(first)(fields) if isinstance(first, list) else tuple(fields)
    raise TypeError(f"cannot re-batch examples of type {type(first).__name__}")
