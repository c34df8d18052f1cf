"""What a training framework's parameter-server run exchanges: a model's trainable parameters
(START) or their gradient (PUSH) as one flat buffer, then its floating-point buffers (BatchNorm
statistics and the like), then a trailer of two values.

Buffers travel as state in a START and as changes in a PUSH: a learner sends what its forward
passes did to each buffer (new value minus the value it read), the server adds the mean change
of an update's gradients to its own buffers. Running statistics thus follow the learners' data
as DDP's do, and a buffer nobody changes stays bit for bit what it was.

The trailer carries what the server cannot compute itself, since it never sees a batch: the
learner's training loss at the parameters it read, and the number of examples of its batch.
The server averages whole buffers, so after an update of K gradients the trailer holds the mean
loss and the mean batch size of those K gradients. In a START the trailer is zero.

Example::

    weight = torch.nn.Parameter(torch.ones(2, 2))
    exchange = FlatExchange([weight])
    flat = torch.empty(exchange.numel)
    weight.grad = torch.full((2, 2), 0.5)
    exchange.pack_gradient([weight.grad], loss=1.25, samples=8, flat=flat)
    grads = [torch.empty(2, 2)]
    assert exchange.unpack_gradient(flat, grads) == (1.25, 8.0) and grads[0].sum() == 2.0
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from lightning_echo.stragglers.processes.protocol import ParameterLayout

TRAILER = ("loss", "samples")


class FlatExchange:
    """The flat layout of ``params`` and ``buffers`` (one dtype, any devices) plus the trailer;
    copies in and out write into existing storage, across devices where the tensors live on an
    accelerator."""

    def __init__(self, params: Sequence[torch.Tensor], buffers: Sequence[torch.Tensor] = ()) -> None:
        self.layout = ParameterLayout([*params, *buffers])
        self.parameters = len(params)
        self.dtype = self.layout.dtype
        self.parameter_numel = sum(self.layout.numels[: self.parameters])  # buffers and trailer excluded
        self.numel = self.layout.numel + len(TRAILER)

    def _body(self, flat: torch.Tensor) -> torch.Tensor:
        if flat.dim() != 1 or flat.numel() != self.numel:
            raise ValueError(f"the flat buffer has shape {tuple(flat.shape)}; the exchange needs ({self.numel},)")
        return flat[: self.layout.numel]

    def pack_parameters(self, params: Sequence[torch.Tensor], flat: torch.Tensor,
                        buffers: Sequence[torch.Tensor] = ()) -> None:
        """``params`` and ``buffers`` into ``flat``, trailer zeroed (a START)."""
        self.layout.flatten_into([*params, *buffers], self._body(flat))
        flat[self.layout.numel :].zero_()

    def unpack_parameters(self, flat: torch.Tensor, params: Sequence[torch.Tensor],
                          buffers: Sequence[torch.Tensor] = ()) -> None:
        """A START's parameters and buffers into ``params`` and ``buffers`` (in place, without autograd)."""
        self.layout.unflatten_into(self._body(flat), [*params, *buffers])

    def pack_gradient(
        self, grads: Sequence[Optional[torch.Tensor]], loss: float, samples: float, flat: torch.Tensor,
        buffer_changes: Sequence[torch.Tensor] = (),
    ) -> None:
        """``grads`` (``None``: zeros), the buffers' changes, the loss and the batch size into ``flat`` (a PUSH)."""
        self.layout.flatten_into([*grads, *buffer_changes], self._body(flat))
        flat[self.layout.numel] = loss
        flat[self.layout.numel + 1] = samples

    def unpack_gradient(self, flat: torch.Tensor, grads: Sequence[torch.Tensor],
                        buffer_changes: Sequence[torch.Tensor] = ()) -> tuple[float, float]:
        """An averaged gradient into ``grads`` and the mean buffer changes into ``buffer_changes``;
        returns the trailer: (mean loss, mean batch size)."""
        self.layout.unflatten_into(self._body(flat), [*grads, *buffer_changes])
        return float(flat[self.layout.numel]), float(flat[self.layout.numel + 1])

    def parameter_views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Each parameter's slice of ``flat``, shaped like the parameter (views, on ``flat``'s device)."""
        return self.layout.views(self._body(flat))[: self.parameters]
