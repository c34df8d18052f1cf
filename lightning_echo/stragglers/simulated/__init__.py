"""The simulated backend: P learners and a parameter server simulated on the Trainer's one device,
on a virtual clock driven by :class:`~lightning_echo.core.schedule.ScheduleSimulation`."""

from lightning_echo.stragglers.simulated.loader import SnapshotStore, UpdateBundle, UpdateLoader
from lightning_echo.stragglers.simulated.strategy import STRATEGY_NAME, SimulatedLearnersStrategy

__all__ = ["STRATEGY_NAME", "SimulatedLearnersStrategy", "SnapshotStore", "UpdateBundle", "UpdateLoader"]
