"""Staleness-aware step sizes: closed-form factors, the optimizer wrapper, schedulers, checkpoints."""

from __future__ import annotations

import copy
import csv
import heapq
import io
import math
import random
import warnings
from pathlib import Path
from typing import Callable

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import LearningRateMonitor
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.plugins.precision import Precision
from pytorch_lightning.utilities import GradClipAlgorithmType
from torch.utils.data import DataLoader, TensorDataset

from lightning_echo.core.step_sizes import RULES, StepSizeRule, combined_factor, squared_distance
from lightning_echo.errors import ConfigError
from lightning_echo.stragglers import StalenessAwareOptimizer


def two_params() -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.tensor([1.0, -2.0])), torch.nn.Parameter(torch.tensor([[0.5, 0.0], [3.0, 1.0]]))]


def set_grads(params: list[torch.Tensor], scale: float = 1.0) -> None:
    for i, p in enumerate(params):
        p.grad = torch.full_like(p, scale * (i + 1)) + torch.arange(p.numel(), dtype=p.dtype).reshape(p.shape)


# --- the rules (closed form) -------------------------------------------------------------------


def test_rule_names() -> None:
    assert RULES == ("constant", "dutta", "mishchenko", "koloskova")


@pytest.mark.parametrize("staleness", [0, 1, 7, 10_000])
def test_constant_rule_never_scales(staleness: int) -> None:
    assert StepSizeRule("constant").factor(0.3, staleness) == 1.0


def test_dutta_factor_on_parameters_at_a_known_distance() -> None:
    current = [torch.tensor([1.0, 2.0]), torch.zeros(2, 2)]
    stale = [torch.tensor([0.0, 0.0]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])]
    distance_sq = squared_distance(current, stale)
    assert distance_sq == 7.0  # 1 + 4 + 1 + 1
    eta_max = 0.01
    rule = StepSizeRule("dutta", c=0.005 * eta_max)  # Fig. 9's C
    # eta_j = min(C / 7, eta_max) = 5e-5 / 7, i.e. a factor of 5e-3 / 7 of eta_max.
    assert rule.factor(eta_max, 3, distance_sq) == pytest.approx(0.005 / 7, rel=1e-12)
    assert rule.factor(eta_max, 3, 0.0) == 1.0  # no movement: eta_max
    assert rule.factor(eta_max, 3, 0.005) == pytest.approx(1.0)  # C / d^2 == eta_max exactly
    assert rule.factor(eta_max, 3, 0.001) == 1.0  # C / d^2 above the ceiling
    assert rule.factor(eta_max, 3, math.inf) == 0.0  # diverged parameters: drop
    assert rule.needs_distance and not StepSizeRule("mishchenko", learners=2).needs_distance


def test_mishchenko_factor_is_min_one_m_over_tau() -> None:
    m = 4
    rule = StepSizeRule("mishchenko", learners=m)
    assert [rule.factor(0.1, tau) for tau in (0, 1, m, 2 * m, 10 * m)] == [1.0, 1.0, 1.0, 0.5, 0.1]


def test_koloskova_factor_on_both_sides_of_the_concurrency() -> None:
    m, smoothness, gamma = 4, 2.0, 0.01
    rule = StepSizeRule("koloskova", learners=m, smoothness=smoothness)
    assert rule.factor(gamma, m) == 1.0
    assert rule.factor(gamma, m + 1) == 1.0  # 1/(4 L tau) = 0.025 > gamma: gamma stays
    assert rule.factor(gamma, 50) == pytest.approx(0.25)  # 1/(4*2*50) = 0.0025 = gamma / 4
    assert rule.factor(gamma, 500) == pytest.approx(0.025)
    dropping = StepSizeRule("koloskova", learners=m, drop=True)
    assert [dropping.factor(gamma, tau) for tau in (0, m, m + 1, 100)] == [1.0, 1.0, 0.0, 0.0]


def test_a_zero_base_lr_is_never_capped() -> None:
    assert StepSizeRule("dutta", c=1e-6).factor(0.0, 5, 100.0) == 1.0
    assert StepSizeRule("koloskova", learners=1, smoothness=10.0).factor(0.0, 5) == 1.0


