"""The parameter server's wire format: one message = a fixed int64 header and, for the kinds that
carry one, a flat payload (parameters or a gradient) in one contiguous byte buffer.

A message travels as one point-to-point send: ``HEADER_BYTES`` of header (``kind, learner,
version, ticket, numel, note`` as int64) followed by ``numel`` payload elements and, in a PUSH,
``note`` bytes of what the learner logged (at most ``NOTE_CAPACITY``). Sending header and
payload together (rather than as two sends) halves the handshakes per message and makes every
message atomic: two threads of one process can send on the same channel without their parts
interleaving. The receiver always posts a receive of the largest message; the header says how
much of it arrived.

Parameters travel flattened in a stable order (:class:`ParameterLayout`), so a learner's
gradient and the server's parameters are plain 1-D tensors that are written in place, never
re-allocated per step.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

from lightning_echo.errors import ConfigError, LightningEchoError

HEADER_FIELDS = ("kind", "learner", "version", "ticket", "numel", "note")
HEADER_BYTES = 8 * len(HEADER_FIELDS)
NOTE_CAPACITY = 4096  # bytes a PUSH may carry after its payload (the learner's logged values)


class Kind(enum.IntEnum):
    """What a message asks for.

    - ``START`` (server -> learner): compute a gradient at the payload's parameters, ``version``;
      ``ticket`` numbers the learner's starts. A START that reaches a learner still computing
      cancels that work: the learner drops it and starts this one.
    - ``PUSH`` (learner -> server): the payload is the gradient computed for the START with this
      ``ticket`` (at ``version``, its read version).
    - ``STOP`` (server -> learner): training is over (``ticket``: a :class:`StopReason`); the
      learner answers ``BYE`` and ends.
    - ``ERROR``: the sender failed and sends nothing more (server -> learner: training ended in
      an error; learner -> server: its gradient computation raised).
    - ``BYE`` (learner -> server): the learner ends; nothing follows.
    """

    START = 1
    PUSH = 2
    STOP = 3
    ERROR = 4
    BYE = 5


CARRIES_PAYLOAD = frozenset({Kind.START, Kind.PUSH})
CARRIES_NOTE = frozenset({Kind.PUSH})
FINAL = frozenset({Kind.STOP, Kind.ERROR, Kind.BYE})  # the sender sends nothing after these


class StopReason(enum.IntEnum):
    """Why the server sent STOP (in the STOP's ``ticket`` field)."""

    DONE = 0  # the run reached its end
    RETIRED = 1  # this learner did not answer in time and was dropped from the run


class ProtocolError(RuntimeError):
    """A peer sent a message the protocol does not allow at that point."""


@dataclass(frozen=True)
class Header:
    """A decoded message header."""

    kind: Kind
    learner: int
    version: int
    ticket: int
    numel: int
    note: int = 0


class Message:
    """One preallocated message: a byte buffer, its int64 header view and its payload view.

    Example::

        message = Message(numel=3, dtype=torch.float32)
        message.payload.copy_(torch.tensor([1.0, 2.0, 3.0]))
        wire = message.encode(Kind.PUSH, learner=0, version=4, ticket=7)
        assert wire.numel() == HEADER_BYTES + 12 and message.header().version == 4
    """

    def __init__(self, numel: int, dtype: torch.dtype) -> None:
        if numel < 0:
            raise ConfigError("numel", numel, "must be >= 0")
        itemsize = torch.empty((), dtype=dtype).element_size()
        self.numel = numel
        self.dtype = dtype
        self._payload_bytes = numel * itemsize
        self.buffer = torch.zeros(HEADER_BYTES + self._payload_bytes + NOTE_CAPACITY, dtype=torch.uint8)
        self._fields = self.buffer[:HEADER_BYTES].view(torch.int64).numpy()  # shares the buffer's memory
        self.payload = self.buffer[HEADER_BYTES : HEADER_BYTES + self._payload_bytes].view(dtype)
        self._note = self.buffer[HEADER_BYTES + self._payload_bytes :].numpy()

    @property
    def capacity(self) -> int:
        """Bytes of the largest message this buffer holds (header, full payload and note)."""
        return self.buffer.numel()

    def encode(self, kind: Kind, learner: int, version: int = 0, ticket: int = 0, note: bytes = b"") -> torch.Tensor:
        """Write the header (and ``note`` after the payload of a PUSH); return the bytes to send
        (the payload only for kinds that carry one)."""
        if note and kind not in CARRIES_NOTE:
            raise ValueError(f"a {kind.name} message carries no note")
        if len(note) > NOTE_CAPACITY:
            raise ValueError(f"a note of {len(note)} bytes exceeds NOTE_CAPACITY={NOTE_CAPACITY}")
        numel = self.numel if kind in CARRIES_PAYLOAD else 0
        self._fields[:] = (int(kind), learner, version, ticket, numel, len(note))
        if note:
            self._note[: len(note)] = memoryview(note)
        return self.buffer[: self.wire_bytes(kind, len(note))]

    def wire_bytes(self, kind: Kind, note: int = 0) -> int:
        """Bytes a message of ``kind`` with a ``note`` of that many bytes occupies on the wire."""
        return HEADER_BYTES + (self._payload_bytes if kind in CARRIES_PAYLOAD else 0) + note

    def header(self) -> Header:
        """The header as last written or received."""
        kind, learner, version, ticket, numel, note = self._fields.tolist()
        try:
            decoded = Kind(kind)
        except ValueError:
            raise ProtocolError(f"unknown message kind {kind} (known: {', '.join(k.name for k in Kind)})") from None
        expected = self.numel if decoded in CARRIES_PAYLOAD else 0
        if numel != expected:
            raise ProtocolError(f"a {decoded.name} message announced {numel} payload elements; expected {expected}")
        if not 0 <= note <= (NOTE_CAPACITY if decoded in CARRIES_NOTE else 0):
            raise ProtocolError(f"a {decoded.name} message announced a note of {note} bytes")
        return Header(decoded, learner, version, ticket, numel, note)

    def note(self) -> bytes:
        """The note of the message as last written or received (empty when it has none)."""
        return self._note[: int(self._fields[5])].tobytes()


class ParameterLayout:
    """A stable flat order for a list of tensors of one dtype: tensor ``i`` occupies
    ``flat[offsets[i]:offsets[i] + numels[i]]``. Copies in and out write into existing storage;
    nothing is allocated per call.

    Example::

        weights, bias = torch.ones(2, 3), torch.zeros(3)
        layout = ParameterLayout([weights, bias])
        flat = torch.empty(layout.numel)
        layout.flatten_into([weights, bias], flat)
        layout.unflatten_into(flat * 2, [weights, bias])   # weights are now all 2
    """

    def __init__(self, tensors: Iterable[torch.Tensor]) -> None:
        tensors = list(tensors)
        if not tensors:
            raise ConfigError("parameters", "[]", "need at least one tensor to exchange")
        dtypes = sorted({str(t.dtype) for t in tensors})
        if len(dtypes) > 1:
            raise ConfigError("parameters", ", ".join(dtypes), "must share one dtype to travel as one flat buffer")
        self.dtype = tensors[0].dtype
        self.shapes = [tuple(t.shape) for t in tensors]
        self.numels = [t.numel() for t in tensors]
        self.offsets = [sum(self.numels[:i]) for i in range(len(tensors))]
        self.numel = sum(self.numels)

    def _check_flat(self, flat: torch.Tensor) -> None:
        if flat.dim() != 1 or flat.numel() != self.numel:
            raise ValueError(f"the flat buffer has shape {tuple(flat.shape)}; the layout needs ({self.numel},)")

    def views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Each tensor's slice of ``flat``, shaped like the tensor (views: writes go to ``flat``)."""
        self._check_flat(flat)
        return [flat[o : o + n].view(s) for o, n, s in zip(self.offsets, self.numels, self.shapes)]

    def flatten_into(self, tensors: Sequence[torch.Tensor], flat: torch.Tensor) -> torch.Tensor:
        """Copy ``tensors`` (``None`` entries count as zeros, as a missing ``.grad``) into ``flat``."""
        self._check_flat(flat)
        if len(tensors) != len(self.shapes):
            raise ValueError(f"{len(tensors)} tensors given; the layout has {len(self.shapes)}")
        for tensor, offset, numel, shape in zip(tensors, self.offsets, self.numels, self.shapes):
            part = flat[offset : offset + numel]
            if tensor is None:
                part.zero_()
            elif tuple(tensor.shape) != shape:
                raise ValueError(f"a tensor of shape {tuple(tensor.shape)} where the layout has {shape}")
            else:
                part.copy_(tensor.detach().reshape(-1))
        return flat

    def unflatten_into(self, flat: torch.Tensor, tensors: Sequence[torch.Tensor]) -> None:
        """Copy ``flat`` back into ``tensors`` (in place, without autograd)."""
        self._check_flat(flat)
        if [tuple(t.shape) for t in tensors] != self.shapes:
            raise ValueError(f"tensor shapes {[tuple(t.shape) for t in tensors]} differ from the layout's {self.shapes}")
        with torch.no_grad():
            for tensor, offset, numel in zip(tensors, self.offsets, self.numels):
                tensor.copy_(flat[offset : offset + numel].view(tensor.shape))


class ParameterServerError(LightningEchoError, RuntimeError):
    """Training on the parameter server cannot go on (a needed learner or the server is gone)."""
