"""What a learner logs in ``training_step``, carried to the server in the PUSH's note: recorded on
a real fit (tensors, numbers, torchmetrics objects, ``log_dict``), encoded within the note's
capacity, and averaged per update on the server."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import torch
from torchmetrics import MeanMetric

from lightning_echo.lightning_namespace import pl
from lightning_echo.stragglers.processes.logged import (
    FORWARDED_OPTIONS,
    LoggedValue,
    StepLogs,
    decode_note,
    encode_note,
    mean_over_update,
    scalar_of,
)
from lightning_echo.stragglers.processes.protocol import NOTE_CAPACITY, Kind, Message, ProtocolError

from project_modules import DigitsDataModule, DigitsLitModule


class LogsEverything(DigitsLitModule):
    def __init__(self) -> None:
        super().__init__(scheduler=False)
        self.mean_loss = MeanMetric()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss, _, _ = self.model_step(batch)
        self.mean_loss(loss)
        self.log("plain", loss)  # a tensor, Lightning's defaults in training_step
        self.log("metric", self.mean_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log_dict({"a": 1.5, "b": torch.tensor(2.0)}, reduce_fx="max")
        self.log("callable", loss, reduce_fx=torch.mean)
        return loss


class TakeEachStep(pl.Callback):
    def __init__(self, logs: StepLogs) -> None:
        self.logs, self.steps = logs, []

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, *args: Any) -> None:
        self.steps.append((float(outputs["loss"]), self.logs.take()))


def test_a_real_fit_records_each_steps_values_with_their_options() -> None:
    module, logs = LogsEverything(), StepLogs()
    undo = logs.install(module, active=lambda: module.trainer.training)
    taker = TakeEachStep(logs)
    trainer = pl.Trainer(max_steps=3, callbacks=[taker], logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False, limit_val_batches=0)
    with pytest.warns(UserWarning, match="'callable' is logged with reduce_fx"):
        trainer.fit(module, datamodule=DigitsDataModule(batch_size=8))
    assert len(taker.steps) == 3
    for loss, values in taker.steps:
        assert set(values) == {"plain", "metric", "a", "b", "callable"}
        assert values["plain"].value == pytest.approx(loss) and values["plain"].options["on_step"] is None
        # the torchmetrics object: its value on this batch, which is the loss (one update per batch)
        assert values["metric"].value == pytest.approx(loss)
        assert values["metric"].options == {"prog_bar": True, "logger": None, "on_step": False, "on_epoch": True,
                                            "reduce_fx": "mean"}
        assert (values["a"].value, values["b"].value, values["a"].options["reduce_fx"]) == (1.5, 2.0, "max")
        assert values["callable"].options["reduce_fx"] == "mean"  # a callable cannot travel: mean, with a warning
    undo()
    assert "log" not in vars(module)  # the class's own log again


def test_scalars_of_what_can_be_logged() -> None:
    metric = MeanMetric()
    assert scalar_of(metric) is None  # no batch seen yet
    metric(torch.tensor([1.0, 3.0]))
    assert scalar_of(metric) == 2.0
    assert scalar_of(torch.tensor(0.5)) == 0.5 and scalar_of(3) == 3.0 and scalar_of(True) == 1.0
    assert scalar_of(torch.ones(2)) is None


def _values(count: int) -> dict[str, LoggedValue]:
    options = dict.fromkeys(FORWARDED_OPTIONS)
    return {f"train/metric_{i:03d}": LoggedValue(float(i), options) for i in range(count)}


def test_the_note_round_trips_and_what_does_not_fit_is_named() -> None:
    note, left_out = encode_note(_values(3))
    assert left_out == [] and decode_note(note) == _values(3)
    assert encode_note({}) == (b"", []) and decode_note(b"") == {}
    many = _values(200)
    note, left_out = encode_note(many)
    assert len(note) <= NOTE_CAPACITY and left_out and set(left_out) | set(json.loads(note)) == set(many)
    assert list(json.loads(note)) == list(many)[: len(many) - len(left_out)]  # the first logged go first


def test_the_server_averages_each_name_over_the_gradients_that_carried_it() -> None:
    options = dict.fromkeys(FORWARDED_OPTIONS)
    notes = [{"loss": LoggedValue(1.0, options), "acc": LoggedValue(0.5, options)},
             {"loss": LoggedValue(3.0, options)},
             {}]
    means = mean_over_update(notes)
    assert means["loss"].value == 2.0 and means["acc"].value == 0.5
    assert math.isnan(mean_over_update([{"x": LoggedValue(math.nan, options)}])["x"].value)


def test_a_push_carries_its_note_after_the_payload_and_other_kinds_carry_none() -> None:
    message = Message(numel=3, dtype=torch.float32)
    message.payload.copy_(torch.tensor([1.0, 2.0, 3.0]))
    wire = message.encode(Kind.PUSH, learner=1, version=2, ticket=3, note=b'{"a":[1,[]]}')
    assert wire.numel() == message.wire_bytes(Kind.PUSH, 12) and message.header().note == 12
    received = Message(numel=3, dtype=torch.float32)
    received.buffer[: wire.numel()] = wire
    assert received.header().note == 12 and received.note() == b'{"a":[1,[]]}'
    assert received.payload.tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="START message carries no note"):
        message.encode(Kind.START, learner=1, note=b"x")
    with pytest.raises(ValueError, match="exceeds NOTE_CAPACITY"):
        message.encode(Kind.PUSH, learner=1, note=b"x" * (NOTE_CAPACITY + 1))
    message.encode(Kind.STOP, learner=1)
    message._fields[5] = 5  # a STOP that claims a note: garbage on the wire
    with pytest.raises(ProtocolError, match="a STOP message announced a note of 5 bytes"):
        message.header()