def test_squared_distance_accumulates_in_float64() -> None:
    current = [torch.tensor([1e4, 1e-3]), torch.tensor([[2.0]], dtype=torch.float64)]
    stale = [torch.zeros(2), torch.tensor([[1.0]], dtype=torch.float64)]
    small = float(torch.tensor(1e-3))  # the float32 value, squared in float64
    # In float32, 1e8 + 1e-6 is 1e8: the small term would be lost.
    assert squared_distance(current, stale) == 1e8 + small**2 + 1.0
    assert squared_distance([], []) == 0.0


def test_combined_factor_is_the_mean_of_the_gradients_factors() -> None:
    assert combined_factor([1.0, 0.5, 0.0]) == 0.5
    assert combined_factor([1.0, 1.0, 1.0, 1.0]) == 1.0
    assert combined_factor([0.0, 0.0]) == 0.0
    rule = StepSizeRule("mishchenko", learners=2)
    assert combined_factor([rule.factor(0.1, tau) for tau in (0, 4, 8)]) == pytest.approx((1 + 0.5 + 0.25) / 3)


def test_from_config_takes_a_name_and_a_mapping() -> None:
    rule = StepSizeRule.from_config("koloskova", {"learners": 4, "smoothness": 2, "c": None, "drop": None})
    assert rule == StepSizeRule("koloskova", learners=4, smoothness=2.0)
    assert StepSizeRule.from_config("constant") == StepSizeRule("constant")
    # A setting another rule uses is kept and ignored (one config can sweep several rules).
    assert StepSizeRule.from_config("mishchenko", {"learners": 2, "c": 0.1}).factor(1.0, 4) == 0.5


# --- the wrapper around SGD --------------------------------------------------------------------


def test_one_step_moves_by_factor_times_lr_times_grad_and_restores_lr() -> None:
    params = two_params()
    optimizer = StalenessAwareOptimizer(torch.optim.SGD(params, lr=0.1), "mishchenko", learners=2)
    before = [p.detach().clone() for p in params]
    set_grads(params)
    assert optimizer.tell(8) == 0.25
    optimizer.step()
    for p, old in zip(params, before):
        torch.testing.assert_close(p.detach(), old - (0.1 * 0.25) * p.grad, rtol=0, atol=0)
    assert optimizer.param_groups[0]["lr"] == 0.1
    assert (optimizer.last_factor, optimizer.last_lr, optimizer.last_staleness) == (0.25, 0.1 * 0.25, 8)

    before = [p.detach().clone() for p in params]
    optimizer.step()  # nothing told: a plain step
    for p, old in zip(params, before):
        torch.testing.assert_close(p.detach(), old - 0.1 * p.grad, rtol=0, atol=0)
    assert (optimizer.last_factor, optimizer.last_lr, optimizer.last_staleness, optimizer.steps) == (1.0, 0.1, 0, 2)


def test_several_averaged_gradients_use_the_mean_factor() -> None:
    params = two_params()
    optimizer = StalenessAwareOptimizer(torch.optim.SGD(params, lr=0.2), "mishchenko", learners=4)
    before = [p.detach().clone() for p in params]
    set_grads(params)
    assert optimizer.tell([0, 8]) == 0.75
    optimizer.step()
    for p, old in zip(params, before):
        torch.testing.assert_close(p.detach(), old - (0.2 * 0.75) * p.grad)
    assert optimizer.last_staleness == (0, 8)


def test_dutta_distance_spans_all_groups_and_caps_each_at_its_own_lr() -> None:
    first, second = two_params()
    inner = torch.optim.SGD([{"params": [first], "lr": 0.1}, {"params": [second], "lr": 0.01}])
    optimizer = StalenessAwareOptimizer(inner, "dutta", c=0.02)
    stale = optimizer.snapshot()
    stale[0] = stale[0] + torch.tensor([1.0, 1.0])  # distance^2 2 from the first group
    stale[1] = stale[1] - torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # and 2 from the second
    before = [first.detach().clone(), second.detach().clone()]
    set_grads([first, second])
    # eta = min(0.02 / 4, lr): 0.005 for both groups, i.e. factors 0.05 and 0.5.
    assert optimizer.tell(3, [stale]) == pytest.approx(0.05)
    optimizer.step()
    torch.testing.assert_close(first.detach(), before[0] - 0.005 * first.grad)
    torch.testing.assert_close(second.detach(), before[1] - 0.005 * second.grad)
    assert optimizer.last_lr == pytest.approx(0.005)
    assert [g["lr"] for g in inner.param_groups] == [0.1, 0.01]


