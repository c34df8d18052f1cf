"""The two roles of a process in a parameter-server fit, over a model's trainable parameters
(plain torch: the Lightning strategy decides when each method runs), and its floating-point
buffers (state in a START, changes in a PUSH: :mod:`.exchange`).

:class:`ServerRole` (rank 0) turns each server update into the module's ``.grad`` for the user's
own optimizer step, and sends the parameters the step produced. :class:`LearnerRole` (ranks
1..P) loads each START's parameters into the module and pushes the gradient the module's own
backward left in ``.grad``, with the loss and batch size in the trailer (:mod:`.exchange`) and,
in the note, what the gradient was computed on (:mod:`.fresh`) and what the module logged.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, Mapping, Optional, Sequence

import torch

from lightning_echo.core.adaptive_k import AdaptiveK
from lightning_echo.core.schedule import VariantSpec
from lightning_echo.stragglers.optim import in_optimizer_order
from lightning_echo.stragglers.processes.exchange import FlatExchange
from lightning_echo.stragglers.processes.fresh import GradientData, count_used, decode_push_note, encode_push_note, start_counting
from lightning_echo.stragglers.processes.learner import LearnerSession
from lightning_echo.stragglers.processes.logged import LoggedValue, mean_over_update
from lightning_echo.stragglers.processes.server import ParameterServer, PendingUpdate, ServerReport, UpdateRecord
from lightning_echo.stragglers.processes.transport import Transport


@dataclass(frozen=True)
class FaultPolicy:
    """What the server does when learners come and go (see :class:`~.server.ParameterServer`):
    ``shrink_k`` lowers K to the learners alive; the run stops below ``min_learners`` once no
    learner joined within ``rejoin_wait`` seconds; learners wait as long for a server that
    restarts."""

    shrink_k: bool = True
    min_learners: int = 1
    rejoin_wait: float = 0.0


class ServerRole:
    """Rank 0: the parameter server applied through the caller's optimizer.

    Per update: :meth:`next_update` (waits for the gradients; fills :attr:`grads`), the caller
    puts :attr:`grads` into ``.grad`` and steps its optimizer on :attr:`params`, then
    :meth:`complete_update` sends the new parameters.
    """

    def __init__(
        self,
        transport: Transport,
        spec: VariantSpec,
        params: Sequence[torch.Tensor],
        *,
        keep_stale_params: bool,
        timeout: float,
        buffers: Sequence[torch.Tensor] = (),
        adaptive: Optional[AdaptiveK] = None,
        faults: Optional[FaultPolicy] = None,
    ) -> None:
        self.params = list(params)
        self.buffers = list(buffers)
        self.exchange = FlatExchange(self.params, self.buffers)
        self.grads = [torch.empty_like(p) for p in self.params]
        self.buffer_changes = [torch.empty_like(b) for b in self.buffers]
        initial = torch.zeros(self.exchange.numel, dtype=self.exchange.dtype)
        self.exchange.pack_parameters(self.params, initial, self.buffers)
        faults = faults or FaultPolicy()
        self.server = ParameterServer(transport, spec, initial, keep_stale_params=keep_stale_params, timeout=timeout,
                                      adaptive=adaptive, shrink_k=faults.shrink_k, min_learners=faults.min_learners,
                                      rejoin_wait=faults.rejoin_wait)
        self.update: Optional[PendingUpdate] = None
        self.loss = math.nan
        self.samples = 0.0
        self.logged: Dict[str, LoggedValue] = {}
        self.data: list[GradientData] = []
        start_counting(self.server.report)
        self.started = False
        self.finished = False

    @property
    def report(self) -> ServerReport:
        """What the server counted in this fit."""
        return self.server.report

    def start(self, version: int) -> None:
        """Send every learner the module's current parameters at ``version``."""
        self.exchange.pack_parameters(self.params, self.server.params, self.buffers)
        self.server.start(version)
        self.started = True

    def next_update(self) -> PendingUpdate:
        """Wait for the next update; its mean gradient is in :attr:`grads`, its mean loss in
        :attr:`loss`, its examples in :attr:`samples`, the mean of what its learners logged in
        :attr:`logged`, what each of its gradients was computed on in :attr:`data`. An update
        still pending (its optimizer step did not run) is completed first, with the parameters as
        they are."""
        if self.update is not None:
            self.complete_update()
        update = self.server.next_update()
        self.loss, mean_samples = self.exchange.unpack_gradient(update.gradient, self.grads, self.buffer_changes)
        with torch.no_grad():
            for buffer, change in zip(self.buffers, self.buffer_changes):
                buffer.add_(change)
        self.samples = mean_samples * len(update.gradients)
        decoded = [decode_push_note(note) for note in update.notes]
        self.data = [data for data, _ in decoded]
        self.logged = mean_over_update([logged for _, logged in decoded])
        self.update = update
        return update

    def stale_parameters(self, order: Sequence[torch.Tensor]) -> Optional[list[list[torch.Tensor]]]:
        """Per gradient of the pending update, the parameters it was computed at, listed in
        ``order`` (an optimizer's parameters; one not exchanged counts as unchanged); None when
        the server keeps no stale copies."""
        update = self.update
        if update is None or update.stale_params is None:
            return None
        result = []
        for flat in update.stale_params:
            views = [view.to(p.device) for view, p in zip(self.exchange.parameter_views(flat), self.params)]
            result.append(in_optimizer_order(order, self.params, views))
        return result

    def complete_update(self) -> UpdateRecord:
        """Send the parameters the optimizer step produced to the learners the policy starts (the
        update's loss goes to the adaptive K, if any)."""
        self.exchange.pack_parameters(self.params, self.server.params, self.buffers)
        self.update = None
        record = self.server.complete_update(loss=self.loss)
        count_used(self.server.report, record.learners, self.data)
        return record

    def stop(self) -> ServerReport:
        """Stop every learner (STOP, then wait for their goodbyes)."""
        self.finished = True
        return self.server.stop()

    def abort(self, error: BaseException) -> None:
        """Tell every learner that the run failed."""
        self.finished = True
        self.server.abort(error)


