"""``stale.k=auto``: choose K (Rennala's B) while training, from what the server observes.

A pure rule, :class:`AdaptiveK`; the straggler strategies feed it and apply its K to the next
update (:meth:`~lightning_echo.core.schedule.ServerPolicy.set_k`). Its signals:

- **compute times**: each arriving gradient's compute time, per learner (simulated: the schedule's
  draw; processes: from the learner's START to its PUSH), the last ``memory`` per learner;
- **the training loss** of each update (the mean over its gradients).

The rule, in two parts.

1. *The K the speeds favour* (``base``). Tyurin and Richtarik (2023, Theorem 7.2) minimise the
   time to an accuracy ``eps`` over how many of the fastest workers to use: time per update
   times the iterations it takes, which for an average of K gradients scale as ``1 + s/K`` with
   ``s = sigma^2 / eps``. Here the time per update is each variant's own (Dutta et al. 2018,
   Sec. 3; Tyurin and Richtarik 2023), from the observed times:

   - ``k_sync``, ``k_async``: ``E[X_{K:P}]``, the K-th smallest compute time of a round (Dutta
     et al. Lemmas 3 and 5), estimated without any distribution assumed: round ``j`` takes each
     learner's ``j``-th most recent time (learners are independent, so these are rounds as
     likely as real ones);
   - ``k_batch_sync``, ``rennala``: the time the ``m`` fastest learners take to compute ``K``
     gradients from a common start, ``min_m (m + K) / sum_{i<=m} 1/tau_i`` (Tyurin and
     Richtarik's collection time, without its factor 2), ``tau_i`` a learner's mean time;
   - ``k_batch_async``: ``K / sum_i 1/tau_i`` (Dutta et al. Lemma 4, for any distribution):
     every K is as fast per gradient, so the speeds favour K = 1.

   ``base`` minimises ``time(K) (1 + s/K)`` over ``1 <= K <= cap``. A learner that delivered
   nothing yet counts as slower than every other. Until every learner delivered ``min_samples``
   gradients (at most ``warmup_updates`` updates: one time of each is a poor estimate of an order
   statistic) K is 1 where every learner keeps computing at K = 1
   (``k_async``, ``k_batch_async``, ``rennala``), and P where K < P cancels the slow ones'
   work before it is ever timed (``k_sync``, ``k_batch_sync``). ``base`` is chosen again at
   every window's end, and changed only when the new choice is ``switch_gain`` (half) cheaper:
   a few rounds of random times can rank two K wrongly, and every change costs.

2. *More synchrony near the floor* (``level``). Dutta et al.'s future work and Wang and Joshi's
   AdaComm (2018): little synchrony while the loss falls, more once it stops falling. The losses
   are averaged over windows of ``window`` updates; when ``patience`` windows in a row are not
   below the best window so far by ``threshold`` (relative; PyTorch's ``ReduceLROnPlateau`` rule),
   ``level`` goes up by one. K is ``min(cap, base * growth ** level)``. Windows count updates,
   not gradients: with a fixed step
   size a larger K makes fewer steps per gradient, so a window of gradients would look like a
   plateau right after every raise. A loss that still falls slowly is not a floor: more
   synchrony then costs time per update and steps per sample, and pays only where the noise of
   fewer gradients per update (or their staleness) holds the loss up; hence a small threshold
   and two windows in a row (on the bench's logistic regression a 1% threshold on single windows
   raised K while the loss still fell and made a long run 2.3x slower).

``cap`` is P (fewer when learners were retired) for ``k_sync`` and ``k_async``, ``batch_cap``
times P for the batch variants. Constants (defaults): ``s = 1`` (an accuracy of the order of a
single gradient's noise: the speeds alone pick K early; part 2 adds synchrony when the noise
starts to matter), ``window = 64 P`` updates, ``threshold = 0.005``, ``patience = 2``,
``growth = 2``, ``batch_cap = 4``, ``memory = 16``, ``min_samples = 4``, ``switch_gain = 0.5``,
``warmup_updates = 8 P``.

Example::

    rule = AdaptiveK("k_async", learners=8)
    for _ in range(4):
        for learner in range(8):                # six fast learners, two ten times slower
            rule.observe_time(learner, 1.0 if learner < 6 else 10.0)
    assert rule.k == 6                          # waiting for the slow two costs 10x per update
"""

from __future__ import annotations

import math
from typing import Any, Optional

from lightning_echo.errors import ConfigError
from lightning_echo.validation import positive_int

AUTO = "auto"
# Variants whose K the rule chooses; sync, async and ringmaster fix K themselves.
ADAPTIVE_VARIANTS = ("k_sync", "k_batch_sync", "k_async", "k_batch_async", "rennala")
ONE_PER_LEARNER = ("k_sync", "k_async")  # each learner contributes at most one gradient per update
CANCEL_ALL = ("k_sync", "k_batch_sync")  # K < P cancels the slower learners' work at every update
STATE_VERSION = 1


