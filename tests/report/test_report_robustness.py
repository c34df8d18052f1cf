"""`lightning-echo report` on run directories from anyone: malformed runs are left out with their
reason (in the report and on stderr) while the rest is reported, symbolic-link loops count each run
once, a `$` in a label is plain text, a loss that is not finite marks the run diverged, and
nothing taken from a run directory reaches the HTML unescaped."""

from __future__ import annotations

import json
import math
import re
import struct
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import pytest

from lightning_echo.app.config import compose_config
from lightning_echo.app.job import flat_run_config
from lightning_echo.cli import main
from lightning_echo.records import RUN_FILE, RunRecordFile
from lightning_echo.report.runs import read_run

CSV_HEADER = ["epoch", "progress/fresh_samples", "progress/optimizer_steps", "step", "time/elapsed_s", "train/loss", "val/loss"]
XSS = "<script>alert(1)</script>"


@lru_cache(maxsize=None)
def _flat_config(overrides: tuple[str, ...]) -> str:
    return json.dumps(flat_run_config(compose_config(["experiment=single", *overrides]), "g"))


def write_run(directory: Path, overrides: Sequence[str] = (), losses: Sequence[float] = (2.0, 1.0, 0.5),
              status: str = "completed", name: Optional[str] = None, group: str = "g", error: Optional[str] = None,
              edit: Optional[Callable[[dict[str, Any]], None]] = None) -> Path:
    """A run directory as the command line writes it: ``run.json`` with the flat and resolved
    config of ``experiment=single`` plus ``overrides``, and ``csv/metrics.csv`` logging ``losses``
    as val/loss at steps 0, 10, 20, ... (``edit`` changes the flat config first)."""
    config = json.loads(_flat_config(tuple(overrides)))
    if edit is not None:
        edit(config)
    (directory / "csv").mkdir(parents=True)
    RunRecordFile(directory / RUN_FILE, group=group, name=name or directory.name, config=config).write(status, error=error)
    lines = [",".join(CSV_HEADER)]
    for index, loss in enumerate(losses):
        step = 10 * index
        lines.append(f",{64 * step},{step},{step},{0.1 * step},,")
        lines.append(f"0,,,{step},,{loss},{loss}")
    (directory / "csv" / "metrics.csv").write_text("\n".join(lines) + "\n")
    return directory


def edit_record(directory: Path, change: Callable[[dict[str, Any]], None]) -> None:
    record = json.loads((directory / RUN_FILE).read_text())
    change(record)
    (directory / RUN_FILE).write_text(json.dumps(record))


def write_wandb_run(directory: Path, history: Sequence[dict[str, float]]) -> Path:
    """A wandb offline run directory: ``run-*.wandb`` in wandb's record log format (a run record
    with its config, one history record per row, an exit record)."""
    from wandb.proto import wandb_internal_pb2 as pb

    records = [pb.Record()]
    records[0].run.run_id, records[0].run.display_name, records[0].run.run_group = "abc", "wandb-run", "g"
    item = records[0].run.config.update.add()
    item.key, item.value_json = "algorithm", json.dumps({"value": "sync"})
    for row in history:
        record = pb.Record()
        for key, value in row.items():
            entry = record.history.item.add()
            entry.key, entry.value_json = key, json.dumps(value)
        records.append(record)
    records.append(pb.Record())
    records[-1].exit.exit_code = 0
    data = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
    for record in records:
        raw = record.SerializeToString()
        data += struct.pack("<IHB", zlib.crc32(raw), len(raw), 1) + raw  # type 1: a whole record
    directory.mkdir(parents=True)
    (directory / "run-abc.wandb").write_bytes(data)
    return directory