class LearnerRole:
    """Ranks 1..P: one gradient per training step, never an optimizer step."""

    def __init__(
        self,
        transport: Transport,
        params: Sequence[torch.Tensor],
        injected_delay: Optional[Callable[[], float]] = None,
        buffers: Sequence[torch.Tensor] = (),
        rejoin_wait: float = 0.0,
    ) -> None:
        self.params = list(params)
        self.buffers = list(buffers)
        self.exchange = FlatExchange(self.params, self.buffers)
        self._buffers_read = [torch.empty_like(b) for b in self.buffers]  # as the START set them; then the changes
        self.session = LearnerSession(transport, injected_delay, rejoin_wait=rejoin_wait)
        self.working = False
        self._left_out: set[str] = set()

    @property
    def stopped(self) -> bool:
        """True once the server sent STOP."""
        return self.session.stopped

    def take_work(self) -> bool:
        """Wait for a START and load its parameters into :attr:`params`; False once the server
        sent STOP."""
        work = self.session.next_work()
        if work is None:
            return False
        try:
            self.exchange.unpack_parameters(work.params, self.params, self.buffers)
            for read, buffer in zip(self._buffers_read, self.buffers):
                read.copy_(buffer)
        except BaseException:
            self.session.fail()
            raise
        self.working = True
        return True

    def deliver(self, loss: Optional[float], samples: float, logged: Optional[Mapping[str, LoggedValue]] = None,
                data: Optional[GradientData] = None) -> bool:
        """Push the gradient in the parameters' ``.grad`` (missing ones count as zeros) with the
        loss and batch size, and in its note ``data`` (what it was computed on; default: a fresh
        batch of ``samples`` examples) and ``logged``; False when the work was cancelled or the
        run stopped meanwhile."""
        if not self.working:
            raise RuntimeError("take_work() must come first")
        self.working = False
        try:
            grads = [p.grad for p in self.params]
            changes = [torch.sub(buffer, read, out=read) for buffer, read in zip(self.buffers, self._buffers_read)]
            self.exchange.pack_gradient(grads, math.nan if loss is None else float(loss), samples,
                                        self.session.gradient_buffer, changes)
            if data is None:
                data = GradientData(fresh_batches=1, fresh_samples=int(round(samples)))
            note, left_out = encode_push_note(data, logged or {})
        except BaseException:
            self.session.fail()
            raise
        if set(left_out) - self._left_out:
            self._left_out.update(left_out)
            warnings.warn(f"the logged values {', '.join(left_out)} do not fit in a gradient's note with the others: "
                          "the parameter server does not log them", stacklevel=2)
        return self.session.deliver(note=note)

    def fail(self) -> None:
        """This learner failed: tell the server."""
        self.working = False
        self.session.fail()

    def leave_if_running(self) -> None:
        """The learner's loop ended without the server's STOP: tell the server it is gone."""
        self.working = False
        self.session.leave()

    def close(self) -> None:
        self.session.close()
