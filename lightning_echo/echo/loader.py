"""The train loader ``DataEchoing`` installs: an echo stage over the user's loader."""

from __future__ import annotations

from collections import deque
from dataclasses import replace
from typing import Any, Callable, Dict, Iterator, Optional, Sequence, Union

from torchdata.nodes import BaseNode, Loader

from lightning_echo.data.background import StepTimeMeter
from lightning_echo.data.lifetime import StopsAtLightningTeardown
from lightning_echo.echo.node import BatchEcho, EchoInfo, ExampleEcho

EchoNode = Union[BatchEcho, ExampleEcho]


class EchoLoader(StopsAtLightningTeardown):
    """Iterable over an echo node graph, with what the training loop needs around it.

    - ``served`` gets the :class:`EchoInfo` of every batch handed out, in order (the callback
      consumes it batch by batch, whatever Lightning prefetched), unless ``on_serve`` is set:
      then each info goes to ``on_serve`` as its batch is handed out (for a training step that
      iterates the loader itself, where nothing else would consume ``served``);
    - ``state_dict`` accounts for Lightning's one-batch prefetch when the loader has no length
      (Lightning then holds one batch it has not trained on yet);
    - ``len()`` is ``length``, the optimizer steps of one epoch, where that is known in advance
      (batch echoing with a number as factor over a loader with a length); without it Lightning
      treats the loader as an iterable of unknown length;
    - the step time between batches is recorded in ``meter`` (for ``slowdown`` throttles);
    - the public attributes of ``wrapped``, the user's loader (``dataset``, ``sampler``,
      ``batch_size``, ...), read through, as code written for the plain loader expects.
    """

    def __init__(
        self,
        root: BaseNode,
        echo: EchoNode,
        length: Optional[int] = None,
        meter: Optional[StepTimeMeter] = None,
        reuse_device_copy: bool = True,
        closers: Sequence[Callable[[], None]] = (),
        wrapped: Any = None,
    ) -> None:
        self.wrapped = wrapped
        self.on_serve: Optional[Callable[[EchoInfo], None]] = None
        self.echo = echo
        self.length = length
        self.meter = meter
        self.reuse_device_copy = reuse_device_copy
        self.served: deque[EchoInfo] = deque()
        self._loader = Loader(root)
        self._closers = list(closers)
        self._state_before_last: Optional[Dict[str, Any]] = None

    def __iter__(self) -> Iterator[Any]:
        iterator = iter(self._loader)
        self.served.clear()
        meter = self.meter
        if meter is not None:
            meter.pause()
        while True:
            if meter is not None:
                meter.on_request()
            snapshot = self._loader.state_dict() if self.length is None else None
            try:
                batch = next(iterator)
            except StopIteration:
                self._state_before_last = None
                if meter is not None:
                    meter.pause()
                return
            info = self.echo.last_info
            assert info is not None
            if info.same_as_previous and not self.reuse_device_copy:
                info = replace(info, same_as_previous=False)
            self._state_before_last = snapshot
            if self.on_serve is not None:
                self.on_serve(info)
            else:
                self.served.append(info)
            if meter is not None:
                meter.on_return()
            yield batch

    def __getattr__(self, name: str) -> Any:
        # Only reached for names this loader lacks; private names are not forwarded.
        wrapped = self.__dict__.get("wrapped")
        if name.startswith("_") or wrapped is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(wrapped, name)

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError("the number of echoed batches is not known in advance")
        return self.length

    def state_dict(self) -> Dict[str, Any]:
        if self.length is None and self._state_before_last is not None:
            return self._state_before_last
        return self._loader.state_dict()

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self._loader.load_state_dict(state_dict)

    def close(self) -> None:
        """Stop every background thread and worker process under this loader (iterating again restarts them)."""
        for close in self._closers:
            close()