@pytest.mark.slow
def test_malformed_runs_are_left_out_with_their_reason_and_the_rest_is_reported(tmp_path, capsys) -> None:
    sweep = tmp_path / "sweep"
    write_run(sweep / "0", ["seed=0"])
    write_run(sweep / "1", ["seed=1"])
    # A label that would be matplotlib mathtext, on a configuration of its own: drawn as plain text.
    write_run(sweep / "2", ["optimizer.lr=0.5"], edit=lambda c: c.update(label="cost $5 or $\\frac{$"))
    reasons: dict[str, str] = {}

    def broken(name: str, reason: str, change: Callable[[Path], None]) -> None:
        change(write_run(sweep / name))
        reasons[name] = reason

    broken("truncated", "run.json: not valid JSON",
           lambda d: (d / RUN_FILE).write_text((d / RUN_FILE).read_text()[:200]))
    broken("latin1", "not UTF-8", lambda d: (d / RUN_FILE).write_bytes(
        (d / RUN_FILE).read_bytes().replace(b'"g"', '"caf\xe9"'.encode("latin-1"), 1)))
    broken("list", "run.json: holds a list, not an object", lambda d: (d / RUN_FILE).write_text("[1, 2]"))
    broken("nested", "run.json: not valid JSON (run.json is nested too deeply",
           lambda d: (d / RUN_FILE).write_text("[" * 200_000))
    broken("status", "run.json: status is a int, not a string", lambda d: edit_record(d, lambda r: r.update(status=5)))
    broken("config", "run.json: config is a str, not an object", lambda d: edit_record(d, lambda r: r.update(config="x")))
    broken("label", "run.json: label is a list, not a string",
           lambda d: edit_record(d, lambda r: r["config"].update(label=["a"])))
    extra_row = ",".join(["0"] * (len(CSV_HEADER) + 2))
    broken("extra_fields", f"line 8 has {len(CSV_HEADER) + 2} fields, the header {len(CSV_HEADER)}",
           lambda d: (d / "csv" / "metrics.csv").open("a").write(extra_row + "\n"))
    broken("nan_step", "step nan is not a step number",
           lambda d: (d / "csv" / "metrics.csv").open("a").write("0,,,nan,,1.0,1.0\n"))
    wandb_run = write_wandb_run(sweep / "wandb" / "offline-run-1", [
        {"trainer/global_step": 0, "progress/optimizer_steps": 0, "time/elapsed_s": 0.0, "progress/fresh_samples": 0},
        {"trainer/global_step": 0, "val/loss": 2.0}])
    assert read_run(wandb_run).status == "completed"  # whole, it is a good run
    wandb_file = wandb_run / "run-abc.wandb"
    wandb_file.write_bytes(wandb_file.read_bytes()[:-5])
    reasons["wandb/offline-run-1"] = "run-abc.wandb: truncated"
    (sweep / "loop").symlink_to(sweep, target_is_directory=True)  # a symbolic-link loop

    main(["report", str(sweep), str(sweep / "0"), "--out", str(tmp_path / "r")])  # no SystemExit: it worked
    out, err = capsys.readouterr()
    page = (tmp_path / "r" / "index.html").read_text()
    for name, reason in reasons.items():
        line = next((line for line in err.splitlines() if line.startswith(f"warning: {sweep / name}: left out")), "")
        assert reason in line, (name, err)
        assert reason.replace("'", "&#x27;") in page, name
    rows = {cells[0]: cells for cells in (re.split(r"\s{2,}", line) for line in out.splitlines())}
    assert rows["sync, optimizer.lr=0.1"][1] == "2", out  # the two seeds, each counted once
    assert rows["cost $5 or $\\frac{$, optimizer.lr=0.5"][1] == "1", out
    assert sorted(p.name for p in (tmp_path / "r").glob("*.png")) == [
        "loss_vs_fresh_samples.png", "loss_vs_steps.png", "loss_vs_time.png"]


def test_a_loss_that_is_not_finite_in_the_log_marks_the_run_diverged(tmp_path) -> None:
    run = read_run(write_run(tmp_path / "run", losses=(2.0, 1.0, math.nan)))
    assert run.status == "diverged" and run.error == "train/loss=nan at step 20 in its log"
    assert [p.value for p in run.series["val/loss"]] == [2.0, 1.0]  # its finite curve is kept


def test_the_html_report_escapes_everything_taken_from_run_directories(tmp_path, capsys) -> None:
    def hostile(config: dict[str, Any]) -> None:
        config.update(label=XSS)
        config["config"]["model"]["note"] = XSS  # a setting whose value differs between the runs

    write_run(tmp_path / "runs" / "0", status=XSS, name=XSS, group=XSS, error=XSS, edit=hostile)
    write_run(tmp_path / "runs" / "1")
    main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "r"), "--target", "0.7"])
    capsys.readouterr()
    page = (tmp_path / "r" / "index.html").read_text()
    assert "<script" not in page.lower()
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    # name, group (and the title made of it), status, label, the setting and the error all shown, escaped
    assert page.count(escaped) >= 7, page
    assert f"<span>{escaped}</span>" in page  # an unknown status gets no class attribute

