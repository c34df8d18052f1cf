"""The generated datasets: deterministic, shaped and conditioned as asked."""

from __future__ import annotations

import pytest
import torch

from lightning_echo.data import LeastSquaresDataModule, SyntheticDataModule
from lightning_echo.data.modules.synthetic import least_squares_optimum, make_classification
from lightning_echo.errors import ConfigError


def test_synthetic_is_deterministic_and_split() -> None:
    a = SyntheticDataModule(n_examples=500, n_features=8, n_classes=3, val_fraction=0.2).splits
    b = SyntheticDataModule(n_examples=500, n_features=8, n_classes=3, val_fraction=0.2).splits
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_val, b.y_val)
    assert a.x_train.shape == (400, 8) and a.x_val.shape == (100, 8)
    assert set(a.y_train.tolist()) == {0, 1, 2}
    other = SyntheticDataModule(n_examples=500, n_features=8, n_classes=3, generator_seed=1).splits
    assert not torch.equal(a.x_train, other.x_train)


def test_condition_number_controls_covariance() -> None:
    x = SyntheticDataModule(n_examples=20000, n_features=10, condition_number=100.0, val_fraction=0.0).splits.x_train
    eigenvalues = torch.linalg.eigvalsh(torch.cov(x.T.double()))
    ratio = (eigenvalues.max() / eigenvalues.min()).item()
    assert 70 < ratio < 140  # population value 100, sampled with 20000 rows


def test_noise_flips_labels() -> None:
    _, clean = make_classification(2000, 6, 3, noise=0.0, condition_number=1.0, generator_seed=3)
    _, noisy = make_classification(2000, 6, 3, noise=2.0, condition_number=1.0, generator_seed=3)
    disagreement = (clean != noisy).float().mean().item()
    assert 0.1 < disagreement < 0.7


def test_least_squares_optimum_is_a_minimum() -> None:
    dm = LeastSquaresDataModule(n_examples=300, n_features=20, noise=0.5)
    a, b = dm.splits.x_train, dm.splits.y_train
    solution, value = least_squares_optimum(a, b)
    assert value == pytest.approx(dm.optimum())
    perturbed = solution + 0.01 * torch.randn_like(solution)
    assert 0.5 * torch.mean((a @ perturbed - b) ** 2).item() > value
    assert dm.spec.task == "regression"


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"n_examples": 0}, "n_examples"),
        ({"n_classes": 1}, "n_classes"),
        ({"noise": -1.0}, "noise"),
        ({"condition_number": 0.5}, "condition_number"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"batch_size": -4}, "batch_size"),
    ],
)
def test_bad_arguments_name_the_setting(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=f"^{key}="):
        SyntheticDataModule(**kwargs)
