"""The lightning-echo command: runs, sweeps, bad input, wandb offline runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import main_error, run_cli, single_run_overrides
from lightning_echo.report.wandb_offline import find_offline_runs, read_offline_run
from lightning_echo.cli import main


@pytest.mark.parametrize(
    "args, expected",
    [
        (["model=foo"], "model='foo' is not allowed: choose one of cnn, linear, logreg, mlp"),
        (["data=imagenet"], "data='imagenet' is not allowed: choose one of"),
        (["-m", "model=logreg,foo"], "model='foo' is not allowed"),
        (["data.batch_size=0"], "data.batch_size=0 is not allowed: must be a positive integer"),
        (["data.batch_size=-5"], "data.batch_size=-5 is not allowed"),
        (["optimizer.lr=0"], "optimizer.lr=0 is not allowed: must be a finite number > 0"),
        (["optimizer.lr=-0.1"], "optimizer.lr=-0.1 is not allowed"),
        (["trainer.max_steps=0"], "trainer.max_steps=0 is not allowed"),
        (["trainer.max_steps=-7"], "trainer.max_steps=-7 is not allowed"),
        (["trainer.max_epochs=0"], "trainer.max_epochs=0 is not allowed"),
        (["seed=-1"], "seed=-1 is not allowed"),
        (["model=cnn"], "model CNN does not fit data synthetic: the CNN needs image inputs"),
        (["data=least_squares"], "model LogisticRegression does not fit data least_squares"),
        (["model=logreg,mlp"], "a sweep needs multirun: add -m"),
        (["modle=mlp"], "modle='mlp' is not allowed: no such setting; did you mean model?"),
        (["data=mnist"], "mnist: missing train-images-idx3-ubyte(.gz)"),
        (["algorithm=echo", "echo.factor=0.5"], "echo.factor=0.5 is not allowed: must be a number >= 1 or 'auto'"),
        (["algorithm=echo", "echo.kind=bag"], "echo.kind='bag' is not allowed: must be one of batch, example"),
        (["algorithm=echo", "echo.factor=auto", "echo.max_factor=0"], "echo.max_factor=0 is not allowed"),
        (["loader=throttle", "loader.slowdown=-1"], "loader.slowdown=-1 is not allowed: must be a finite number > 0"),
        (["loader=throttle", "loader.jitter=gamma"], "loader.jitter='gamma' is not allowed"),
    ],
)
def test_bad_input_is_one_clear_line(capsys, tmp_path, args, expected) -> None:
    err = main_error(capsys, args + single_run_overrides())
    assert err.startswith("lightning-echo: error: ")
    assert expected in err
    assert not (tmp_path / "le_outputs").exists(), "nothing may be written before the input is checked"


def test_missing_dataset_names_where_it_looked(capsys, tmp_path) -> None:
    err = main_error(capsys, ["data=covtype", f"data.root={tmp_path}"])
    assert "covtype.libsvm.binary.scale" in err and str(tmp_path / "covtype") in err
    assert "data.download=true" in err
    assert list(tmp_path.iterdir()) == [] or all(p.name == "le_outputs" for p in tmp_path.iterdir())


def test_default_job_in_process_lowers_loss(capsys, tmp_path) -> None:
    main(["trainer.max_steps=60", *single_run_overrides()])
    out = capsys.readouterr().out
    run_dirs = list((tmp_path / "le_outputs" / "runs").iterdir())
    assert len(run_dirs) == 1
    assert f"outputs: {run_dirs[0]}" in out
    summary = json.loads((run_dirs[0] / "summary.json").read_text())
    assert summary["optimizer_steps"] == 60
    assert summary["final_val_loss"] < summary["initial_val_loss"]
    metrics = (run_dirs[0] / "csv" / "metrics.csv").read_text().splitlines()
    header = metrics[0].split(",")
    for column in ("train/loss", "val/loss", "progress/fresh_samples", "progress/optimizer_steps", "time/elapsed_s"):
        assert column in header


@pytest.mark.slow
def test_console_script_default_run_from_unrelated_directory(tmp_path) -> None:
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    result = run_cli(["trainer.max_steps=40", *single_run_overrides()], cwd=workdir)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "val/loss" in result.stdout and "outputs: " in result.stdout
    assert list(workdir.iterdir()) == [], "the run wrote into the current directory"


@pytest.mark.slow
def test_console_script_bad_input_exits_2_with_one_line(tmp_path) -> None:
    result = run_cli(["data.batch_size=0"], cwd=tmp_path)  # the default comparison is checked too
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "lightning-echo: error: data.batch_size=0 is not allowed: must be a positive integer"
    ]


@pytest.mark.slow
def test_multirun_of_two_jobs_through_console_script(tmp_path) -> None:
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    result = run_cli(
        ["-m", "model=logreg,mlp", "trainer.max_steps=15", "validate_before_training=false", *single_run_overrides()],
        cwd=workdir,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sweeps = list((tmp_path / "le_outputs" / "multirun").iterdir())
    assert len(sweeps) == 1
    job_dirs = sorted(p for p in sweeps[0].iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in job_dirs] == ["0", "1"]
    models = {json.loads((d / "summary.json").read_text())["model"] for d in job_dirs}
    assert models == {"LogisticRegression", "MLP"}
    for d in job_dirs:
        assert (d / "csv" / "metrics.csv").is_file() and (d / ".hydra" / "config.yaml").is_file()
    assert list(workdir.iterdir()) == []


@pytest.mark.slow
def test_wandb_offline_run_is_written_and_finished(tmp_path) -> None:
    result = run_cli(
        ["logger=wandb", "trainer.max_steps=10", "logger.wandb.group=g1", *single_run_overrides()],
        cwd=tmp_path,
        env_extra={"WANDB_API_KEY": "", "NETRC": str(tmp_path / "no_netrc"), "WANDB_MODE": ""},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = find_offline_runs(tmp_path / "le_outputs")
    assert len(runs) == 1, "offline mode must be chosen automatically without credentials"
    run = read_offline_run(runs[0])
    assert run.exit_code == 0
    assert run.group == "g1"
    assert run.config["algorithm"] == "sync" and run.config["seed"] == 0
    assert any("train/loss" in row for row in run.history)


@pytest.mark.slow
def test_wandb_run_is_finished_with_failure_code_when_the_job_fails(tmp_path) -> None:
    # A download the run starts (preflight reads only files that are there) fails: nothing listens
    # on this local port, so no network is used.
    (tmp_path / "data").mkdir()
    result = run_cli(
        ["logger=wandb", "data=mnist", f"data.root={tmp_path / 'data'}", "data.download=true",
         "+data.url=http://127.0.0.1:9/", *single_run_overrides()],
        cwd=tmp_path,
        env_extra={"WANDB_API_KEY": "", "NETRC": str(tmp_path / "no_netrc"), "WANDB_MODE": ""},
    )
    assert result.returncode == 2
    assert "lightning-echo: error:" in result.stderr and "train-images-idx3-ubyte" in result.stderr
    runs = find_offline_runs(tmp_path / "le_outputs")
    assert len(runs) == 1
    assert read_offline_run(runs[0]).exit_code == 1


def _snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns) for p in directory.rglob("*")}


def test_training_writes_nothing_into_the_data_directory(capsys, tmp_path) -> None:
    import torch

    from lightning_echo.data.formats.idx import write_idx

    mnist = tmp_path / "data" / "mnist"
    mnist.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    for prefix, n in (("train", 64), ("t10k", 32)):
        write_idx(mnist / f"{prefix}-images-idx3-ubyte.gz", torch.randint(0, 256, (n, 28, 28), generator=generator, dtype=torch.uint8))
        write_idx(mnist / f"{prefix}-labels-idx1-ubyte", torch.randint(0, 10, (n,), generator=generator, dtype=torch.uint8))
    before = _snapshot(tmp_path / "data")
    main(["data=mnist", f"data.root={tmp_path / 'data'}", "data.verify_checksums=false", "model=cnn",
          "trainer.max_steps=3", *single_run_overrides()])
    assert "outputs: " in capsys.readouterr().out
    assert _snapshot(tmp_path / "data") == before


def test_echo_job_with_throttled_loader(capsys, tmp_path) -> None:
    main(["algorithm=echo", "echo.factor=4", "loader=throttle", "loader.slowdown=4", "trainer.max_steps=40",
          *single_run_overrides()])
    run_dir = next((tmp_path / "le_outputs" / "runs").iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["algorithm"] == "echo" and summary["optimizer_steps"] == 40
    assert summary["fresh_samples"] == 10 * 64  # 40 steps, each fresh batch of 64 served 4 times
    header = (run_dir / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "echo/effective_factor" in header and "echo/data_wait_s" in header
    import yaml

    hparams = yaml.safe_load((run_dir / "csv" / "hparams.yaml").read_text())
    assert hparams["echo_factor"] == 4 and hparams["slowdown"] == 4 and hparams["loader"] == "throttle"
