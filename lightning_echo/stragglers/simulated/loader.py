"""The train loader the simulated-learners strategy installs: one item per server update.

Each item is an :class:`UpdateBundle`: the schedule's plan of the next parameter-server update and
one mini-batch of the user's loader for each gradient the update averages. Work the schedule
cancels or discards takes no mini-batch (it costs no compute), so an epoch of ``N`` mini-batches
gives ``N // K`` updates; the few mini-batches left at the end of an epoch are not used (like
``drop_last``) and the update they would have fed is taken with the next epoch's first ones.

When learners have their own data streams (echoing, data times), a gradient computed on a batch
its learner already had (an echo) reuses that learner's held mini-batch: only the first used
gradient of each of a learner's fresh batches draws one from the user's loader. Each learner holds
its current mini-batch (at most ``P`` in all), saved with the loader's state.

With ``stale.k=auto`` (an :class:`~lightning_echo.core.adaptive_k.AdaptiveK`), the K of each update
is set just before it is planned, from the compute times of every gradient that arrived in the
plans so far and the training losses of the updates up to two before it: Lightning may plan one
update ahead (a loader without length is prefetched), so the loss of the update just before is
not always known yet, and the rule waits for it in every case, so that the same updates are
planned whether or not the loader is prefetched, and after a resume. An epoch's number of updates
is then not known in advance (the loader has no length).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Iterator, Optional

import torch
from torchdata.nodes import Loader

from lightning_echo.core.adaptive_k import AdaptiveK
from lightning_echo.core.batches import rebuild
from lightning_echo.core.schedule import GradientPlan, RunTotals, ScheduleSimulation, UpdatePlan
from lightning_echo.data.lifetime import StopsAtLightningTeardown
from lightning_echo.data.nodes import IterableNode
from lightning_echo.lightning_internals import sized_len, stop_dataloader_workers


@dataclass
class UpdateBundle:
    """The mini-batches of one server update, in the order of ``plan.gradients``; ``drawn[i]`` says
    whether batch ``i`` was drawn fresh from the user's loader (False: a learner's held batch, again)."""

    plan: UpdatePlan
    batches: list[Any]
    drawn: Optional[list[bool]] = None

    def __post_init__(self) -> None:
        if self.drawn is None:
            self.drawn = [True] * len(self.batches)


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


@dataclass
class LearnerCounts:
    """What each learner's gradients brought to the updates trained so far: fresh samples (first
    use of a mini-batch) and echoed gradients (computed on a batch its learner had computed on)."""

    fresh_samples: list[int]
    echoed_gradients: list[int]

    @classmethod
    def zeros(cls, learners: int) -> "LearnerCounts":
        return cls([0] * learners, [0] * learners)

    def add(self, bundle: UpdateBundle, sizes: list[int]) -> None:
        """Count one trained update; ``sizes`` are its batches' examples."""
        assert bundle.drawn is not None
        for gradient, drawn, size in zip(bundle.plan.gradients, bundle.drawn, sizes):
            if drawn:
                self.fresh_samples[gradient.learner] += size
            if gradient.is_echo:
                self.echoed_gradients[gradient.learner] += 1

    def state_dict(self) -> Dict[str, Any]:
        return {"fresh_samples": list(self.fresh_samples), "echoed_gradients": list(self.echoed_gradients)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.fresh_samples = [int(n) for n in state["fresh_samples"]]
        self.echoed_gradients = [int(n) for n in state["echoed_gradients"]]


class UpdateLoader(StopsAtLightningTeardown):
    """Iterates ``loader``'s mini-batches grouped by the server updates ``simulation`` plans.

    Stateful (saved in Lightning checkpoints): the simulation as it was before the next update to
    train, the source's position and the parameter snapshots still in use. Accounts for
    Lightning's one-item prefetch when the length is unknown, as the echo loader does.
    """

    SIMULATION, PENDING, SOURCE, SNAPSHOTS, HELD, COUNTS = "simulation", "pending", "source", "snapshots", "held", "counts"
    ADAPTIVE, LOSSES = "adaptive_k", "losses"
    LOSS_LAG = 2  # the K of update n is chosen from the losses of updates <= n - LOSS_LAG

    def __init__(self, loader: Iterable, simulation: ScheduleSimulation, store: SnapshotStore,
                 counts: Optional[LearnerCounts] = None, adaptive: Optional[AdaptiveK] = None) -> None:
        self.source = loader
        self.simulation = simulation
        self.store = store
        self.counts = counts if counts is not None else LearnerCounts.zeros(simulation.spec.learners)
        self._node = IterableNode(loader)
        self._loader = Loader(self._node)
        self._pending: Optional[UpdatePlan] = None
        self._held: Dict[int, tuple[int, Any]] = {}  # learner -> (fresh batch index, its mini-batch)
        self._state_before_last: Optional[Dict[str, Any]] = None
        self._drawn_in_pass = 0  # mini-batches drawn from the source's current pass
        self._resumed_mid_pass = False
        self.adaptive = adaptive
        self._losses: Dict[int, float] = {}  # update version -> its training loss
        self._fed = -1  # the last update whose loss the rule has seen

    def _plan(self) -> UpdatePlan:
        if self._pending is not None:
            plan, self._pending = self._pending, None
            return plan
        if self.adaptive is None:
            return self.simulation.next_update()
        return self._adaptive_plan(self.adaptive)

    def _adaptive_plan(self, rule: AdaptiveK) -> UpdatePlan:
        upcoming = self.simulation.updates  # the version the next plan updates
        while self._fed + 1 <= upcoming - self.LOSS_LAG and self._fed + 1 in self._losses:
            self._fed += 1
            rule.observe_update(self._losses[self._fed])
        for version in [v for v in self._losses if v < upcoming - 2 * self.LOSS_LAG]:
            del self._losses[version]  # kept a little longer: a saved position may be one plan behind
        if rule.k != self.simulation.k:
            self.simulation.set_k(rule.k)
        plan = self.simulation.next_update()
        for gradient in sorted(plan.gradients + plan.discarded, key=lambda g: (g.arrived_at, g.learner)):
            rule.observe_time(gradient.learner, gradient.arrived_at - gradient.started_at)
        return plan

    def record_loss(self, version: int, loss: float) -> None:
        """The training loss of the trained update of ``version`` (the mean over its gradients)."""
        self._losses[version] = float(loss)

    def _position(self) -> Dict[str, Any]:
        position = {self.SIMULATION: self.simulation.state_dict(), self.PENDING: plan_state(self._pending),
                    self.SOURCE: self._loader.state_dict(), self.HELD: dict(self._held), "drawn_in_pass": self._drawn_in_pass}
        if self.adaptive is not None:
            position[self.ADAPTIVE] = {"rule": self.adaptive.state_dict(), "fed": self._fed}
        return position

    def __iter__(self) -> Iterator[UpdateBundle]:
        iterator = iter(self._loader)
        per_pass = sized_len(self.source)
        if not self._resumed_mid_pass:
            self._drawn_in_pass = 0
        self._resumed_mid_pass = False
        while True:
            before = self._position() if self.length is None else None
            plan = self._plan()
            latest = {learner: index for learner, (index, _) in self._held.items()}
            reused = []  # per gradient: computed on the batch its learner holds (drawn before, or earlier in this update)
            for gradient in plan.gradients:
                reuse = gradient.fresh_index >= 0 and latest.get(gradient.learner) == gradient.fresh_index
                reused.append(reuse)
                if gradient.fresh_index >= 0:
                    latest[gradient.learner] = gradient.fresh_index
            needed = reused.count(False)
            if per_pass is not None and self._drawn_in_pass + needed > per_pass:
                # Not enough batches left in this pass: like drop_last, they stay unread (the next pass
                # starts as it would have without echoing) and the update is taken from the next pass.
                self._pending = plan
                self._state_before_last = None
                return
            batches, drawn = [], []
            held = dict(self._held)  # committed once the whole update has its batches
            for gradient, reuse in zip(plan.gradients, reused):
                if reuse:
                    batches.append(rebuild(held[gradient.learner][1]))  # its own containers, the same tensors
                    drawn.append(False)
                    continue
                try:
                    batch = next(iterator)
                except StopIteration:
                    self._pending = plan  # taken again, with fresh mini-batches, next epoch
                    self._state_before_last = None
                    return
                self._drawn_in_pass += 1
                if gradient.fresh_index >= 0:
                    held[gradient.learner] = (gradient.fresh_index, batch)
                    batch = rebuild(batch)
                batches.append(batch)
                drawn.append(True)
            self._held = held
            self._state_before_last = before
            yield UpdateBundle(plan, batches, drawn)

    @property
    def length(self) -> Optional[int]:
        """Updates per epoch when the source has a length (``len(source) // K``), else None; None
        too when learners echo or K is chosen while training (how many updates an epoch's
        mini-batches feed is not known)."""
        if self.adaptive is not None:
            return None
        data = self.simulation.data
        if data is not None and data.echo is not None and data.echo.factor != 1:
            return None
        batches = sized_len(self.source)
        return None if batches is None else batches // self.simulation.spec.k

    def __len__(self) -> int:
        length = self.length
        if length is None:
            raise TypeError("the source loader has no length")
        return length

    def state_dict(self) -> Dict[str, Any]:
        position = self._state_before_last if (self.length is None and self._state_before_last) else self._position()
        state = {**position, self.SNAPSHOTS: self.store.state_dict(), self.COUNTS: self.counts.state_dict()}
        if self.adaptive is not None:  # every loss recorded since, also those after a saved position's plan
            state[self.LOSSES] = dict(self._losses)
        return state

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        if (self.ADAPTIVE in state_dict) != (self.adaptive is not None):
            saved = "with" if self.ADAPTIVE in state_dict else "without"
            raise ValueError(f"the checkpoint was saved {saved} stale.k=auto; this run has "
                             f"{'a fixed K' if self.adaptive is None else 'stale.k=auto'}: resume with the same setting")
        if self.adaptive is not None:
            self.adaptive.load_state_dict(state_dict[self.ADAPTIVE]["rule"])
            self._fed = int(state_dict[self.ADAPTIVE]["fed"])
            self._losses = {int(v): float(loss) for v, loss in state_dict.get(self.LOSSES, {}).items()}
        self.simulation.load_state_dict(state_dict[self.SIMULATION])
        self._pending = plan_from_state(state_dict[self.PENDING])
        self._loader.load_state_dict(state_dict[self.SOURCE])
        self.store.load_state_dict(state_dict[self.SNAPSHOTS])
        self._held = {int(l): (int(index), batch) for l, (index, batch) in state_dict.get(self.HELD, {}).items()}
        self._drawn_in_pass = int(state_dict.get("drawn_in_pass", 0))
        self._resumed_mid_pass = True
        if self.COUNTS in state_dict:
            self.counts.load_state_dict(state_dict[self.COUNTS])

    def close(self) -> None:
        """Nothing runs in the background here, but Lightning, which sees only this loader, would
        leave the source's threads or persistent worker processes running: stop them as it would."""
        stop_dataloader_workers(self.source)


def plan_state(plan: Optional[UpdatePlan]) -> Optional[Dict[str, Any]]:
    """``plan`` as plain data (a checkpoint loads with ``torch.load(weights_only=True)``)."""
    if plan is None:
        return None
    return {"version": plan.version, "time": plan.time,
            "gradients": [dataclasses.asdict(g) for g in plan.gradients],
            "discarded": [dataclasses.asdict(g) for g in plan.discarded],
            "cancelled": plan.cancelled, "wasted_time": plan.wasted_time, "busy_time": plan.busy_time,
            "held_versions": sorted(plan.held_versions),
            "totals": {**dataclasses.asdict(plan.totals), "data_wait_per_learner": list(plan.totals.data_wait_per_learner)}}


def plan_from_state(state: Any) -> Optional[UpdatePlan]:
    """The plan :func:`plan_state` saved (a plan object itself, from a checkpoint saved before it existed)."""
    if state is None or isinstance(state, UpdatePlan):
        return state
    totals = dict(state["totals"])
    totals["data_wait_per_learner"] = tuple(totals["data_wait_per_learner"])
    return UpdatePlan(version=int(state["version"]), time=float(state["time"]),
                      gradients=tuple(GradientPlan(**g) for g in state["gradients"]),
                      discarded=tuple(GradientPlan(**g) for g in state["discarded"]),
                      cancelled=int(state["cancelled"]), wasted_time=float(state["wasted_time"]),
                      busy_time=float(state["busy_time"]), held_versions=frozenset(int(v) for v in state["held_versions"]),
                      totals=RunTotals(**totals))
