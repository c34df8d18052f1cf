"""The train loader of the parameter server's process: one placeholder per server update.

The server never trains on a batch (the learners do), so its Lightning loop iterates
:class:`UpdateSlots` instead of the user's loader: nothing is read, no worker starts. An epoch
has ``ceil(B / K)`` slots, B being the batches of the user's whole train loader and K the
gradients per update, so one server epoch is one pass over the data when no gradient is
discarded (``sync``: every learner contributes one batch per update); a loader without a length
gives an endless epoch (end the run with ``max_steps`` or ``max_time``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Optional

from lightning_echo.validation import positive_int


@dataclass(frozen=True)
class ServerStep:
    """The placeholder "batch" of one server update (``index``: 1-based within the epoch)."""

    index: int


def server_epoch_length(batches: Optional[int], gradients_per_update: int) -> Optional[int]:
    """Updates per server epoch over a train loader of ``batches`` batches (``None``: the loader
    has no length, and neither has the epoch)."""
    positive_int("gradients per update", gradients_per_update)
    return None if batches is None else max(1, math.ceil(batches / gradients_per_update))


class UpdateSlots:
    """``length`` placeholders per epoch (``None``: endless). Stateful, so a run resumed in the
    middle of an epoch serves only the rest of it.

    Example::

        slots = UpdateSlots(3)
        assert [s.index for s in slots] == [1, 2, 3] and len(slots) == 3
        slots.load_state_dict({"served": 2})
        assert [s.index for s in slots] == [3]
    """

    def __init__(self, length: Optional[int]) -> None:
        self.length = None if length is None else positive_int("server epoch length", length)
        self._served = 0
        self._resume_at = 0

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError("an endless server epoch has no length")
        return self.length

    def __iter__(self) -> Iterator[ServerStep]:
        self._served, self._resume_at = self._resume_at, 0
        while self.length is None or self._served < self.length:
            self._served += 1
            yield ServerStep(self._served)

    def state_dict(self) -> dict[str, int]:
        return {"served": self._served}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume_at = int(state["served"])
