"""Bring a small value from global rank 0 of spawned worker processes back to the process that started them."""

from __future__ import annotations

import multiprocessing
from multiprocessing.connection import Connection
from multiprocessing.context import get_spawning_popen
from typing import Any, Dict, Optional


class RankZeroReturn:
    """A one-way channel from the processes a spawn-based launcher starts (``strategy="ddp_spawn"``)
    back to the launching process.

    Lightning's spawn launcher pickles the Trainer (with its callbacks) into every worker and brings
    back only the weights, ``trainer.state`` and ``callback_metrics``; it offers no hook in the
    launching process to bring back a callback's own state. So this object opens a pipe when it is
    pickled to start a process, keeps the receiving end, and sends the sending end along: the
    worker of global rank 0 calls :meth:`send`, the launching process reads :meth:`received`.
    Pickled any other way (a deep copy, a checkpoint), it carries nothing. Processes started by
    ``fork`` (``ddp_fork``, ``ddp_notebook``) are not pickled and get no channel.
    """

    def __init__(self) -> None:
        self._receiver: Optional[Connection] = None
        self._sender: Optional[Connection] = None
        self._value: Optional[Any] = None

    def __getstate__(self) -> Dict[str, Any]:
        if get_spawning_popen() is None:  # not pickled to start a process
            return {"sender": None}
        if self._sender is None:  # pickled once per started process: one pipe for all of them
            self._receiver, self._sender = multiprocessing.Pipe(duplex=False)
        return {"sender": self._sender}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self._receiver, self._sender, self._value = None, state["sender"], None

    def send(self, value: Any) -> None:
        """In a started process: send ``value`` and close the channel; nothing elsewhere."""
        sender, self._sender = self._sender, None
        if sender is None or self._receiver is not None:
            return  # not a started process (the launching process holds the receiving end)
        try:
            sender.send(value)
        finally:
            sender.close()

    def close(self) -> None:
        """In a started process that sends nothing (ranks other than 0): close the channel."""
        if self._receiver is None and self._sender is not None:
            self._sender.close()
            self._sender = None

    def forget(self) -> None:
        """Drop a value received earlier (a new ``fit`` in this process counts afresh)."""
        self._value = None

    def received(self) -> Optional[Any]:
        """In the launching process: the value rank 0 sent, once it has arrived; None before and elsewhere."""
        receiver = self._receiver
        if receiver is not None and receiver.poll():
            try:
                self._value = receiver.recv()
            except EOFError:  # every sending end closed without sending
                self._value = None
            receiver.close()
            if self._sender is not None:
                self._sender.close()
            self._receiver, self._sender = None, None
        return self._value
