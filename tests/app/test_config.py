"""Every config option composes (Hydra compose API) and builds valid objects."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from lightning_echo.app.builders import build_datamodule, build_loggers, build_model
from lightning_echo.app.config import GROUPS, compose_config, group_options
from lightning_echo.app.preflight import validate_config
from lightning_echo.errors import IncompatibleDataError

# Which model each dataset is checked with, and which pairings must be refused.
COMPATIBLE = {
    "synthetic": ["logreg", "mlp"],
    "least_squares": ["linear", "mlp"],
    "mnist": ["logreg", "mlp", "cnn"],
    "fashion_mnist": ["logreg", "mlp", "cnn"],
    "covtype": ["logreg", "mlp"],
    "cifar10": ["logreg", "mlp", "cnn"],
}


def test_every_group_has_options() -> None:
    for group in GROUPS:
        assert group_options(group), f"config group {group} has no options"


@pytest.mark.parametrize("group", [g for g in GROUPS if g != "experiment"])
def test_each_option_composes(group: str) -> None:
    for option in group_options(group):
        cfg = compose_config([f"{group}={option}"])
        # Every value must resolve (no dangling interpolations).
        OmegaConf.to_container(cfg, resolve=True)


@pytest.mark.parametrize("experiment", group_options("experiment"))
def test_each_experiment_composes(experiment: str) -> None:
    cfg = compose_config([f"experiment={experiment}"])
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict) and container["trainer"]["max_steps"] > 0


def test_dataset_options_match_compatibility_table() -> None:
    assert sorted(group_options("data")) == sorted(COMPATIBLE)
    assert sorted({m for ms in COMPATIBLE.values() for m in ms}) == group_options("model")


@pytest.mark.parametrize("data", sorted(COMPATIBLE))
def test_model_data_pairings(data: str) -> None:
    for model in group_options("model"):
        cfg = compose_config([f"data={data}", f"model={model}"])
        spec = build_datamodule(cfg).spec
        if model in COMPATIBLE[data]:
            assert build_model(cfg, spec) is not None
        else:
            with pytest.raises(IncompatibleDataError, match=f"does not fit data {data}"):
                build_model(cfg, spec)


def test_default_config_validates() -> None:
    cfg = compose_config([])
    assert cfg.algorithm.name == "sync"
    assert cfg.data._target_.endswith("SyntheticDataModule")
    assert cfg.data.seed == cfg.seed  # the top-level seed reaches the data shuffling
    validate_config(cfg)


def test_seed_reaches_data_shuffling() -> None:
    cfg = compose_config(["seed=7"])
    assert build_datamodule(cfg).seed == 7


def test_output_root_follows_environment(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LIGHTNING_ECHO_OUTPUT", str(tmp_path / "somewhere"))
    cfg = compose_config([])
    assert cfg.paths.output_root == str(tmp_path / "somewhere")


def test_logger_options_build(tmp_path) -> None:
    csv = build_loggers(compose_config(["logger=csv"]), tmp_path)
    assert [type(logger).__name__ for logger in csv] == ["CSVLogger"]
    assert build_loggers(compose_config(["logger=none"]), tmp_path) == []
    both = build_loggers(compose_config(["logger=csv_wandb"]), tmp_path)
    assert sorted(type(logger).__name__ for logger in both) == ["CSVLogger", "WandbLogger"]
