"""Inputs that used to slip through (issue 11, cases 7 and 8): each gets one line naming the
setting, the value and what is allowed, exit status 2, and nothing is written before it."""

from __future__ import annotations

import functools
import re

import pytest

from conftest import REPOSITORY, run_cli, single_run_overrides
from lightning_echo.app.config import GROUPS, compose_config, group_options
from lightning_echo.cli import main
from lightning_echo.data.formats.libsvm import read_libsvm
from lightning_echo.errors import DataFileError

README = REPOSITORY / "README.md"
# A directory no process can create anything in, root included (procfs takes no new entries).
UNWRITABLE = "/proc/lightning_echo_unwritable"


def _error_line(capsys: pytest.CaptureFixture, args: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("lightning-echo: error: ")
    return err


@pytest.mark.parametrize(
    "args, expected",
    [
        # 7: tracebacks before
        (["trainer.precision=weird"], ["precision=weird", "Allowed precision values", "'32-true'"]),
        (["trainer.accelerator=tpu"], ["accelerator=tpu", "torch_xla"]),
        (["seed=99999999999999999999"], ["seed=99999999999999999999 is not allowed: must be an integer from 0 to 4294967295"]),
        (["trainer.max_steps=" + "9" * 5000], ["trainer.max_steps='99999", "(5002 characters)", "at most 4300 digits"]),
        (["trainer.max_steps=" + "9" * 4000], ["trainer.max_steps=99999", "must fit in a 64-bit integer"]),
        # 8: accepted silently before
        (["+anykey=value"], ["+anykey='value' is not allowed: no such setting", "(the config has: algorithm, "]),
        (["+echo.facter=2"], ["+echo.facter=2 is not allowed: no such setting", "did you mean echo.factor?"]),
        (["echo.facter=2"], ["echo.facter=2 is not allowed: no such setting; did you mean echo.factor?"]),
        (["trainer.lr=0.5"], ["did you mean optimizer.lr?", "to pass another argument to pytorch_lightning.Trainer"]),
        (["validate_before_training=maybe"], ["validate_before_training='maybe' is not allowed: must be true or false"]),
        (["divergence_growth=1"], ["divergence_growth=1 is not allowed: must be a finite number > 1"]),
        # accepted by Lightning, then divided by during training (a traceback inside the run directory)
        (["loader=throttle", "loader.seconds_per_batch=0.01"],
         ["loader.slowdown=4.0 is not allowed: is set next to seconds_per_batch=0.01", "e.g. loader.slowdown=null"]),
        (["trainer.val_check_interval=0"], ["trainer.val_check_interval=0 is not allowed: must be a number of steps >= 1"]),
        (["trainer.check_val_every_n_epoch=0"], ["trainer.check_val_every_n_epoch=0 is not allowed: must be a positive integer"]),
        (["+trainer.accumulate_grad_batches=0"], ["trainer.accumulate_grad_batches=0 is not allowed: must be a positive integer"]),
        (["report.target_gap=-1"], ["report.target_gap=-1 is not allowed: must be a finite number >= 0"]),
        (["algorithm=sync", "echo.factor=abc"], ["echo.factor='abc' is not allowed: must be a number >= 1 or 'auto'"]),
        # the straggler algorithms' and the processes backend's settings, checked under any algorithm
        (["algorithm=sync", "stale.k=0"], ["stale.k=0 is not allowed: must be a positive integer"]),
        (["algorithm=echo", "stale.delay.distribution=gamma"], ["stale.delay.distribution='gamma' is not allowed"]),
        (["algorithm=sync", "stale.learners=2", "stale.delay.speeds=[1,2,3]"], ["stale.delay.speeds=[1.0, 2.0, 3.0] is not allowed", "2 entries"]),
        (["algorithm=sync", "ps.timeout=0"], ["ps.timeout=0 is not allowed"]),
        (["algorithm=sync", "ps.timeout=1e300"], ["ps.timeout=1e+300 is not allowed: must be at most 604800 s (a week)"]),
        # no bound on what one number starts: beyond the machine, refused before anything starts
        (["algorithm=k_async", "backend=processes", "stale.learners=100000"],
         ["stale.learners=100000 is not allowed: would start 100001 processes on this machine", "LIGHTNING_ECHO_MAX_PROCESSES"]),
        (["trainer.accelerator=cpu", "trainer.devices=5000"], ["trainer.devices=5000 is not allowed: would start 5000 processes"]),
        (["algorithm=sync", "stale.momentum_correction=sometimes"], ["stale.momentum_correction='sometimes' is not allowed"]),
        (["algorithm=sync", "ps.inject_delays=maybe"], ["ps.inject_delays='maybe' is not allowed: must be true or false"]),
        # a renamed option: the old spelling points to the new one
        (["algorithm=k_async", "trainer=parameter_server"], ["trainer='parameter_server' is not allowed: it is now backend=processes; choose one of"]),
        (["algorithm=sync", "backend=processes"], ["backend='processes' is not allowed: runs a straggler algorithm's learners"]),
        (["+optimizer.betas=[0.9,0.99]"], ["optimizer='torch.optim.SGD' is not allowed", "unexpected keyword argument 'betas'"]),
        # values that need quoting
        (["+ckpt_path=/runs/epoch=0-step=10.ckpt"], ["cannot parse it", "\"+ckpt_path='/runs/epoch=0-step=10.ckpt'\""]),
        (["data.root=/data/a,b"], ["a sweep needs multirun: add -m", "quote it: \"data.root='/data/a,b'\""]),
    ],
)
def test_refused_in_one_line_before_anything_is_written(capsys, tmp_path, args, expected) -> None:
    err = _error_line(capsys, single_run_overrides() + args)
    for text in expected:
        assert text in err
    assert "To append to your config use" not in err, "Hydra's hint leads to a key nobody reads"
    assert not (tmp_path / "le_outputs").exists(), "nothing may be written before the input is checked"


def test_the_default_comparison_refuses_unused_echo_settings_of_its_sync_jobs(capsys, tmp_path) -> None:
    err = _error_line(capsys, ["-m", "algorithm=sync", "echo.kind=bag"])
    assert "echo.kind='bag' is not allowed: must be one of batch, example" in err


@pytest.mark.parametrize("as_key", ["paths.output_root", "hydra.run.dir"])
def test_output_directory_that_is_a_file(capsys, tmp_path, as_key) -> None:
    target = tmp_path / "not_a_dir"
    target.write_text("keep me\n")
    err = _error_line(capsys, [f"{as_key}={target}", *single_run_overrides()])
    assert f"{as_key}='{target}' is not allowed" in err and f"{target} is a file" in err
    assert target.read_text() == "keep me\n"


def test_output_directory_that_cannot_be_written(capsys, tmp_path) -> None:
    err = _error_line(capsys, ["-m", f"paths.output_root={UNWRITABLE}", "seed=0,1", *single_run_overrides()])
    assert f"paths.output_root='{UNWRITABLE}' is not allowed: cannot write into /proc" in err


def test_download_into_a_read_only_data_directory(capsys, tmp_path) -> None:
    err = _error_line(capsys, ["data=covtype", "data.download=true", f"data.root={UNWRITABLE}", *single_run_overrides()])
    assert f"data.root='{UNWRITABLE}' is not allowed: cannot write into /proc" in err
    assert not (tmp_path / "le_outputs").exists()


def test_report_out_that_is_a_file_or_cannot_be_written(capsys, tmp_path) -> None:
    existing = tmp_path / "report.html"
    existing.write_text("old\n")
    err = _error_line(capsys, ["report", str(tmp_path), "--out", str(existing)])
    assert f"--out='{existing}' is not allowed: {existing} is a file" in err
    assert existing.read_text() == "old\n"
    err = _error_line(capsys, ["report", str(tmp_path), "--out", f"{UNWRITABLE}/report"])
    assert f"--out='{UNWRITABLE}/report' is not allowed: cannot write into /proc" in err


@pytest.mark.parametrize(
    "line, expected",
    [
        ("1 1:0.5 3:nan", "line 2: feature value nan is not a finite float32 number"),
        ("2 2:inf", "line 2: feature value inf is not a finite float32 number"),
        ("1 1:-1e300", "line 2: feature value -1e+300 is not a finite float32 number"),
        ("nan 1:0.5", "line 2: label nan is not a finite number"),
    ],
)
def test_libsvm_non_finite_values_are_refused(tmp_path, line, expected) -> None:
    path = tmp_path / "data.libsvm"
    path.write_text(f"1 1:0.25 2:-0.5\n{line}\n")
    with pytest.raises(DataFileError, match=re.escape(expected)):
        read_libsvm(path, num_features=3)


def test_covtype_file_with_nan_stops_the_run_in_one_line(capsys, tmp_path) -> None:
    folder = tmp_path / "data" / "covtype"
    folder.mkdir(parents=True)
    rows = [f"{1 + i % 2} 1:{i / 10:.1f} 54:0.5" for i in range(20)]
    rows[7] = "2 1:nan 54:0.5"
    (folder / "covtype.libsvm.binary.scale").write_text("\n".join(rows) + "\n")
    err = _error_line(capsys, ["data=covtype", f"data.root={tmp_path / 'data'}", "trainer.max_steps=2", *single_run_overrides()])
    assert "covtype.libsvm.binary.scale: line 8: feature value nan is not a finite float32 number" in err


# -- the README documents only keys the config has ------------------------------------------------

FILE_SUFFIXES = {"py", "csv", "json", "yaml", "md", "txt", "png", "html"}


def _readme_dotted_keys(text: str, top_level: set[str]) -> set[str]:
    """Every ``a.b[.c]`` in the README whose first part is a top-level config key (not one added
    with ``+``), outside the section on the Python API (where ``trainer.`` is a Lightning Trainer)
    and the examples of refused input."""
    api = text.index("## Use it in your own Lightning project")
    text = text[:api] + text[text.index("\n## ", api + 1):]
    text = re.sub(r"```[^`]*lightning-echo: error:[^`]*```", "", text)
    keys = set()
    for match in re.finditer(r"(?<![\w/.$+-])([a-z_]+(?:\.[a-z_]+)+)(?![\w/(-])", text):
        key = match.group(1)
        if key.rsplit(".", 1)[-1] in FILE_SUFFIXES:  # a file name (advisor's record.py), not a setting
            continue
        if key.split(".")[0] in top_level:
            keys.add(key)
    return keys


@functools.cache
def _option_config(group: str, option: str):
    return compose_config(["experiment=single", f"{group}={option}"])


def _some_option_has(group: str, key: str) -> bool:
    return any(_has(_option_config(group, option), key) for option in group_options(group))


def _has(cfg, dotted: str) -> bool:
    node = cfg
    for part in dotted.split("."):
        if not hasattr(node, "keys") or part not in node:
            return False
        node = node[part]
    return True


def test_every_key_the_readme_mentions_exists_in_the_config() -> None:
    text = README.read_text()
    cfg = compose_config(["experiment=single"])
    keys = _readme_dotted_keys(text, set(cfg.keys()))
    assert {"echo.factor", "stale.learners", "trainer.max_time", "optimizer.betas"} <= keys, "the README check finds no keys"
    missing = [key for key in sorted(keys)
               if not (_has(cfg, key) if key.split(".")[0] not in GROUPS else _some_option_has(key.split(".")[0], key))]
    assert not missing, f"the README documents keys no config has: {missing}"


def test_every_dataset_key_the_readme_lists_exists_for_that_dataset() -> None:
    text = README.read_text()
    table = text[text.index("| dataset | source | keys |"):]
    table = table[: table.index("\n\n")]
    common = re.search(r"All datasets take (.*?)\.\n", text).group(1)
    common_keys = re.findall(r"`(\w+)`", common)
    assert "max_train_examples" in common_keys
    for row in table.splitlines()[2:]:
        names, _, keys = [cell.strip() for cell in row.strip("|").split("|")]
        for dataset in re.findall(r"`(\w+)`", names):
            data = compose_config(["experiment=single", f"data={dataset}"]).data
            for key in re.findall(r"`(\w+)`", keys) + common_keys:
                assert key in data, f"README: data={dataset} takes {key}, but conf/data/{dataset}.yaml has no {key}"


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, expected",
    [
        (["experiment=single", "seed=99999999999999999999"], "seed=99999999999999999999 is not allowed"),
        (["+echo.facter=2"], "+echo.facter=2 is not allowed: no such setting"),
    ],
)
def test_console_script_refuses_in_one_line_without_a_run_directory(tmp_path, args, expected) -> None:
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("lightning-echo: error: ") and expected in line
    assert not (tmp_path / "le_outputs").exists(), "the run directory was created before the check"
