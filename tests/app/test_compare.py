"""The experiment workflow end to end: the default comparison job, sweeps with a shared group id,
wandb offline runs, per-job status and failed-job summaries, and `lightning-echo report`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import console_script, quiet_trainer_overrides, run_cli
from lightning_echo.report.wandb_offline import find_offline_runs, read_offline_run
from lightning_echo.cli import main
from lightning_echo.report.runs import find_runs

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# A short version of the default comparison: same preset, a smaller data budget.
SHORT_COMPARISON = ["budget.fresh_samples=4096", "trainer.val_check_interval=4", "seed=0",
                    "loader.seconds_per_batch=0.005", *quiet_trainer_overrides()]


def _sweep_dir(tmp_path: Path) -> Path:
    (sweep,) = list((tmp_path / "le_outputs" / "multirun").iterdir())
    return sweep


def _job_dirs(sweep: Path) -> list[Path]:
    return sorted((p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


def test_default_job_compares_sync_and_echo_with_table_and_html_report(capsys, monkeypatch, tmp_path) -> None:
    main(SHORT_COMPARISON)
    out = capsys.readouterr().out
    sweep = _sweep_dir(tmp_path)
    jobs = _job_dirs(sweep)
    algorithms = [json.loads((d / "run.json").read_text())["config"]["algorithm"] for d in jobs]
    assert algorithms == ["sync", "echo"]
    # The table: one row per algorithm with every column the issue asks for.
    for column in ("time to target [s]", "fresh samples to target", "optimizer steps to target", "final val/loss", "speed-up"):
        assert column in out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith(("sync ", "echo "))}
    assert set(rows) == {"sync", "echo"} and "1.00 (baseline)" in rows["sync"]
    assert "[job 0] completed" in out and "[job 1] completed" in out
    assert "sweep: 2 jobs, 2 completed, 0 failed" in out
    html = sweep / "report" / "index.html"
    assert f"report: {html}" in out
    page = html.read_text()
    assert page.count("data:image/png;base64,") == 3  # the three figures, embedded
    for name in ("loss_vs_time.png", "loss_vs_fresh_samples.png", "loss_vs_steps.png"):
        assert (sweep / "report" / name).read_bytes().startswith(PNG_SIGNATURE)
        assert name in page
    assert "sync" in page and "echo auto" in page
    # Both runs saw the same data budget; the echoed one took more optimizer steps for it.
    summaries = [json.loads((d / "summary.json").read_text()) for d in jobs]
    assert summaries[0]["fresh_samples"] == summaries[1]["fresh_samples"] >= 4096
    assert summaries[1]["optimizer_steps"] > summaries[0]["optimizer_steps"]
    _check_wandb_report_of(sweep, capsys, monkeypatch)


def _check_wandb_report_of(sweep: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """The wandb Report of these runs is built offline with the HTML report's panels; publishing
    it without credentials is one clear line."""
    import wandb_workspaces.reports.v2 as wr

    from lightning_echo.report.build import write_report
    from lightning_echo.report.wandb_bridge import comparison_spec
    from lightning_echo.report.wandb_report import build_wandb_report

    report = write_report([sweep], sweep / "report2")
    spec = comparison_spec(report.comparison, project="lightning_echo", entity="my-team", title="t")
    assert spec.groups == (sweep.name,) and spec.group_by[0] == "algorithm"
    built = build_wandb_report(spec)
    grid = next(b for b in built.blocks if isinstance(b, wr.PanelGrid))
    assert sweep.name in grid.runsets[0].filters and "config.algorithm" in grid.runsets[0].groupby
    plots = [(p.x, tuple(p.y)) for p in grid.panels]
    assert plots[:3] == [(x, ("val/loss",)) for x in ("time/elapsed_s", "progress/fresh_samples", "progress/optimizer_steps")]
    markdown = " ".join(b.text for b in built.blocks if isinstance(b, wr.MarkdownBlock))
    assert "| sync |" in markdown and "speed-up" in markdown
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(sweep / "no_netrc"))
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(sweep), "--out", str(sweep / "report3"), "--wandb", "--wandb-entity", "my-team"])
    assert exit_info.value.code == 2
    assert "no wandb credentials" in capsys.readouterr().err


@pytest.mark.slow
def test_four_job_sweep_through_console_script_shares_a_group_and_groups_in_the_report(tmp_path) -> None:
    result = run_cli(["-m", "experiment=single", "algorithm=sync,echo", "echo.factor=2", "seed=0,1",
                      "trainer.max_steps=24", "trainer.val_check_interval=6", "trainer.check_val_every_n_epoch=null",
                      *quiet_trainer_overrides()], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = _sweep_dir(tmp_path)
    records = [json.loads((d / "run.json").read_text()) for d in _job_dirs(sweep)]
    assert len(records) == 4 and {r["group"] for r in records} == {sweep.name}
    assert all(r["status"] == "completed" for r in records)
    assert {(r["config"]["algorithm"], r["config"]["echo_factor"], r["config"]["seed"]) for r in records} == {
        ("sync", 1, 0), ("sync", 1, 1), ("echo", 2, 0), ("echo", 2, 1)}
    for number in range(4):
        assert f"[job {number}] completed" in result.stdout
    # The report command on the sweep directory: two configurations of two seeds each.
    out_dir = tmp_path / "my_report"
    report = run_cli(["report", str(sweep), "--out", str(out_dir)], cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-3000:]
    table = {line.split()[0] + " " + line.split()[1]: line for line in report.stdout.splitlines()
             if line.startswith(("sync ", "echo x2 "))}
    assert set(table) == {"sync 2", "echo x2"}, report.stdout
    assert table["echo x2"].split()[2] == "2"  # two runs (seeds) in the echo configuration
    assert (out_dir / "index.html").is_file() and f"report: {out_dir / 'index.html'}" in report.stdout


@pytest.mark.slow
def test_wandb_sweep_runs_share_the_group_and_log_flat_config(tmp_path) -> None:
    result = run_cli(["-m", "experiment=single", "logger=wandb", "algorithm=sync,echo", "loader=throttle",
                      "loader.slowdown=2", "trainer.max_steps=8", *quiet_trainer_overrides()], cwd=tmp_path,
                     env_extra={"WANDB_API_KEY": "", "NETRC": str(tmp_path / "no_netrc"), "WANDB_MODE": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = _sweep_dir(tmp_path)
    runs = [read_offline_run(p) for p in find_offline_runs(sweep)]
    assert len(runs) == 2
    assert {run.group for run in runs} == {sweep.name}
    flat = [{k: (v["value"] if isinstance(v, dict) and "value" in v else v) for k, v in run.config.items()} for run in runs]
    assert {(c["algorithm"], c["echo_factor"], c["slowdown"], c["seed"]) for c in flat} == {("sync", 1, 2.0, 0), ("echo", 2, 2.0, 0)}
    assert all(run.exit_code == 0 for run in runs)
    # The report reads the wandb runs when there is no CSV log.
    found = find_runs([p for p in find_offline_runs(sweep)])
    assert {r.config["algorithm"] for r in found} == {"sync", "echo"} and all(r.source == "wandb" for r in found)
    assert all("val/loss" in r.series and r.series["val/loss"][-1].elapsed_s > 0 for r in found)


@pytest.mark.slow
def test_a_failing_job_is_reported_and_does_not_hide_the_others(tmp_path) -> None:
    import torch

    from lightning_echo.data.formats.idx import write_idx

    good, empty = tmp_path / "good", tmp_path / "empty"
    names = {"train": 64, "t10k": 32}
    generator = torch.Generator().manual_seed(0)
    for prefix, n in names.items():
        (good / "mnist").mkdir(parents=True, exist_ok=True)
        write_idx(good / "mnist" / f"{prefix}-images-idx3-ubyte", torch.randint(0, 256, (n, 28, 28), generator=generator, dtype=torch.uint8))
        write_idx(good / "mnist" / f"{prefix}-labels-idx1-ubyte", torch.randint(0, 10, (n,), generator=generator, dtype=torch.uint8))
    # Job 1 has no files and downloads them when it starts (preflight reads only files that are
    # there): nothing listens on this local port, so the download fails without using the network.
    empty.mkdir()
    result = run_cli(["-m", "experiment=single", "data=mnist", "model=logreg", f"data.root={good},{empty}",
                      "data.download=true", "+data.url=http://127.0.0.1:9/",
                      "data.verify_checksums=false", "data.batch_size=16", "trainer.max_steps=10",
                      *quiet_trainer_overrides()], cwd=tmp_path)
    assert result.returncode == 1
    assert "[job 0] completed" in result.stdout and "[job 1] FAILED" in result.stdout
    assert "sweep: 2 jobs, 1 completed, 1 failed" in result.stdout
    failed_line = next(line for line in result.stdout.splitlines() if line.strip().startswith("failed: job 1"))
    assert "train-images-idx3-ubyte" in failed_line
    sweep = _sweep_dir(tmp_path)
    failed = json.loads((sweep / "1" / "run.json").read_text())
    assert failed["status"] == "failed" and "Traceback" in failed["traceback"]
    assert json.loads((sweep / "0" / "summary.json").read_text())["optimizer_steps"] == 10
    # The report still shows job 0 and says (on stderr) why job 1 is missing.
    assert f"warning: {sweep / '1'}: left out, no val/loss logged" in result.stderr
    assert (sweep / "report" / "index.html").is_file()


def test_report_on_bad_directories_gives_one_line_each(capsys, tmp_path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    other = tmp_path / "other"
    (other / "sub").mkdir(parents=True)
    (other / "notes.txt").write_text("not a run")
    cases = [(tmp_path / "missing", "no such directory"), (empty, "no runs found"), (other, "no runs found"),
             (other / "notes.txt", "not a directory")]
    for path, expected in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(["report", str(path)])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expected in err and str(path) in err, err
        assert not (path / "report").exists() if path.is_dir() else True


def test_report_marks_runs_without_the_metric_and_a_bad_metric(capsys, tmp_path) -> None:
    main(["-m", "experiment=single", "validate_before_training=true", "+trainer.limit_val_batches=0,1.0",
          "trainer.max_steps=6", *quiet_trainer_overrides()])
    sweep = _sweep_dir(tmp_path)
    capsys.readouterr()
    main(["report", str(sweep), "--out", str(tmp_path / "r")])
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.startswith("warning:")]
    # limit_val_batches=0 validates nothing: that run is left out with the reason (on stderr), the other is reported.
    assert any("left out, no val/loss logged" in line and "train/loss" in line for line in lines), err
    assert "report: " in out
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(sweep), "--metric", "val/accuracy"])
    assert exit_info.value.code == 2
    assert "no run logged val/accuracy" in capsys.readouterr().err


@pytest.mark.slow
def test_report_marks_a_run_killed_half_way(tmp_path) -> None:
    # A real run, killed with SIGKILL once it has logged something: run.json stays "running".
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    args = [console_script(), "experiment=single", "loader=fixed_rate", "loader.seconds_per_batch=0.02",
            "trainer.max_steps=100000", "trainer.val_check_interval=5", "trainer.check_val_every_n_epoch=null",
            "trainer.log_every_n_steps=1", *quiet_trainer_overrides()]
    process = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=sys.platform != "win32")
    try:
        metrics = None
        for _ in range(600):
            found = list((tmp_path / "le_outputs" / "runs").glob("*/csv/metrics.csv"))
            if found and found[0].read_text().count("\n") > 30:
                metrics = found[0]
                break
            time.sleep(0.25)
        assert metrics is not None, "the run never logged"
    finally:
        os.killpg(process.pid, signal.SIGKILL) if hasattr(os, "killpg") else process.kill()
        process.wait(timeout=60)
    run_dir = metrics.parent.parent
    assert json.loads((run_dir / "run.json").read_text())["status"] == "running"
    report = run_cli(["report", str(run_dir), "--out", str(tmp_path / "r")], cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-2000:]
    assert "crashed at step" in report.stdout and "partial curve is included" in report.stdout
    assert "1 (1 crashed)" in report.stdout
    assert "class='crashed'" in (tmp_path / "r" / "index.html").read_text()


def test_a_relative_slowdown_on_the_fixed_rate_comparison_is_one_clear_line(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["loader.slowdown=4", *quiet_trainer_overrides()])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and "loader.slowdown=4" in err and "exactly one of slowdown or seconds_per_batch" in err