def check_adaptive_variant(variant: str) -> str:
    """``variant`` if ``stale.k=auto`` applies to it, else one ConfigError line."""
    if variant not in ADAPTIVE_VARIANTS:
        fixed = "P (every learner)" if variant == "sync" else "1"
        raise ConfigError("stale.k", AUTO, f"{variant} fixes K at {fixed}; auto chooses K for "
                          + ", ".join(ADAPTIVE_VARIANTS) + " (set stale.k to null or an integer)")
    return variant


def initial_k(variant: str, learners: int) -> int:
    """The K of the first updates, before any learner was timed: P for the variants that cancel
    the slower learners' work (else their times are never seen), 1 for the others."""
    check_adaptive_variant(variant)
    return learners if variant in CANCEL_ALL else 1


class AdaptiveK:
    """K for the next update of ``variant`` on ``learners`` (P) learners, from observed compute
    times and training losses (see the module docstring for the rule and its constants).

    Feed it :meth:`observe_time` for every gradient that arrives (used or not) and
    :meth:`observe_update` after every update; read :attr:`k` before planning the next one.
    """

    def __init__(
        self,
        variant: str,
        learners: int,
        *,
        noise: float = 1.0,
        window: Optional[int] = None,
        threshold: float = 0.005,
        patience: int = 2,
        growth: int = 2,
        batch_cap: int = 4,
        memory: int = 16,
        min_samples: int = 4,
        switch_gain: float = 0.5,
        warmup_updates: Optional[int] = None,
    ) -> None:
        self.variant = check_adaptive_variant(variant)
        self.learners = positive_int("stale.learners", learners)
        self.noise = _non_negative("noise", noise)
        self.window = positive_int("window", window) if window is not None else 64 * learners
        self.threshold = _non_negative("threshold", threshold)
        self.patience = positive_int("patience", patience)
        if isinstance(growth, bool) or not isinstance(growth, int) or growth < 2:
            raise ConfigError("growth", growth, "must be an integer >= 2")
        self.growth = growth
        self.batch_cap = positive_int("batch_cap", batch_cap)
        self.memory = positive_int("memory", memory)
        self.min_samples = positive_int("min_samples", min_samples)
        if self.min_samples > self.memory:
            raise ConfigError("min_samples", min_samples, f"must be at most memory={memory}")
        self.switch_gain = _non_negative("switch_gain", switch_gain)
        self.warmup_updates = (positive_int("warmup_updates", warmup_updates) if warmup_updates is not None
                               else 8 * learners)
        self._times: list[list[float]] = [[] for _ in range(learners)]
        self._retired: set[int] = set()
        self.updates = 0
        self.warm = False
        self.base = initial_k(variant, learners)
        self.level = 0
        self._k = self.base
        self._window_sum = 0.0
        self._window_updates = 0
        self._best: Optional[float] = None
        self._stalled = 0  # windows in a row not below the best by the threshold
        self.changes: list[tuple[int, int]] = [(0, self._k)]  # (updates it had seen then, the new K)

    # -- what it chooses ---------------------------------------------------------------------------
    @property
    def k(self) -> int:
        """K for the next update."""
        return self._k

    @property
    def cap(self) -> int:
        """The largest K it chooses: the live learners for k_sync / k_async, ``batch_cap`` P otherwise."""
        if self.variant in ONE_PER_LEARNER:
            return max(1, self.learners - len(self._retired))
        return self.batch_cap * self.learners

    def time_per_update(self, k: int) -> float:
        """The time per update of K gradients that the observed compute times predict (inf when
        they cannot deliver K)."""
        live = [i for i in range(self.learners) if i not in self._retired]
        observed = [self._times[i] for i in live if self._times[i]]
        if not observed:
            return math.inf
        if self.variant in ONE_PER_LEARNER:
            if k > len(observed):
                return math.inf
            rounds = min(len(times) for times in observed)
            return math.fsum(sorted(times[-j] for times in observed)[k - 1] for j in range(1, rounds + 1)) / rounds
        rates = sorted((1.0 / max(math.fsum(times) / len(times), 1e-12) for times in observed), reverse=True)
        if self.variant == "k_batch_async":
            return k / math.fsum(rates)
        total, best = 0.0, math.inf
        for m, rate in enumerate(rates, start=1):
            total += rate
            best = min(best, (m + k) / total)
        return best

    def cost(self, k: int) -> float:
        """``time_per_update(k) * (1 + s / k)``: the time to an accuracy, up to a constant."""
        return self.time_per_update(k) * (1.0 + self.noise / k)

    def favoured_k(self) -> int:
        """The K the observed speeds favour (the first minimum of :meth:`cost`)."""
        costs = [self.cost(k) for k in range(1, self.cap + 1)]
        return 1 + min(range(len(costs)), key=costs.__getitem__)

    # -- what it observes --------------------------------------------------------------------------
    def observe_time(self, learner: int, seconds: float) -> None:
        """One gradient of ``learner`` arrived after ``seconds`` of computing."""
        self._check_learner(learner)
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds < 0:
            raise ConfigError("compute time", seconds, "must be a finite number of seconds >= 0")
        times = self._times[learner]
        times.append(float(seconds))
        if len(times) > self.memory:
            del times[0]
        if not self.warm and self._all_timed():
            self._end_warmup()

    def observe_update(self, loss: Optional[float]) -> None:
        """An update was applied; ``loss`` is the mean training loss of its gradients (None or
        NaN: not known, the update counts for the warm-up only)."""
        self.updates += 1
        if not self.warm and self.updates >= self.warmup_updates:
            self._end_warmup()
        if loss is None or not math.isfinite(loss):
            return
        self._window_sum += float(loss)
        self._window_updates += 1
        if self._window_updates >= self.window:
            mean = self._window_sum / self._window_updates
            self._window_sum, self._window_updates = 0.0, 0
            improved = self._best is None or self._best - mean >= self.threshold * abs(self._best)
            self._stalled = 0 if improved else self._stalled + 1
            self._best = mean if self._best is None else min(self._best, mean)
            if self._stalled >= self.patience and self.base * self.growth ** self.level < self.cap:
                self.level += 1
                self._stalled = 0
            if self.warm:
                self._rechoose_base()
            self._set_k()

    def retire(self, learner: int) -> None:
        """``learner`` left: it is not counted on again unless it rejoins."""
        self._check_learner(learner)
        self._retired.add(learner)
        if self.warm or self._all_timed():
            self._end_warmup()  # the speeds left favour another K
        else:
            self._set_k()

    def rejoin(self, learner: int) -> None:
        """Retired ``learner`` is back (a new process): counted on again, its old times kept."""
        self._check_learner(learner)
        if learner in self._retired:
            self._retired.discard(learner)
            if self.warm:
                self._rechoose_base()
            self._set_k()

    def _all_timed(self) -> bool:
        return all(len(self._times[i]) >= self.min_samples for i in range(self.learners) if i not in self._retired)

    def _end_warmup(self) -> None:
        self.warm = True
        self.base = self.favoured_k()
        self._set_k()

    def _rechoose_base(self) -> None:
        favoured = self.favoured_k()
        if favoured != self.base and self.cost(favoured) * (1.0 + self.switch_gain) < self.cost(self.base):
            self.base = favoured

    def _set_k(self) -> None:
        k = max(1, min(self.cap, self.base * self.growth ** self.level))
        if k != self._k:
            self._k = k
            self.changes.append((self.updates, k))

    def _check_learner(self, learner: int) -> None:
        if isinstance(learner, bool) or not isinstance(learner, int) or not 0 <= learner < self.learners:
            raise ValueError(f"learner {learner!r} does not exist (learners 0..{self.learners - 1})")

    # -- state -------------------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """The rule's settings (what a saved state must match)."""
        return {"variant": self.variant, "learners": self.learners, "noise": self.noise, "window": self.window,
                "threshold": self.threshold, "patience": self.patience, "growth": self.growth, "batch_cap": self.batch_cap,
                "memory": self.memory, "min_samples": self.min_samples, "switch_gain": self.switch_gain,
                "warmup_updates": self.warmup_updates}

    def state_dict(self) -> dict[str, Any]:
        """Everything its next choices depend on (plain python data)."""
        return {
            "version": STATE_VERSION,
            "settings": self.settings(),
            "times": [list(times) for times in self._times],
            "retired": sorted(self._retired),
            "updates": self.updates,
            "warm": self.warm,
            "base": self.base,
            "level": self.level,
            "k": self._k,
            "window_sum": self._window_sum,
            "window_updates": self._window_updates,
            "best": self._best,
            "stalled": self._stalled,
            "changes": [list(change) for change in self.changes],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where :meth:`state_dict` was taken (same settings)."""
        if state.get("settings") != self.settings():
            raise ValueError(f"the adaptive K state was saved for {state.get('settings')}, not {self.settings()}")
        self._times = [[float(t) for t in times] for times in state["times"]]
        self._retired = {int(l) for l in state["retired"]}
        self.updates = int(state["updates"])
        self.warm = bool(state["warm"])
        self.base = int(state["base"])
        self.level = int(state["level"])
        self._k = int(state["k"])
        self._window_sum = float(state["window_sum"])
        self._window_updates = int(state["window_updates"])
        self._best = None if state["best"] is None else float(state["best"])
        self._stalled = int(state["stalled"])
        self.changes = [(int(u), int(k)) for u, k in state["changes"]]


def _non_negative(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ConfigError(key, value, "must be a finite number >= 0")
    return float(value)

