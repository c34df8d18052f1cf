"""Echoed optimizers: closed-form checks on quadratics, reductions, state, and real Trainer runs."""

from __future__ import annotations

import copy
import math

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_echo.core.echoed_updates import (
    next_nesterov_lambda,
    nesterov_momentum,
    theory_gd_step_size,
    theory_prox_parameters,
)
from lightning_echo.echo import DataEchoing
from lightning_echo.echoed_optim import EchoedNesterov, EchoedProx, EchoedSGD
from lightning_echo.errors import ConfigError

# Quadratic f(w) = 1/2 w^T A w - b^T w, gradient A w - b.
A = torch.tensor([[3.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
B = torch.tensor([1.0, -2.0], dtype=torch.float64)


def quadratic_grad(w: torch.Tensor) -> torch.Tensor:
    return A @ w - B


def run_steps(optimizer: torch.optim.Optimizer, param: torch.nn.Parameter, steps: int, group_size: int) -> list[torch.Tensor]:
    """Take ``steps`` steps on the quadratic, starting a fresh batch every ``group_size`` steps."""
    seen = []
    for step in range(steps):
        if step % group_size == 0 and hasattr(optimizer, "start_fresh_batch"):
            optimizer.start_fresh_batch()
        seen.append(param.detach().clone())
        param.grad = quadratic_grad(param.detach())
        optimizer.step()
    return seen


def test_k_echoed_gd_steps_equal_the_analytic_iterates() -> None:
    param = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    eta, k = 0.2, 5
    run_steps(EchoedSGD([param], lr=eta), param, k, k)
    # w_K = (I - eta A)^K w_0 + sum_{j<K} (I - eta A)^j eta b, with w_0 = 0.
    m = torch.eye(2, dtype=torch.float64) - eta * A
    expected = sum(torch.linalg.matrix_power(m, j) @ (eta * B) for j in range(k))
    torch.testing.assert_close(param.detach(), expected)


def test_prox_pivot_is_the_mean_of_the_inner_iterates() -> None:
    param = torch.nn.Parameter(torch.tensor([1.0, 1.0], dtype=torch.float64))
    prox = EchoedProx(torch.optim.SGD([param], lr=0.1), gamma=0.5)
    iterates = run_steps(prox, param, 4, 4)  # one group of 4 steps
    prox.start_fresh_batch()
    torch.testing.assert_close(prox.pivots[0][0], torch.stack(iterates).mean(dim=0))


def test_prox_adds_gamma_times_distance_to_the_pivot() -> None:
    param = torch.nn.Parameter(torch.tensor([2.0, 0.0], dtype=torch.float64))
    prox = EchoedProx(torch.optim.SGD([param], lr=0.1), gamma=0.5)
    run_steps(prox, param, 1, 1)
    first = torch.tensor([2.0, 0.0], dtype=torch.float64)
    # The pivot starts at the initial point, so the first step has no proximal pull.
    torch.testing.assert_close(param.detach(), first - 0.1 * quadratic_grad(first))
    second = param.detach().clone()
    param.grad = quadratic_grad(second)
    prox.step()
    expected = second - 0.1 * (quadratic_grad(second) + 0.5 * (second - first))
    torch.testing.assert_close(param.detach(), expected)


def test_prox_with_varying_group_sizes() -> None:
    param = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    prox = EchoedProx(torch.optim.SGD([param], lr=0.1), gamma=0.3)
    for size in (1, 3, 2):
        prox.start_fresh_batch()
        iterates = []
        for _ in range(size):
            iterates.append(param.detach().clone())
            param.grad = quadratic_grad(param.detach())
            prox.step()
        expected_pivot = torch.stack(iterates).mean(dim=0)
    prox.start_fresh_batch()
    torch.testing.assert_close(prox.pivots[0][0], expected_pivot)


def test_nesterov_matches_the_recursion_over_several_groups() -> None:
    param = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    eta = 0.2
    run_steps(EchoedNesterov([param], lr=eta), param, 12, 4)
    # Reference recursion written out directly.
    w, d, lam = torch.zeros(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64), 1.0
    lambdas = []
    for _ in range(12):
        lam_next = (1 + math.sqrt(1 + 4 * lam * lam)) / 2
        assert lam_next**2 - lam_next == pytest.approx(lam**2)
        gamma = (lam - 1) / lam_next
        new_w = (w + d) - eta * quadratic_grad(w + d)
        d = gamma * (new_w - w)
        w, lam = new_w, lam_next
        lambdas.append(lam)
    torch.testing.assert_close(param.detach(), w + d)  # the parameters hold the look-ahead point


def test_nesterov_iterate_and_lambda_are_exposed() -> None:
    param = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    optimizer = EchoedNesterov([param], lr=0.1)
    run_steps(optimizer, param, 3, 3)
    lam = 1.0
    for _ in range(3):
        lam = next_nesterov_lambda(lam)
    assert optimizer.param_groups[0]["lambda"] == pytest.approx(lam)
    w = optimizer.iterates()[0]
    d = optimizer.state[param]["momentum"]
    torch.testing.assert_close(param.detach(), w + d)
    assert nesterov_momentum(1.0, next_nesterov_lambda(1.0)) == 0.0


def test_k1_gamma0_reduce_to_plain_counterparts() -> None:
    start = torch.tensor([0.3, -0.7], dtype=torch.float64)
    reference = torch.nn.Parameter(start.clone())
    run_steps(torch.optim.SGD([reference], lr=0.1), reference, 10, 1)
    for make in (
        lambda p: EchoedSGD([p], lr=0.1),
        lambda p: EchoedSGD([p], lr=0.1, rule="inverse_k", echo_factor=1),
        lambda p: EchoedProx(torch.optim.SGD([p], lr=0.1), gamma=0.0),
    ):
        param = torch.nn.Parameter(start.clone())
        run_steps(make(param), param, 10, 1)
        assert torch.equal(param.detach(), reference.detach())


def test_state_round_trips_in_the_middle_of_a_group() -> None:
    for make in (
        lambda p: EchoedSGD([p], lr=0.1, rule="inverse_k", echo_factor=4),
        lambda p: EchoedProx(torch.optim.SGD([p], lr=0.1, momentum=0.9), gamma=0.2),
        lambda p: EchoedNesterov([p], lr=0.1),
    ):
        param = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
        optimizer = make(param)
        run_steps(optimizer, param, 6, 4)  # stops inside the second group
        saved_param, saved_state = param.detach().clone(), copy.deepcopy(optimizer.state_dict())
        run_steps(optimizer, param, 2, 4)
        expected = param.detach().clone()
        restored_param = torch.nn.Parameter(saved_param.clone())
        restored = make(restored_param)
        restored.load_state_dict(saved_state)
        run_steps(restored, restored_param, 2, 4)
        torch.testing.assert_close(restored_param.detach(), expected)


def test_per_parameter_group_settings() -> None:
    a = torch.nn.Parameter(torch.ones(1, dtype=torch.float64))
    b = torch.nn.Parameter(torch.ones(1, dtype=torch.float64))
    optimizer = EchoedSGD([{"params": [a], "lr": 0.1}, {"params": [b], "lr": 0.4, "rule": "inverse_k", "echo_factor": 4}])
    assert [g["lr"] for g in optimizer.param_groups] == [0.1, 0.1]  # the step size each rule gives
    prox = EchoedProx(torch.optim.SGD([{"params": [a], "gamma": 0.0}, {"params": [b], "gamma": 1.0}], lr=0.1))
    assert [g["gamma"] for g in prox.param_groups] == [0.0, 1.0]


def test_theory_step_sizes() -> None:
    assert theory_gd_step_size(beta=2.0, rho=1.0, distance=1.0, echo_factor=4, batch_size=100, fresh_batches=100) == pytest.approx(0.25)
    assert theory_gd_step_size(beta=0.5, rho=1.0, distance=1.0, echo_factor=1, batch_size=100, fresh_batches=100) == pytest.approx(1.0)
    gamma, eta = theory_prox_parameters(beta=1.0, rho=2.0, distance=1.0, batch_size=16, fresh_batches=64)
    assert gamma == pytest.approx(4.0) and eta == pytest.approx(0.2)
    sgd = EchoedSGD([torch.nn.Parameter(torch.zeros(1))], rule="theory", echo_factor=4, beta=2.0, rho=1.0, distance=1.0, batch_size=100, fresh_batches=100)
    assert sgd.param_groups[0]["lr"] == pytest.approx(0.25)


@pytest.mark.parametrize(
    "make, key",
    [
        (lambda p: EchoedProx(torch.optim.SGD([p], lr=0.1), gamma=-1.0), "gamma"),
        (lambda p: EchoedSGD([p], lr=1.0, rule="theory", echo_factor=1, beta=2.0, rho=1.0, distance=1.0, batch_size=1, fresh_batches=1), "lr"),
        (lambda p: EchoedSGD([p], lr=0.1, rule="cosine"), "rule"),
        (lambda p: EchoedSGD([p], rule="theory", echo_factor=2), "beta"),
        (lambda p: EchoedSGD([p], lr=-0.1), "lr"),
        (lambda p: EchoedNesterov([p], lr=0.0), "lr"),
    ],
)
def test_invalid_parameters_are_refused(make, key) -> None:
    with pytest.raises(ConfigError, match=f"^{key}="):
        make(torch.nn.Parameter(torch.zeros(1)))


def _fresh_batches_to_target(make_optimizer, factor: int, target: float, max_batches: int = 400) -> int:
    """Real Trainer run on a strongly convex least-squares problem; fresh batches until the target."""
    torch.manual_seed(0)
    x = torch.randn(4096, 8) * torch.linspace(1.0, 0.2, 8)
    y = x @ torch.linspace(-1, 1, 8)
    optimum = 0.0

    class LeastSquares(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(8))
            self.fresh = 0
            self.reached: float = math.inf

        def training_step(self, batch, batch_idx):
            xb, yb = batch
            return 0.5 * ((xb @ self.w - yb) ** 2).mean()

        def on_train_batch_end(self, outputs, batch, batch_idx):
            with torch.no_grad():
                loss = 0.5 * ((x @ self.w - y) ** 2).mean().item()
            if loss - optimum <= target and self.reached == math.inf:
                self.reached = echo.fresh_batches
                self.trainer.should_stop = True

        def configure_optimizers(self):
            return make_optimizer(self.parameters())

    model = LeastSquares()
    echo = DataEchoing(factor=factor)
    trainer = pl.Trainer(accelerator="cpu", max_steps=max_batches * factor, callbacks=[echo], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    loader = DataLoader(TensorDataset(x, y), batch_size=1024, shuffle=True, generator=torch.Generator().manual_seed(0))
    trainer.fit(model, loader)
    return model.reached


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda params: EchoedSGD(params, lr=0.5),
        lambda params: EchoedProx(torch.optim.SGD(params, lr=0.5), gamma=0.01),
        lambda params: EchoedNesterov(params, lr=0.3),
    ],
    ids=["sgd", "prox", "nesterov"],
)
def test_echoing_needs_fewer_fresh_batches_at_large_batch_size(make_optimizer) -> None:
    once = _fresh_batches_to_target(make_optimizer, 1, target=1e-4)
    four = _fresh_batches_to_target(make_optimizer, 4, target=1e-4)
    assert four < once < math.inf


def test_smoothness_estimate_matches_the_top_eigenvalue() -> None:
    from lightning_echo import estimate_smoothness

    param = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    beta = estimate_smoothness(lambda: 0.5 * param @ A @ param - B @ param, [param], iterations=100, tolerance=1e-10)
    assert beta == pytest.approx(torch.linalg.eigvalsh(A).max().item(), rel=1e-6)
    # Logistic regression: bounded by the largest eigenvalue of X^T X / (4 n) for two classes.
    torch.manual_seed(0)
    x = torch.randn(256, 5, dtype=torch.float64)
    y = (x[:, 0] > 0).double()
    w = torch.nn.Parameter(torch.zeros(5, dtype=torch.float64))
    loss = lambda: torch.nn.functional.binary_cross_entropy_with_logits(x @ w, y)  # noqa: E731
    bound = torch.linalg.eigvalsh(x.T @ x / (4 * len(x))).max().item()
    assert estimate_smoothness(loss, [w], iterations=200, tolerance=1e-10) == pytest.approx(bound, rel=1e-3)


def test_iterate_averaging_keeps_the_mean_of_group_starts_and_swaps_for_validation() -> None:
    from lightning_echo import EchoIterateAveraging

    starts: list[torch.Tensor] = []
    validated_with: list[torch.Tensor] = []

    class Linear(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(3))

        def on_train_batch_start(self, batch, batch_idx):
            if echo._current is not None and echo._current.repeat == 0:
                starts.append(self.w.detach().clone())

        def training_step(self, batch, batch_idx):
            (xb,) = batch
            return ((xb @ self.w - 1.0) ** 2).mean()

        def validation_step(self, batch, batch_idx):
            validated_with.append(self.w.detach().clone())

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    echo = DataEchoing(factor=3)
    averaging = EchoIterateAveraging()
    data = DataLoader(TensorDataset(torch.randn(40, 3, generator=torch.Generator().manual_seed(1))), batch_size=8)
    model = Linear()
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, callbacks=[echo, averaging], logger=False, num_sanity_val_steps=0,
                         limit_val_batches=1, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, data, val_dataloaders=DataLoader(TensorDataset(torch.zeros(4, 3)), batch_size=4))
    assert averaging.count == 5 == len(starts)
    expected = torch.stack(starts).mean(dim=0)
    torch.testing.assert_close(validated_with[-1], expected)  # validation saw the average
    assert not torch.equal(model.w.detach(), expected)  # training weights were put back


def test_nesterov_validation_sees_the_iterate_and_training_resumes_at_the_lookahead() -> None:
    from lightning_echo.echo import EvaluateAtIterates

    seen: dict[str, torch.Tensor] = {}

    class Quadratic(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))

        def training_step(self, batch, batch_idx):
            return 0.5 * self.w @ A @ self.w - B @ self.w

        def validation_step(self, batch, batch_idx):
            seen["validated"] = self.w.detach().clone()
            seen["iterate"] = self.trainer.optimizers[0].iterates()[0].clone()

        def configure_optimizers(self):
            return EchoedNesterov(self.parameters(), lr=0.2)

    model = Quadratic()
    data = DataLoader(TensorDataset(torch.zeros(6, 1)), batch_size=1)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, callbacks=[DataEchoing(factor=2), EvaluateAtIterates()],
                         logger=False, num_sanity_val_steps=0, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(model, data, val_dataloaders=DataLoader(TensorDataset(torch.zeros(1, 1)), batch_size=1))
    optimizer = trainer.optimizers[0]
    w, d = optimizer.iterates()[0], optimizer.state[model.w]["momentum"]
    torch.testing.assert_close(seen["validated"], w)  # validation ran at the iterate w ...
    torch.testing.assert_close(model.w.detach(), w + d)  # ... and training holds w + d again
    assert not torch.equal(seen["validated"], model.w.detach())
