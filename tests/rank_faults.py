"""Faults injected into multi-process runs by their model, and the check that no rank outlives a
test: shared by the DDP and parameter-server command-line tests. This folder is on the ranks'
``PYTHONPATH`` (:func:`rank_env`), so ``model._target_=rank_faults.InjectedFault`` imports there."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any, Optional

from lightning_echo.app.rank import RankAgreement
from lightning_echo.models import LogisticRegression

HERE = Path(__file__).resolve().parent


class InjectedFault(LogisticRegression):
    """Logistic regression that, on rank ``rank`` after step ``step``, does ``action``: ``raise``,
    ``sigkill`` (the process kills itself, as the OOM killer would), ``freeze`` (SIGSTOP to
    itself: a process that is alive but never answers again), or
    ``sigterm_job`` (SIGTERM to the job that started the ranks, as a scheduler would; then it waits
    for the job's stop request to arrive, so that the ranks stop after the next step). ``marker``:
    do it once, across a resume."""

    def __init__(self, *args: Any, rank: int = 0, step: int = 3, action: str = "raise",
                 marker: Optional[str] = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fault_rank, self.fault_step, self.action = rank, step, action
        self.marker = Path(marker) if marker else None

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.trainer.global_rank != self.fault_rank or self.trainer.global_step != self.fault_step:
            return
        if self.marker is not None:
            if self.marker.exists():
                return
            self.marker.touch()
        if self.action == "raise":
            raise RuntimeError(f"injected failure on rank {self.fault_rank}")
        if self.action == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        if self.action == "freeze":
            os.kill(os.getpid(), signal.SIGSTOP)
        os.kill(os.getppid(), signal.SIGTERM)
        # Go on once the job's stop request has reached this rank: the ranks then stop after the next step.
        agreement = next((c for c in self.trainer.callbacks if isinstance(c, RankAgreement)), None)
        if agreement is None or not agreement.stop.wait(timeout=120):
            raise RuntimeError("the job's stop request did not arrive")


def fault_overrides(action: str, rank: int, step: int, marker: Optional[Path] = None) -> list[str]:
    """Command-line overrides that make the run's model an :class:`InjectedFault`."""
    overrides = [f"model._target_={__name__}.InjectedFault", f"+model.action={action}", f"+model.rank={rank}",
                 f"+model.step={step}"]
    return overrides + ([f"+model.marker={marker}"] if marker is not None else [])


def rank_env(tmp_path: Path) -> dict[str, str]:
    """The ranks' spec folders go under ``tmp_path`` (so the test finds what is left of them), and
    this module is importable in every process (for ``InjectedFault``)."""
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return {"TMPDIR": str(tmp_path / "tmp"),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))}


class ServerStopsThenLearnerDies(InjectedFault):
    """``InjectedFault``'s action on its rank, and a SIGKILL on ``kill_rank`` at ``kill_step``."""

    def __init__(self, *args: Any, kill_rank: int = -1, kill_step: int = -1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.kill_rank, self.kill_step = kill_rank, kill_step

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.trainer.global_rank == self.kill_rank and self.trainer.global_step == self.kill_step:
            os.kill(os.getpid(), signal.SIGKILL)
        super().on_train_batch_end(outputs, batch, batch_idx)