def test_dutta_with_two_gradients_averages_their_factors() -> None:
    params = [torch.nn.Parameter(torch.zeros(3))]
    optimizer = StalenessAwareOptimizer(torch.optim.SGD(params, lr=0.1), "dutta", c=0.01)
    near = [torch.zeros(3)]  # distance 0: factor 1
    far = [torch.ones(3)]  # distance^2 3: eta = 0.01/3, factor 1/30
    assert optimizer.tell([0, 5], [near, far]) == pytest.approx((1 + 1 / 30) / 2)


def test_a_zero_factor_changes_nothing_not_even_the_inner_state() -> None:
    params = two_params()
    inner = torch.optim.Adam(params, lr=0.05)
    optimizer = StalenessAwareOptimizer(inner, "koloskova", learners=2, drop=True)
    set_grads(params)
    optimizer.step()  # builds Adam's state
    params_before = [p.detach().clone() for p in params]
    state_before = copy.deepcopy(inner.state_dict())
    set_grads(params, scale=-3.0)
    assert optimizer.tell(3) == 0.0
    assert optimizer.step(lambda: torch.tensor(1.5)) == torch.tensor(1.5)  # the closure still runs
    for p, old in zip(params, params_before):
        assert torch.equal(p.detach(), old)
    after = inner.state_dict()
    for index, entry in state_before["state"].items():
        for key, value in entry.items():
            assert torch.equal(after["state"][index][key], value), key
    assert (optimizer.dropped, optimizer.steps, optimizer.last_factor, optimizer.last_lr) == (1, 2, 0.0, 0.0)


# --- a real Optimizer: sharing, schedulers, clipping, hooks ------------------------------------


def test_it_is_an_optimizer_sharing_groups_state_and_defaults() -> None:
    params = two_params()
    inner = torch.optim.SGD(params[:1], lr=0.1, momentum=0.9)
    optimizer = StalenessAwareOptimizer(inner)
    assert isinstance(optimizer, torch.optim.Optimizer)
    assert optimizer.param_groups is inner.param_groups and len(inner.param_groups) == 1
    assert optimizer.state is inner.state and optimizer.defaults is inner.defaults
    optimizer.add_param_group({"params": params[1:], "lr": 0.01})
    assert len(inner.param_groups) == 2 and inner.param_groups[1]["params"][0] is params[1]
    assert inner.param_groups[1]["momentum"] == 0.9  # the inner defaults filled in
    # Still shared after the inner optimizer replaces its lists on load_state_dict.
    inner.load_state_dict(copy.deepcopy(inner.state_dict()))
    assert optimizer.param_groups is inner.param_groups and optimizer.state is inner.state


def test_step_hooks_on_the_wrapper_run_once_per_step() -> None:
    params = two_params()
    optimizer = StalenessAwareOptimizer(torch.optim.SGD(params, lr=0.1))
    calls = []
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: calls.append(("pre", opt)))
    optimizer.register_step_post_hook(lambda opt, args, kwargs: calls.append(("post", opt)))
    set_grads(params)
    optimizer.step()
    assert calls == [("pre", optimizer), ("post", optimizer)]


