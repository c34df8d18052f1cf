"""The train loader the simulated-learners strategy installs: one item per server update.

Each item is an :class:`UpdateBundle`: the schedule's plan of the next parameter-server update and
one mini-batch of the user's loader for each gradient the update averages. Work the schedule
cancels or discards takes no mini-batch (it costs no compute), so an epoch of ``N`` mini-batches
gives ``N // K`` updates; the few mini-batches left at the end of an epoch are not used (like
``drop_last``) and the update they would have fed is taken with the next epoch's first ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Iterator, Optional

import torch
from torchdata.nodes import Loader

from lightning_echo.core.schedule import ScheduleSimulation, UpdatePlan
from lightning_echo.data.lifetime import StopsAtLightningTeardown
from lightning_echo.data.nodes import IterableNode
from lightning_echo.lightning_internals import sized_len, stop_dataloader_workers


@dataclass
class UpdateBundle:
    """The mini-batches of one server update, in the order of ``plan.gradients``."""

    plan: UpdatePlan
    batches: list[Any]


@dataclass
class SnapshotStore:
    """One copy of the parameters per version that a running simulated learner still reads.

    Versions are added just before the update that would overwrite them and dropped as soon as
    no running computation holds them, so the store never holds more than ``learners`` copies
    (plus the live parameters: ``learners + 1`` in all).
    """

    snapshots: Dict[int, list[torch.Tensor]] = field(default_factory=dict)
    peak: int = 0

    def keep(self, version: int, parameters: Iterable[torch.Tensor]) -> None:
        """Copy ``parameters`` as ``version`` (once)."""
        if version not in self.snapshots:
            self.snapshots[version] = [p.detach().clone() for p in parameters]
            self.peak = max(self.peak, len(self.snapshots))

    def release_all_but(self, held: Iterable[int]) -> None:
        """Drop every snapshot whose version is not in ``held``."""
        held = set(held)
        for version in [v for v in self.snapshots if v not in held]:
            del self.snapshots[version]

    def get(self, version: int) -> list[torch.Tensor]:
        """The parameters of ``version`` (KeyError when none was kept)."""
        return self.snapshots[version]

    def state_dict(self) -> Dict[str, Any]:
        return {"snapshots": {v: [t.clone() for t in ts] for v, ts in self.snapshots.items()}, "peak": self.peak}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.snapshots = {int(v): list(ts) for v, ts in state["snapshots"].items()}
        self.peak = int(state.get("peak", len(self.snapshots)))


class UpdateLoader(StopsAtLightningTeardown):
    """Iterates ``loader``'s mini-batches grouped by the server updates ``simulation`` plans.

    Stateful (saved in Lightning checkpoints): the simulation as it was before the next update to
    train, the source's position and the parameter snapshots still in use. Accounts for
    Lightning's one-item prefetch when the length is unknown, as the echo loader does.
    """

    SIMULATION, PENDING, SOURCE, SNAPSHOTS = "simulation", "pending", "source", "snapshots"

    def __init__(self, loader: Iterable, simulation: ScheduleSimulation, store: SnapshotStore) -> None:
        self.source = loader
        self.simulation = simulation
        self.store = store
        self._node = IterableNode(loader)
        self._loader = Loader(self._node)
        self._pending: Optional[UpdatePlan] = None
        self._state_before_last: Optional[Dict[str, Any]] = None
        self._restored = False

    def _plan(self) -> UpdatePlan:
        plan, self._pending = (self._pending, None) if self._pending is not None else (self.simulation.next_update(), None)
        return plan

    def _position(self) -> Dict[str, Any]:
        return {self.SIMULATION: self.simulation.state_dict(), self.PENDING: self._pending,
                self.SOURCE: self._loader.state_dict()}

    def __iter__(self) -> Iterator[UpdateBundle]:
        iterator = iter(self._loader)
        while True:
            before = self._position() if self.length is None else None
            plan = self._plan()
            batches = []
            for _ in plan.gradients:
                try:
                    batches.append(next(iterator))
                except StopIteration:
                    self._pending = plan  # taken again, with fresh mini-batches, next epoch
                    self._state_before_last = None
                    return
            self._state_before_last = before
            yield UpdateBundle(plan, batches)

    @property
    def length(self) -> Optional[int]:
        """Updates per epoch when the source has a length (``len(source) // K``), else None."""
        batches = sized_len(self.source)
        return None if batches is None else batches // self.simulation.spec.k

    def __len__(self) -> int:
        length = self.length
        if length is None:
            raise TypeError("the source loader has no length")
        return length

    def state_dict(self) -> Dict[str, Any]:
        position = self._state_before_last if (self.length is None and self._state_before_last) else self._position()
        return {**position, self.SNAPSHOTS: self.store.state_dict()}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.simulation.load_state_dict(state_dict[self.SIMULATION])
        self._pending = state_dict[self.PENDING]
        self._loader.load_state_dict(state_dict[self.SOURCE])
        self.store.load_state_dict(state_dict[self.SNAPSHOTS])

    def close(self) -> None:
        """Nothing runs in the background here, but Lightning, which sees only this loader, would
        leave the source's threads or persistent worker processes running: stop them as it would."""
        stop_dataloader_workers(self.source)
