"""AdaptiveK (``stale.k=auto``): the K the observed speeds favour, more synchrony when the loss
plateaus (and not while it falls), its bounds, its state round trip; and the schedule core's
``set_k`` that applies it between updates."""

from __future__ import annotations

import json
import math
import random

import pytest

from lightning_echo.core.adaptive_k import ADAPTIVE_VARIANTS, AdaptiveK, initial_k
from lightning_echo.core.delays import ComputeTimes, DelayDistribution
from lightning_echo.core.schedule import ScheduleSimulation, ServerPolicy, variant_spec
from lightning_echo.errors import ConfigError

P = 8
SIX_FAST_TWO_SLOW = [1.0] * 6 + [10.0] * 2


def timed(rule: AdaptiveK, seconds: list[float], rounds: int = 4) -> AdaptiveK:
    for _ in range(rounds):
        for learner, value in enumerate(seconds):
            rule.observe_time(learner, value)
    return rule


def test_the_initial_k_of_the_k_variants_leaves_out_two_very_slow_learners() -> None:
    for variant in ("k_sync", "k_async"):
        rule = AdaptiveK(variant, P)
        assert rule.k == initial_k(variant, P) == (P if variant == "k_sync" else 1)  # before any learner was timed
        timed(rule, SIX_FAST_TWO_SLOW, rounds=3)
        assert not rule.warm and rule.k == initial_k(variant, P)  # three times of each learner are not enough
        timed(rule, SIX_FAST_TWO_SLOW, rounds=1)
        assert rule.warm and rule.k == 6  # K = 6 costs one fast time per update, K = 7 a slow one
        assert rule.time_per_update(6) == 1.0 and rule.time_per_update(7) == 10.0


def test_equal_constant_speeds_favour_waiting_for_everyone() -> None:
    assert timed(AdaptiveK("k_async", P), [2.0] * P).k == P  # waiting costs nothing, the average is less noisy


def test_exponential_times_favour_k_1_for_k_async() -> None:
    # E[X_{K:8}] grows faster than (1 + s/K) shrinks: 0.125, 0.268, 0.435, ... for exp(1).
    draws = random.Random(3)
    rule = AdaptiveK("k_async", P)
    for _ in range(16):
        for learner in range(P):
            rule.observe_time(learner, draws.expovariate(1.0))
    assert rule.k == 1
    assert rule.time_per_update(1) < rule.time_per_update(2) < rule.time_per_update(P)


def test_k_batch_async_time_per_gradient_is_the_same_for_every_k() -> None:
    rule = timed(AdaptiveK("k_batch_async", P), SIX_FAST_TWO_SLOW)
    rate = 6 / 1.0 + 2 / 10.0
    assert rule.time_per_update(4) == pytest.approx(4 / rate) and rule.k == 1


def test_rennala_b_is_the_minimum_of_tyurin_and_richtariks_time_over_the_fastest_learners() -> None:
    rule = timed(AdaptiveK("rennala", P), SIX_FAST_TWO_SLOW)

    def collection(b: int) -> float:  # min over the m fastest of (m + B) / sum of their rates
        rates = sorted((1 / t for t in SIX_FAST_TWO_SLOW), reverse=True)
        return min((m + b) / sum(rates[:m]) for m in range(1, P + 1))

    assert rule.time_per_update(3) == pytest.approx((6 + 3) / 6.0)  # the two slow learners are left out
    best = min(range(1, 4 * P + 1), key=lambda b: collection(b) * (1 + 1 / b))
    assert rule.k == best == 2


def test_k_rises_when_the_loss_plateaus_and_not_while_it_falls() -> None:
    rule = timed(AdaptiveK("k_async", P, window=10), [1.0] * 6 + [30.0] * 2)
    assert rule.k == 6
    loss = 2.0
    for _ in range(20):  # 1% lower every window: above the 0.5% threshold
        for _ in range(10):
            rule.observe_update(loss)
        loss *= 0.99
    assert rule.k == 6 and rule.level == 0
    for _ in range(20):  # the first flat window is still 1% below the last falling one; the second is flat
        rule.observe_update(loss)
    assert rule.k == 6  # one window without improvement: not yet (patience 2)
    for _ in range(10):  # the second: K doubles
        rule.observe_update(loss)
    assert rule.k == 8 and rule.level == 1  # 6 * 2 capped at P
    assert rule.changes == [(0, 1), (0, 6), (230, 8)]  # (updates seen, the new K)


def test_a_noisy_loss_that_still_falls_is_no_plateau() -> None:
    rule = AdaptiveK("k_async", P, window=50)
    draws = random.Random(5)
    for update in range(5000):  # falls 2% per window under 5% noise per update (0.7% per window mean)
        rule.observe_update(math.exp(-0.0004 * update) * (1 + 0.05 * draws.gauss(0, 1)))
    assert rule.level == 0


def test_k_doubles_on_every_plateau_up_to_its_cap() -> None:
    rule = AdaptiveK("k_async", P, window=4)
    seen = []
    for _ in range(60):
        rule.observe_update(1.0)
        seen.append(rule.k)
    assert sorted(set(seen)) == [1, 2, 4, 8] and rule.k == rule.cap == P
    assert [updates for updates, _ in rule.changes] == [0, 12, 20, 28]  # a reference window, then two flat per raise
    batch = AdaptiveK("k_batch_async", P, window=4)
    for _ in range(400):
        batch.observe_update(1.0)
    assert batch.k == batch.cap == 4 * P  # the batch variants' cap