def quiet_step(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler, staleness: int) -> None:
    """One told step then a scheduler step; fails on torch's 'scheduler before optimizer' warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        optimizer.tell(staleness)
        optimizer.step()
        scheduler.step()


def test_step_lr_drives_the_inner_lr_and_the_rule_does_not_compound() -> None:
    params = two_params()
    inner = torch.optim.SGD(params, lr=0.1)
    optimizer = StalenessAwareOptimizer(inner, "mishchenko", learners=1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    set_grads(params)
    applied = []
    for _ in range(3):
        quiet_step(optimizer, scheduler, 2)
        applied.append(optimizer.last_lr)
    assert inner.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)
    assert applied == pytest.approx([0.05, 0.025, 0.0125])  # scheduled lr times the factor 0.5


def test_one_cycle_and_lambda_lr_accept_the_wrapper() -> None:
    params = two_params()
    inner = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    optimizer = StalenessAwareOptimizer(inner, "mishchenko", learners=2)
    one_cycle = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1.0, total_steps=10)
    assert inner.param_groups[0]["lr"] == pytest.approx(1.0 / 25)  # max_lr / div_factor
    set_grads(params)
    for _ in range(4):
        quiet_step(optimizer, one_cycle, 4)
        assert inner.param_groups[0]["lr"] == one_cycle.get_last_lr()[0]
        assert optimizer.last_factor == 0.5
    assert inner.param_groups[0]["lr"] > 0.5  # warming up towards max_lr

    params = two_params()
    inner = torch.optim.SGD(params, lr=0.3)
    optimizer = StalenessAwareOptimizer(inner, "mishchenko", learners=2)
    lambda_lr = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0 / (epoch + 1))
    set_grads(params)
    for step in range(3):
        quiet_step(optimizer, lambda_lr, 0)
        assert inner.param_groups[0]["lr"] == pytest.approx(0.3 / (step + 2))


def test_gradient_clipping_works_unchanged() -> None:
    params = two_params()
    optimizer = StalenessAwareOptimizer(torch.optim.SGD(params, lr=0.1), "mishchenko", learners=1)
    set_grads(params, scale=10.0)
    torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], max_norm=1.0)
    norm = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in params]))
    assert norm == pytest.approx(1.0, rel=1e-5)
    set_grads(params, scale=10.0)
    Precision().clip_gradients(optimizer, clip_val=1.0, gradient_clip_algorithm=GradClipAlgorithmType.NORM)  # Lightning's
    norm = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in params]))
    assert norm == pytest.approx(1.0, rel=1e-5)
    before = [p.detach().clone() for p in params]
    optimizer.tell(2)
    optimizer.step()
    for p, old in zip(params, before):
        torch.testing.assert_close(p.detach(), old - 0.05 * p.grad)


def test_a_tell_through_lightnings_optimizer_proxy_reaches_the_wrapper() -> None:
    # self.optimizers() in a LightningModule returns this proxy (a subclass made on the fly).
    from pytorch_lightning.core.optimizer import LightningOptimizer

    params = two_params()
    optimizer = StalenessAwareOptimizer(torch.optim.SGD(params, lr=0.1), "mishchenko", learners=4)
    proxy = LightningOptimizer(optimizer)
    assert isinstance(proxy, StalenessAwareOptimizer) and proxy.param_groups is optimizer.param_groups
    assert proxy.tell(8) == 0.5
    set_grads(params)
    optimizer.step()
    assert optimizer.last_factor == proxy.last_factor == 0.5 and proxy.steps == 1


# --- checkpoints ------------------------------------------------------------------------------


def quadratic_closure(params: list[torch.Tensor], optimizer: torch.optim.Optimizer, step: int) -> Callable[[], torch.Tensor]:
    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = sum(((p - step) ** 2 * (i + 1)).sum() for i, p in enumerate(params))
        loss.backward()
        return loss

    return closure


def test_adam_state_round_trip_continues_bit_for_bit() -> None:
    stalenesses = [0, 3, 5, 1, 8, 2, 4]

    def build(params: list[torch.nn.Parameter], rule: str = "mishchenko", **settings) -> StalenessAwareOptimizer:
        return StalenessAwareOptimizer(torch.optim.Adam(params, lr=0.05), rule, **settings)

    reference = two_params()
    uninterrupted = build(reference, learners=2)
    for step, tau in enumerate(stalenesses):
        uninterrupted.tell(tau)
        uninterrupted.step(quadratic_closure(reference, uninterrupted, step))

    params = two_params()
    first = build(params, learners=2)
    for step, tau in enumerate(stalenesses[:3]):
        first.tell(tau)
        first.step(quadratic_closure(params, first, step))
    first.tell(stalenesses[3])  # a pending tell travels with the checkpoint
    buffer = io.BytesIO()
    torch.save({"params": [p.detach() for p in params], "optimizer": first.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    resumed_params = [torch.nn.Parameter(t.clone()) for t in saved["params"]]
    resumed = build(resumed_params, "constant")  # the saved rule replaces this one
    resumed.load_state_dict(saved["optimizer"])
    assert resumed.rule == StepSizeRule("mishchenko", learners=2) and resumed.steps == 3
    for step, tau in enumerate(stalenesses[3:], start=3):
        if step > 3:
            resumed.tell(tau)
        resumed.step(quadratic_closure(resumed_params, resumed, step))
    for p, q in zip(reference, resumed_params):
        assert torch.equal(p.detach(), q.detach())
    assert resumed.state_dict()["staleness_aware"] == uninterrupted.state_dict()["staleness_aware"]


def test_a_deep_copy_is_an_independent_working_optimizer() -> None:
    params = two_params()
    optimizer = StalenessAwareOptimizer(torch.optim.SGD(params, lr=0.1, momentum=0.9), "mishchenko", learners=1)
    set_grads(params)
    optimizer.step()
    clone = copy.deepcopy(optimizer)
    cloned_params = [p for g in clone.param_groups for p in g["params"]]
    assert cloned_params[0] is not params[0] and clone.rule == optimizer.rule
    for opt, ps in ((optimizer, params), (clone, cloned_params)):
        set_grads(ps)
        opt.tell(2)
        opt.step()
    for p, q in zip(params, cloned_params):
        assert torch.equal(p.detach(), q.detach())


# --- every bad input: one line naming the setting ----------------------------------------------


def sgd_wrapper(rule: str = "constant", **settings) -> StalenessAwareOptimizer:
    return StalenessAwareOptimizer(torch.optim.SGD(two_params(), lr=0.1), rule, **settings)


BAD_INPUTS = [
    ("stale.lr_rule", lambda: StepSizeRule("adam")),
    ("stale.c", lambda: StepSizeRule("dutta")),
    ("stale.c", lambda: StepSizeRule("dutta", c=0.0)),
    ("stale.c", lambda: StepSizeRule("dutta", c=-1.0)),
    ("stale.c", lambda: StepSizeRule("dutta", c=math.nan)),
    ("stale.learners", lambda: StepSizeRule("mishchenko")),
    ("stale.learners", lambda: StepSizeRule("mishchenko", learners=0)),
    ("stale.learners", lambda: StepSizeRule("mishchenko", learners=2.5)),
    ("stale.learners", lambda: StepSizeRule("koloskova", smoothness=1.0)),
    ("stale.smoothness", lambda: StepSizeRule("koloskova", learners=4)),
    ("stale.smoothness", lambda: StepSizeRule("koloskova", learners=4, smoothness=0.0)),
    ("stale.drop", lambda: StepSizeRule("koloskova", learners=4, drop="yes")),
    ("stale.C", lambda: StepSizeRule.from_config("dutta", {"C": 0.1})),
    ("staleness", lambda: StepSizeRule("constant").factor(0.1, -1)),
    ("staleness", lambda: StepSizeRule("constant").factor(0.1, 1.5)),
    ("lr", lambda: StepSizeRule("constant").factor(-0.1, 0)),
    ("distance_sq", lambda: StepSizeRule("dutta", c=1.0).factor(0.1, 1)),
    ("distance_sq", lambda: StepSizeRule("dutta", c=1.0).factor(0.1, 1, -1.0)),
    ("factors", lambda: combined_factor([])),
    ("factors", lambda: combined_factor([0.5, 1.5])),
    ("len(stale)", lambda: squared_distance([torch.zeros(2)], [])),
    ("stale[0].shape", lambda: squared_distance([torch.zeros(2)], [torch.zeros(3)])),
    ("optimizer", lambda: StalenessAwareOptimizer("sgd")),
    ("optimizer", lambda: StalenessAwareOptimizer(sgd_wrapper())),
    ("stale.lr_rule", lambda: StalenessAwareOptimizer(torch.optim.SGD(two_params()), StepSizeRule("constant"), c=1.0)),
    ("stale.learners", lambda: sgd_wrapper("mishchenko", learners=-2)),
    ("stale.foo", lambda: sgd_wrapper("mishchenko", learners=2, foo=1)),
    ("staleness", lambda: sgd_wrapper().tell(-1)),
    ("staleness", lambda: sgd_wrapper().tell([])),
    ("staleness", lambda: sgd_wrapper().tell([1, -3])),
    ("stale_params", lambda: sgd_wrapper("dutta", c=1.0).tell(2)),
    ("len(stale_params)", lambda: sgd_wrapper("dutta", c=1.0).tell([1, 2], [[torch.zeros(2), torch.zeros(2, 2)]])),
    ("len(stale_params[0])", lambda: sgd_wrapper("dutta", c=1.0).tell(1, [[torch.zeros(2)]])),
    ("stale_params[0][1].shape", lambda: sgd_wrapper("dutta", c=1.0).tell(1, [[torch.zeros(2), torch.zeros(4)]])),
    ("momentum_offset", lambda: StalenessAwareOptimizer(torch.optim.SGD(two_params()), momentum_offset=1.0)),
    ("momentum_offset", lambda: StalenessAwareOptimizer(torch.optim.SGD(two_params()), momentum_offset="0.5")),
]


@pytest.mark.parametrize("key, make", BAD_INPUTS, ids=[f"{i}-{key}" for i, (key, _) in enumerate(BAD_INPUTS)])
def test_bad_input_gives_one_line_naming_the_setting(key: str, make: Callable[[], object]) -> None:
    with pytest.raises(ConfigError) as caught:
        make()
    message = str(caught.value)
    assert caught.value.key == key and message.startswith(f"{key}=") and "\n" not in message, message


def test_the_dutta_message_explains_the_rule() -> None:
    with pytest.raises(ConfigError) as caught:
        StepSizeRule("dutta")
    assert str(caught.value) == (
        "stale.c=None is not allowed: the dutta rule needs C > 0 (eta_j = min(C / ||w_j - w_tau||^2, eta_max))"
    )


def test_a_rejected_tell_leaves_nothing_pending() -> None:
    params = two_params()
    optimizer = StalenessAwareOptimizer(torch.optim.SGD(params, lr=0.1), "mishchenko", learners=1)
    optimizer.tell(4)
    with pytest.raises(ConfigError):
        optimizer.tell([2, -1])
    set_grads(params)
    optimizer.step()
    assert optimizer.last_factor == 0.25  # the earlier, valid tell


# --- in a Lightning Trainer ---------------------------------------------------------------------


class TinyRegression(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self):
        optimizer = StalenessAwareOptimizer(torch.optim.SGD(self.parameters(), lr=0.1), "mishchenko", learners=4)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class TellStaleness(pl.Callback):
    """Tells a staleness per step from inside the closure (as a parameter-server strategy might)."""

    def __init__(self, stalenesses: list[int]) -> None:
        self.stalenesses = stalenesses
        self.factors: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        optimizer.tell(self.stalenesses[trainer.global_step])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.factors.append(trainer.optimizers[0].last_factor)


def test_in_a_trainer_with_scheduler_monitor_and_clipping(tmp_path: Path) -> None:
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(12, 3), torch.randn(12, 1))
    teller = TellStaleness([8, 0, 16])
    trainer = pl.Trainer(
        max_steps=3, accelerator="cpu", logger=CSVLogger(tmp_path), log_every_n_steps=1, gradient_clip_val=0.5,
        callbacks=[LearningRateMonitor(logging_interval="step"), teller],
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
    )
    trainer.fit(TinyRegression(), DataLoader(data, batch_size=4))
    optimizer = trainer.optimizers[0]
    assert isinstance(optimizer, StalenessAwareOptimizer)
    assert teller.factors == [0.5, 1.0, 0.25]  # each tell made inside the closure applies to its own step
    assert (optimizer.steps, optimizer.last_staleness) == (3, 16)
    assert optimizer.last_lr == pytest.approx(0.025 * 0.25)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)
    with open(Path(trainer.logger.log_dir) / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    lr_key = next(key for key in rows[0] if key.startswith("lr-"))
    logged = [float(row[lr_key]) for row in rows if row.get(lr_key)]
    assert logged == pytest.approx([0.1, 0.05, 0.025])  # the monitor sees the scheduled lr


# --- a tiny asynchronous least-squares run ----------------------------------------------------


def async_least_squares(rule: str, updates: int = 400, seed: int = 0, **settings) -> tuple[float, float, list[int]]:
    """Four learners of speeds 1, 2, 4, 8 (mean compute times, exponential) on one server.

    Each learner reads the parameters, computes the full gradient there and pushes it; the
    server applies it at once (fully asynchronous SGD, K = 1). Returns the initial and final
    loss and the observed stalenesses.
    """
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=generator, dtype=torch.float64)
    y = x @ torch.randn(8, generator=generator, dtype=torch.float64)
    hessian, xty = x.T @ x / 64, x.T @ y / 64
    smoothness = torch.linalg.eigvalsh(hessian).max().item()
    w = torch.nn.Parameter(torch.zeros(8, dtype=torch.float64))
    lr = 1.2 / smoothness  # stable without delays (< 2 / L), not with them
    if rule == "dutta":
        settings = {"c": 0.005 * lr}  # Fig. 9's C = 0.005 eta_max
    optimizer = StalenessAwareOptimizer(torch.optim.SGD([w], lr=lr), rule, **settings)

    def loss() -> float:
        return 0.5 * ((x @ w.detach() - y) ** 2).mean().item()

    initial, version, rng = loss(), 0, random.Random(seed)
    speeds = (1.0, 2.0, 4.0, 8.0)
    arrivals = [(rng.expovariate(1 / s), m, version, optimizer.snapshot()) for m, s in enumerate(speeds)]
    heapq.heapify(arrivals)
    stalenesses = []
    for _ in range(updates):
        now, m, read, stale = heapq.heappop(arrivals)
        w.grad = hessian @ stale[0] - xty
        stalenesses.append(version - read)
        optimizer.tell(version - read, [stale])
        optimizer.step()
        version += 1
        heapq.heappush(arrivals, (now + rng.expovariate(1 / speeds[m]), m, version, optimizer.snapshot()))
    return initial, loss(), stalenesses


def test_async_least_squares_constant_diverges_while_the_rules_stay_finite() -> None:
    initial, constant, stalenesses = async_least_squares("constant")
    assert max(stalenesses) > 4 * 4  # the slow learner's gradients are far older than M
    assert not constant < 1e3 * initial  # diverged (or non-finite)
    for rule, settings in (("mishchenko", {"learners": 4}), ("dutta", {})):
        _, final, _ = async_least_squares(rule, **settings)
        assert math.isfinite(final) and final < 1e-3 * initial, (rule, final)


def test_a_momentum_offset_lowers_each_steps_momentum_and_the_group_keeps_its_own() -> None:
    weights = [torch.nn.Parameter(torch.ones(3)) for _ in range(2)]
    reference = [torch.nn.Parameter(torch.ones(3)) for _ in range(2)]
    wrapped = StalenessAwareOptimizer(torch.optim.SGD(weights, lr=0.1, momentum=0.9), momentum_offset=0.875)
    plain = torch.optim.SGD(reference, lr=0.1, momentum=0.025)
    for step in range(4):
        for params in (weights, reference):
            for p in params:
                p.grad = torch.full((3,), float(step + 1))
        wrapped.step()
        plain.step()
        assert wrapped.param_groups[0]["momentum"] == 0.9  # schedulers and monitors see the configured value
    for mine, theirs in zip(weights, reference):
        assert torch.allclose(mine, theirs)
    # below the offset, no momentum at all; a saved state keeps this run's offset
    low = StalenessAwareOptimizer(torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.1, momentum=0.5),
                                  momentum_offset=0.75)
    low.param_groups[0]["params"][0].grad = torch.ones(1)
    low.step()
    assert "momentum_buffer" not in low.state[low.param_groups[0]["params"][0]] or low.state[low.param_groups[0]["params"][0]]["momentum_buffer"] is None
    low.load_state_dict(low.state_dict())
    assert low.momentum_offset == 0.75
