"""Generated datasets: the embedded default classification problem and least squares.

Both are deterministic functions of their arguments (``generator_seed`` picks the problem
instance), so nothing is downloaded and every run sees the same data.
"""

from __future__ import annotations

from typing import Optional

import torch

from lightning_echo.data.modules.array import ArrayDataModule, ArraySplits
from lightning_echo.data.spec import DataSpec
from lightning_echo.errors import ConfigError
from lightning_echo.validation import (
    fraction,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)


def conditioned_features(n: int, d: int, condition_number: float, generator: torch.Generator) -> torch.Tensor:
    """``n`` Gaussian rows whose covariance has eigenvalues spread from 1 down to ``1/condition_number``.

    The eigenvalues are geometrically spaced and the eigenvectors randomly rotated, so the
    condition number of the population covariance is exactly ``condition_number``.
    """
    scales = torch.logspace(0.0, -0.5 * torch.log10(torch.tensor(condition_number)).item(), d)
    rotation, _ = torch.linalg.qr(torch.randn(d, d, generator=generator))
    return (torch.randn(n, d, generator=generator) * scales) @ rotation.T


def make_classification(
    n_examples: int,
    n_features: int,
    n_classes: int,
    noise: float,
    condition_number: float,
    generator_seed: int,
    margin: float = 4.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear-softmax classification data: ``y = argmax(x W + noise * Gumbel)``.

    ``noise=0`` makes the classes linearly separable; larger ``noise`` flips more labels
    (sampling from a softmax with temperature ``noise``). ``margin`` is the standard deviation
    of the clean logits.
    """
    generator = torch.Generator().manual_seed(generator_seed)
    x = conditioned_features(n_examples, n_features, condition_number, generator)
    weights = torch.randn(n_features, n_classes, generator=generator)
    logits = x @ weights
    logits = logits * (margin / logits.std().clamp_min(1e-12))
    uniform = torch.rand(n_examples, n_classes, generator=generator).clamp(1e-12, 1 - 1e-12)
    gumbel = -torch.log(-torch.log(uniform))
    y = (logits + noise * gumbel).argmax(dim=1)
    return x.float(), y.long()


def make_least_squares(
    n_examples: int, n_features: int, noise: float, condition_number: float, generator_seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares problem ``b = A x* + noise * e`` with Gaussian ``x*`` and ``e``.

    ``A`` has unit-scale rows (Hessian of the objective close to the identity for
    ``condition_number=1``) and ``x*`` has variance ``1/n_features``, so ``b`` is unit-order.
    """
    generator = torch.Generator().manual_seed(generator_seed)
    a = conditioned_features(n_examples, n_features, condition_number, generator)
    x_star = torch.randn(n_features, generator=generator) / n_features**0.5
    b = a @ x_star + noise * torch.randn(n_examples, generator=generator)
    return a.float(), b.float()


def least_squares_optimum(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Minimiser and minimum of ``F(x) = mean((a x - b)^2) / 2``, computed in float64."""
    a64, b64 = a.double(), b.double()
    solution = torch.linalg.lstsq(a64, b64.unsqueeze(1)).solution.squeeze(1)
    value = 0.5 * torch.mean((a64 @ solution - b64) ** 2).item()
    return solution.to(a.dtype), value


def split_train_val(
    x: torch.Tensor, y: torch.Tensor, val_fraction: float, generator_seed: int
) -> ArraySplits:
    """Deterministic random split; ``val_fraction=0`` keeps everything for training and validates on it."""
    permutation = torch.randperm(len(x), generator=torch.Generator().manual_seed(generator_seed + 1))
    n_val = int(round(val_fraction * len(x)))
    val_idx, train_idx = permutation[:n_val], permutation[n_val:]
    if n_val == 0:
        val_idx = train_idx
    return ArraySplits(x[train_idx], y[train_idx], x[val_idx], y[val_idx])


def _set_problem(
    module: ArrayDataModule,
    n_examples: int,
    n_features: int,
    noise: float,
    condition_number: float,
    val_fraction: float,
    generator_seed: int,
) -> None:
    """Check and store the settings both generated problems share."""
    module.n_examples = positive_int("n_examples", n_examples)
    module.n_features = positive_int("n_features", n_features)
    module.noise = non_negative_float("noise", noise)
    module.condition_number = positive_float("condition_number", condition_number)
    if condition_number < 1:
        raise ConfigError("condition_number", condition_number, "must be >= 1")
    module.val_fraction = fraction("val_fraction", val_fraction)
    module.generator_seed = non_negative_int("generator_seed", generator_seed)


class SyntheticDataModule(ArrayDataModule):
    """The embedded default dataset: a generated classification problem (nothing to download).

    Example::

        dm = SyntheticDataModule(n_examples=4096, n_features=32, n_classes=4, condition_number=100)
    """

    def __init__(
        self,
        n_examples: int = 4096,
        n_features: int = 32,
        n_classes: int = 4,
        noise: float = 0.5,
        condition_number: float = 10.0,
        val_fraction: float = 0.2,
        generator_seed: int = 0,
        batch_size: int = 64,
        val_batch_size: Optional[int] = None,
        num_workers: int = 0,
        seed: int = 0,
        max_train_examples: Optional[int] = None,
        max_val_examples: Optional[int] = None,
    ) -> None:
        super().__init__(batch_size, val_batch_size, num_workers, seed, max_train_examples, max_val_examples)
        self.n_classes = positive_int("n_classes", n_classes)
        if n_classes < 2:
            raise ConfigError("n_classes", n_classes, "must be at least 2")
        _set_problem(self, n_examples, n_features, noise, condition_number, val_fraction, generator_seed)

    @property
    def spec(self) -> DataSpec:
        return DataSpec("synthetic", (self.n_features,), self.n_classes)

    def _load(self) -> ArraySplits:
        x, y = make_classification(
            self.n_examples, self.n_features, self.n_classes, self.noise, self.condition_number, self.generator_seed
        )
        return split_train_val(x, y, self.val_fraction, self.generator_seed)


class LeastSquaresDataModule(ArrayDataModule):
    """Generated least-squares regression ``A x = b`` (Mishchenko et al.'s setting: n=10000, d=400)."""

    def __init__(
        self,
        n_examples: int = 10000,
        n_features: int = 400,
        noise: float = 0.1,
        condition_number: float = 1.0,
        val_fraction: float = 0.0,
        generator_seed: int = 0,
        batch_size: int = 256,
        val_batch_size: Optional[int] = None,
        num_workers: int = 0,
        seed: int = 0,
        max_train_examples: Optional[int] = None,
        max_val_examples: Optional[int] = None,
    ) -> None:
        super().__init__(batch_size, val_batch_size, num_workers, seed, max_train_examples, max_val_examples)
        _set_problem(self, n_examples, n_features, noise, condition_number, val_fraction, generator_seed)

    @property
    def spec(self) -> DataSpec:
        return DataSpec("least_squares", (self.n_features,), None)

    def _load(self) -> ArraySplits:
        a, b = make_least_squares(
            self.n_examples, self.n_features, self.noise, self.condition_number, self.generator_seed
        )
        return split_train_val(a, b, self.val_fraction, self.generator_seed)

    def optimum(self) -> float:
        """Minimum of the training objective ``mean((A x - b)^2) / 2``."""
        return least_squares_optimum(self.splits.x_train, self.splits.y_train)[1]
