"""What each gradient was computed on (a fresh batch or an echo) and how long its learner waited
for its loader: carried in the PUSH's note, counted per learner on the server.

A learner that echoes its data (``DataEchoing`` on the learners) computes several gradients on
one fresh batch; the server must count the cluster's fresh data, not its gradients, so every PUSH
of the Lightning strategy says what its batch brought: a :class:`GradientData` record, one JSON
line ahead of the logged values (``[fresh_batches, fresh_samples, data_wait_s]`` and a newline;
the logged values' JSON never holds a raw newline). A learner without ``DataEchoing`` reports
every batch as fresh. The server adds the records of the gradients it uses into its
:class:`~lightning_echo.stragglers.processes.server.ServerReport` (:func:`count_used`).

Example::

    data = GradientData(fresh_batches=0, fresh_samples=0, data_wait_s=0.25)
    note = encode_push_note(data, {})
    assert note == b"[0,0,0.25]\\n" and decode_push_note(note) == (data, {})
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

from lightning_echo.stragglers.processes.logged import LoggedValue, decode_note, encode_note
from lightning_echo.stragglers.processes.protocol import NOTE_CAPACITY, ProtocolError
from lightning_echo.stragglers.processes.server import ServerReport

SEPARATOR = b"\n"
# The per-learner lists of ServerReport that count the gradients' data (the server's checkpoint carries them).
PER_LEARNER = ("fresh_gradients_per_learner", "echoed_gradients_per_learner", "fresh_samples_per_learner",
               "data_wait_s_per_learner")


@dataclass(frozen=True)
class GradientData:
    """What one gradient was computed on: the fresh batches and fresh examples its batch brought
    (both 0 for an echo), and ``data_wait_s``, the seconds its learner has waited for its loader
    so far in this fit (cumulative: the newest record of a learner holds its total)."""

    fresh_batches: int
    fresh_samples: int
    data_wait_s: float = 0.0

    @property
    def is_echo(self) -> bool:
        """True when the gradient's batch brought no fresh example."""
        return self.fresh_samples == 0


def encode_push_note(data: GradientData, logged: Mapping[str, LoggedValue]) -> tuple[bytes, list[str]]:
    """A PUSH's note: ``data``'s line, then ``logged`` (:func:`~.logged.encode_note`) in the room
    left; returns the bytes and the logged names left out."""
    wait = round(data.data_wait_s, 6) if math.isfinite(data.data_wait_s) else 0.0
    line = json.dumps([int(data.fresh_batches), int(data.fresh_samples), wait], separators=(",", ":")).encode()
    values, left_out = encode_note(logged, NOTE_CAPACITY - len(line) - len(SEPARATOR))
    return line + SEPARATOR + values, left_out


def decode_push_note(note: bytes) -> tuple[GradientData, dict[str, LoggedValue]]:
    """A PUSH note's gradient data and logged values (:func:`encode_push_note`'s inverse)."""
    line, separator, values = note.partition(SEPARATOR)
    if not separator:
        raise ProtocolError("a PUSH's note lacks the line that says what its gradient was computed on "
                            "(the learner runs another version of lightning_echo?)")
    fresh_batches, fresh_samples, wait = json.loads(line.decode())
    return GradientData(int(fresh_batches), int(fresh_samples), float(wait)), decode_note(values)


def start_counting(report: ServerReport) -> None:
    """Give ``report`` a zero of each per-learner data counter (the plain loop leaves them empty)."""
    for name in PER_LEARNER:
        setattr(report, name, [0.0 if name == "data_wait_s_per_learner" else 0] * report.learners)


def count_used(report: ServerReport, learners: Sequence[int], data: Sequence[GradientData]) -> None:
    """Add the data of an update's gradients (computed by ``learners``, in the same order) to
    ``report``'s per-learner counters."""
    for learner, record in zip(learners, data):
        if record.is_echo:
            report.echoed_gradients_per_learner[learner] += 1
        else:
            report.fresh_gradients_per_learner[learner] += 1
        report.fresh_samples_per_learner[learner] += record.fresh_samples
        waits = report.data_wait_s_per_learner
        waits[learner] = max(waits[learner], record.data_wait_s)
