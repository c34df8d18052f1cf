"""What a learner logs in its training step, carried to the server with the gradient.

The server runs no ``training_step``, so anything the module logs there (``train/loss``, a
torchmetrics accuracy logged as an object) exists only on the learners. :class:`StepLogs`
records the ``self.log`` calls a learner makes while it computes one gradient: the value (a
tensor's, a number's, or a torchmetrics object's value on this batch) and the options that say
how Lightning aggregates it. They travel as the PUSH's note (:func:`encode_note`, UTF-8 JSON).
The server averages each name over the gradients of an update (:func:`mean_over_update`) and
logs the mean once per update with the user's own options, weighted by the update's examples;
Lightning's epoch aggregation on the server does the rest. Plain Python and torch: the caller
installs the recorder on the module.
"""

from __future__ import annotations

import inspect
import json
import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

import torch

from lightning_echo.stragglers.processes.protocol import NOTE_CAPACITY

# The arguments of ``LightningModule.log`` that say how a value is aggregated and shown; they
# travel with it. Others (sync_dist, batch_size, rank_zero_only...) concern the learner's process.
FORWARDED_OPTIONS = ("prog_bar", "logger", "on_step", "on_epoch", "reduce_fx")
REDUCTIONS = ("mean", "max", "min", "sum")


@dataclass(frozen=True)
class LoggedValue:
    """One logged scalar and the options it was logged with (``None``: Lightning's default)."""

    value: float
    options: Dict[str, Any]


def scalar_of(value: Any) -> Optional[float]:
    """The scalar a logged value stands for on this batch: a number, a one-element tensor, or a
    torchmetrics ``Metric``'s value on the last batch it saw (what Lightning logs per step);
    ``None`` when there is none."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, torch.Tensor):
        return float(value.detach().float().reshape(-1)[0]) if value.numel() == 1 else None
    cache = getattr(value, "_forward_cache", None)  # torchmetrics: the batch value of the last forward
    if isinstance(cache, torch.Tensor) and cache.numel() == 1:
        return float(cache.detach().float())
    if isinstance(cache, (int, float)):
        return float(cache)
    return None


class StepLogs:
    """Records the values a module logs while ``active()`` holds (a learner computing a gradient).

    :meth:`install` replaces ``module.log`` on the instance (``log_dict`` goes through it too) and
    returns the undo; :meth:`take` hands over and forgets what was recorded.
    """

    def __init__(self) -> None:
        self._values: Dict[str, LoggedValue] = {}
        self._warned: set[str] = set()

    def install(self, module: Any, active: Callable[[], bool]) -> Callable[[], None]:
        original = module.log
        signature = inspect.signature(original)

        def log(*args: Any, **kwargs: Any) -> None:
            original(*args, **kwargs)
            if active():
                self._record(signature, args, kwargs)

        module.log = log

        def undo() -> None:
            if module.__dict__.get("log") is log:
                del module.log

        return undo

    def _record(self, signature: inspect.Signature, args: tuple, kwargs: Dict[str, Any]) -> None:
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError:
            return  # Lightning itself refused the call
        bound.apply_defaults()
        arguments = bound.arguments
        name, value = str(arguments["name"]), scalar_of(arguments["value"])
        if value is None:
            self._warn_once(name, f"cannot forward {name!r} to the parameter server: its value on a batch is not a "
                                  "scalar (log a tensor, a number, or a torchmetrics object updated through its forward)")
            return
        options = {key: arguments[key] for key in FORWARDED_OPTIONS if key in arguments}
        if options.get("reduce_fx") not in REDUCTIONS:
            self._warn_once(name, f"{name!r} is logged with reduce_fx={options.get('reduce_fx')!r}: the parameter "
                                  f"server aggregates it with 'mean' (it forwards only {', '.join(REDUCTIONS)})")
            options["reduce_fx"] = "mean"
        self._values[name] = LoggedValue(value, options)

    def _warn_once(self, name: str, message: str) -> None:
        if name not in self._warned:
            self._warned.add(name)
            warnings.warn(message, stacklevel=4)

    def take(self) -> Dict[str, LoggedValue]:
        values, self._values = self._values, {}
        return values


def encode_note(values: Mapping[str, LoggedValue], capacity: int = NOTE_CAPACITY) -> tuple[bytes, list[str]]:
    """``values`` as a PUSH note; returns the bytes and the names left out because the note
    would exceed ``capacity`` bytes (the first names logged go first)."""
    entries = {name: [logged.value, [logged.options.get(k) for k in FORWARDED_OPTIONS]] for name, logged in values.items()}
    whole = json.dumps(entries, separators=(",", ":")).encode() if entries else b""
    if len(whole) <= capacity:
        return whole, []
    kept: Dict[str, list[Any]] = {}
    left_out: list[str] = []
    note = b""
    for name, logged in values.items():
        candidate = dict(kept, **{name: [logged.value, [logged.options.get(k) for k in FORWARDED_OPTIONS]]})
        encoded = json.dumps(candidate, separators=(",", ":")).encode()
        if len(encoded) > capacity:
            left_out.append(name)
            continue
        kept, note = candidate, encoded
    return note, left_out


def decode_note(note: bytes) -> Dict[str, LoggedValue]:
    """The values a PUSH note carries (an empty note carries none)."""
    if not note:
        return {}
    return {name: LoggedValue(float(value), dict(zip(FORWARDED_OPTIONS, options)))
            for name, (value, options) in json.loads(note.decode()).items()}


def mean_over_update(notes: Sequence[Mapping[str, LoggedValue]]) -> Dict[str, LoggedValue]:
    """Per name, the mean of the values the update's gradients carried (over the gradients whose
    learner logged it; NaN values count, as Lightning would count them), with the options of its
    last occurrence."""
    totals: Dict[str, list[float]] = {}
    options: Dict[str, Dict[str, Any]] = {}
    for note in notes:
        for name, logged in note.items():
            totals.setdefault(name, []).append(logged.value)
            options[name] = logged.options
    return {name: LoggedValue(math.fsum(values) / len(values), options[name]) for name, values in totals.items()}