def test_unknown_losses_and_retired_learners() -> None:
    rule = AdaptiveK("k_async", P, window=4)
    for _ in range(20):
        rule.observe_update(math.nan)
        rule.observe_update(None)
    assert rule.level == 0 and rule.updates == 40
    timed(rule, SIX_FAST_TWO_SLOW)
    rule.retire(0)
    rule.retire(1)
    assert rule.cap == 6 and rule.k == 4  # the four fast learners left; the slow ones still cost 10x


def test_an_unresponsive_learner_counts_as_the_slowest_once_the_warm_up_ends() -> None:
    rule = AdaptiveK("k_sync", 4, warmup_updates=3)
    for _ in range(3):
        for learner in range(3):
            rule.observe_time(learner, 1.0)
        assert not rule.warm or rule.updates == 3
        rule.observe_update(1.0)
    assert rule.warm and rule.k == 3 and rule.time_per_update(4) == math.inf


def test_the_state_round_trip_continues_with_the_same_choices() -> None:
    def feed(rule: AdaptiveK, draws: random.Random, updates: range) -> list[int]:
        ks = []
        for update in updates:
            for _ in range(rule.k):
                learner = draws.randrange(P)
                rule.observe_time(learner, draws.expovariate(1.0) * (5.0 if learner >= 6 else 1.0))
            rule.observe_update(1.0 / math.sqrt(1 + update) + 0.05 * draws.random())
            ks.append(rule.k)
        return ks

    whole, draws = AdaptiveK("k_batch_sync", P, window=16), random.Random(9)
    expected = feed(whole, draws, range(400))
    first, draws = AdaptiveK("k_batch_sync", P, window=16), random.Random(9)
    before = feed(first, draws, range(150))
    saved = json.loads(json.dumps(first.state_dict()))  # plain data
    resumed = AdaptiveK("k_batch_sync", P, window=16)
    resumed.load_state_dict(saved)
    after = feed(resumed, draws, range(150, 400))
    assert before + after == expected and len(set(expected)) > 1
    assert resumed.state_dict() == whole.state_dict()
    with pytest.raises(ValueError, match="saved for"):
        AdaptiveK("k_async", P).load_state_dict(saved)


@pytest.mark.parametrize("variant", ["sync", "async", "ringmaster"])
def test_auto_is_refused_where_the_variant_fixes_k(variant: str) -> None:
    with pytest.raises(ConfigError) as error:
        AdaptiveK(variant, P)
    assert "stale.k='auto'" in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("kwargs, key", [({"growth": 1}, "growth"), ({"window": 0}, "window"),
                                         ({"min_samples": 17}, "min_samples"),
                                         ({"noise": -1.0}, "noise"), ({"threshold": math.inf}, "threshold")])
def test_bad_rule_settings_are_one_line_errors(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        AdaptiveK("k_async", P, **kwargs)


def test_bad_observations() -> None:
    rule = AdaptiveK("k_async", P)
    with pytest.raises(ConfigError, match="compute time"):
        rule.observe_time(0, -1.0)
    with pytest.raises(ValueError, match="does not exist"):
        rule.observe_time(P, 1.0)


@pytest.mark.parametrize("variant", ADAPTIVE_VARIANTS)
def test_every_adaptive_variant_chooses_a_k_its_policy_accepts(variant: str) -> None:
    rule = timed(AdaptiveK(variant, P, window=4), SIX_FAST_TWO_SLOW)
    policy = ServerPolicy(variant_spec(variant, P, initial_k(variant, P)))
    for _ in range(60):
        policy.set_k(rule.k)
        rule.observe_update(1.0)
    assert rule.k == policy.k == rule.cap


# -- the schedule core applies it ----------------------------------------------------------------------
def test_set_k_is_validated_by_the_variants_rule() -> None:
    with pytest.raises(ConfigError, match="stale.k=9"):
        ServerPolicy(variant_spec("k_async", P, 2)).set_k(9)
    with pytest.raises(ConfigError, match="applies one gradient per update"):
        ServerPolicy(variant_spec("async", P)).set_k(2)
    ServerPolicy(variant_spec("k_batch_async", P, 2)).set_k(40)  # a batch variant's K may exceed P
    policy = ServerPolicy(variant_spec("k_async", 3, 2))
    policy.initial_starts()
    policy.on_arrival(0)
    policy.on_arrival(1)
    with pytest.raises(RuntimeError, match="an update is due"):
        policy.set_k(3)


def test_the_simulation_takes_the_new_k_from_the_next_update_and_keeps_it_in_its_state() -> None:
    times = ComputeTimes(DelayDistribution("exponential"))
    simulation = ScheduleSimulation(variant_spec("k_async", P, 1), times, seed=4)
    assert len(simulation.next_update().gradients) == 1
    simulation.set_k(5)
    assert simulation.k == 5 and len(simulation.next_update().gradients) == 5
    state = simulation.state_dict()
    copy = ScheduleSimulation(variant_spec("k_async", P, 1), times, seed=4)
    copy.load_state_dict(state)  # the spec is the run's first K; the state carries the current one
    assert copy.k == 5 and copy.next_update() == simulation.next_update()
