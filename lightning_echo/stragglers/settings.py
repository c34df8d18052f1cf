"""What both straggler backends share, as one frozen, validated value: the variant and its K, the
learners' compute times, the staleness-aware step-size rule and the seed.

A :class:`StragglerSettings` knows nothing of how many learners there are: a backend resolves it
against its ``P`` (the simulated learners it is told of, or the learner processes of its world)
into a :class:`ResolvedStragglers`, what the schedule core and the optimizer wrapper take.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Optional, Union, get_args

from lightning_echo.core.adaptive_k import AUTO, AdaptiveK, check_adaptive_variant, initial_k
from lightning_echo.core.delays import ComputeTimeSource
from lightning_echo.core.learner_data import DataTimes, data_times_from_config
from lightning_echo.core.momentum import MOMENTUM_CORRECTIONS, MomentumCorrection, implicit_momentum
from lightning_echo.core.schedule import STALE_VARIANTS, VARIANTS, Variant, VariantSpec, default_k, variant_spec
from lightning_echo.core.step_sizes import RuleName, StepSizeRule
from lightning_echo.errors import ConfigError
from lightning_echo.stragglers.delay_config import compute_times_from_config
from lightning_echo.validation import boolean, non_negative_int, one_of, positive_int

Backend = Literal["simulated", "processes"]
BACKENDS: tuple[Backend, ...] = get_args(Backend)
DelaySetting = Union[Mapping[str, Any], ComputeTimeSource, None]
DataDelaySetting = Union[Mapping[str, Any], DataTimes, None]
KSetting = Union[int, Literal["auto"], None]
# A cap on P, so that one mistyped number (stale.learners=100000000) is refused in one line
# instead of filling memory with per-learner state.
MAX_LEARNERS = 100_000


@dataclass(frozen=True)
class ResolvedStragglers:
    """The settings resolved against ``P`` learners: the schedule's variant, the step-size rule,
    and what to subtract from the optimizer's momentum (0 unless ``momentum_correction`` says so)."""

    spec: VariantSpec
    rule: StepSizeRule
    momentum_offset: float = 0.0


@dataclass(frozen=True)
class StragglerSettings:
    """One straggler-tolerant SGD configuration, whatever runs it.

    Args:
        variant: ``sync``, ``k_sync``, ``k_batch_sync``, ``async``, ``k_async``, ``k_batch_async``,
            ``rennala`` or ``ringmaster`` (Dutta et al. 2018; Tyurin and Richtarik 2023;
            Maranjyan et al. 2025).
        k: gradients per server update (K, or Rennala's B); fixed by ``sync`` (P), ``async`` and
            ``ringmaster`` (1); None gives half the learners; ``"auto"`` chooses it while training,
            from the learners' observed compute times and the training loss
            (:class:`~lightning_echo.core.adaptive_k.AdaptiveK`; not for sync, async, ringmaster).
        delay: the learners' compute times: a mapping as the ``stale.delay`` config
            (``{"distribution": "exponential", "scale": 1.0, "speeds": [...]}`` or
            ``{"trace": "times.csv"}``) or a :class:`~lightning_echo.core.delays.ComputeTimeSource`;
            None: the backend's default (simulated: exponential with mean 1; processes: none
            injected, the processes' own speed).
        lr_rule: step-size rule: ``constant``, ``dutta`` (needs ``c``), ``mishchenko`` or
            ``koloskova`` (``rule_learners`` M, default P; koloskova needs ``smoothness`` or ``drop``).
        max_delay: Ringmaster's threshold R (None: no threshold); ``stop_stale`` stops running
            computations that reach it. Both are ignored by the other variants (checked all the
            same), so one config can sweep every variant.
        momentum_correction: ``none`` (the optimizer's momentum as configured) or ``implicit``:
            under a variant whose gradients may be stale, lower the optimizer's ``momentum`` by
            the momentum asynchrony itself adds, ``1 - K/P`` (Mitliagkas et al. 2016; see
            :mod:`lightning_echo.core.momentum`).
        data_delay: each simulated learner's own loader: a
            :class:`~lightning_echo.core.learner_data.DataTimes` or a mapping like the ``loader``
            config (``{"slowdown": 4}``: 4x the learner's mean compute time per fresh batch;
            ``{"seconds_per_batch": 0.5, "jitter": "exponential", "speeds": [...]}``; ``{"trace": ...}``).
            None: data is always ready. Simulated learners only: on real processes each learner's
            own loader is what it is (throttle it with :func:`lightning_echo.data.pipeline.throttle`).
        seed: seeds the compute times (each learner draws from its own stream).

    Example::

        settings = StragglerSettings("k_async", k=2, lr_rule="mishchenko")
        resolved = settings.resolve(learners=8)
        assert resolved.spec.k == 2 and resolved.rule.learners == 8
        assert settings.label(8) == "k_async K=2 of P=8, mishchenko"
    """

    variant: Variant = "async"
    k: KSetting = None
    delay: DelaySetting = None
    lr_rule: RuleName = "constant"
    c: Optional[float] = None
    rule_learners: Optional[int] = None
    smoothness: Optional[float] = None
    drop: bool = False
    max_delay: Optional[int] = None
    stop_stale: bool = False
    momentum_correction: MomentumCorrection = "none"
    data_delay: DataDelaySetting = None
    seed: int = 0

    def __post_init__(self) -> None:
        one_of("stale.variant", self.variant, VARIANTS)
        if self.k == AUTO:
            check_adaptive_variant(self.variant)
        elif self.k is not None and (isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1):
            raise ConfigError("stale.k", self.k, "must be a positive integer, auto, or null")
        if self.max_delay is not None:
            positive_int("stale.max_delay", self.max_delay)
        boolean("stale.stop_stale", self.stop_stale)
        if self.variant != "ringmaster":  # another variant's settings, ignored
            object.__setattr__(self, "max_delay", None)
            object.__setattr__(self, "stop_stale", False)
        if self.delay is not None and not isinstance(self.delay, ComputeTimeSource):
            object.__setattr__(self, "delay", compute_times_from_config(self.delay))
        # Checked now; M = 1 stands in for an unset M until P is known.
        self._rule(1 if self.rule_learners is None else self.rule_learners)
        one_of("stale.momentum_correction", self.momentum_correction, MOMENTUM_CORRECTIONS)
        if self.adaptive and self.momentum_correction == "implicit" and self.variant in STALE_VARIANTS:
            raise ConfigError("stale.momentum_correction", "implicit", "subtracts 1 - K/P for a fixed K; with "
                              "stale.k=auto K changes while training: use none, or a fixed stale.k")
        try:
            object.__setattr__(self, "data_delay", data_times_from_config(self.data_delay))
        except ConfigError as error:
            raise error.with_prefix("data_delay.") from None
        non_negative_int("stale.seed", self.seed)

    @classmethod
    def build(cls, settings: Union["StragglerSettings", str, None] = None, **fields: Any) -> "StragglerSettings":
        """``settings`` as is, or the settings of the variant it names with ``fields``; an unknown
        field is refused in one line naming it."""
        if isinstance(settings, StragglerSettings):
            if fields:
                raise ConfigError("stale", ", ".join(sorted(fields)),
                                  "give either a StragglerSettings or the settings as keywords, not both")
            return settings
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ConfigError(f"stale.{unknown[0]}", fields[unknown[0]],
                              "is not a straggler setting; the settings are " + ", ".join(sorted(known)))
        return cls(**({"variant": settings} if settings is not None else {}), **fields)

    @property
    def adaptive(self) -> bool:
        """Whether K is chosen while training (``k="auto"``)."""
        return self.k == AUTO

    def adaptive_k(self, learners: int) -> Optional[AdaptiveK]:
        """A fresh :class:`~lightning_echo.core.adaptive_k.AdaptiveK` for ``learners`` (P) learners
        when ``k="auto"``, else None."""
        return AdaptiveK(self.variant, learners) if self.adaptive else None

    @property
    def compute_times(self) -> Optional[ComputeTimeSource]:
        """The learners' compute-time source (None: the backend's default)."""
        return self.delay if isinstance(self.delay, ComputeTimeSource) else None

    def _rule(self, learners: int) -> StepSizeRule:
        return StepSizeRule(self.lr_rule, c=self.c, smoothness=self.smoothness, drop=self.drop,
                            learners=self.rule_learners if self.rule_learners is not None else learners)

    def spec(self, learners: int) -> VariantSpec:
        """The schedule's variant for ``learners`` learners (K resolved; validated against P). With
        ``k="auto"``, K is the first updates' (:func:`~lightning_echo.core.adaptive_k.initial_k`)."""
        k = initial_k(self.variant, learners) if self.adaptive else default_k(self.variant, learners, self.k)  # type: ignore[arg-type]
        return variant_spec(self.variant, learners, k, self.max_delay, self.stop_stale)

    def resolve(self, learners: int) -> ResolvedStragglers:
        """Resolved against ``learners`` (P): K, the rule's M, the delay model's learner count."""
        check_learner_count(learners)
        spec = self.spec(learners)
        self.check_learners(learners)
        offset = 0.0
        if self.momentum_correction == "implicit" and spec.name in STALE_VARIANTS:
            offset = implicit_momentum(learners, spec.k)
        return ResolvedStragglers(spec, self._rule(learners), offset)

    @property
    def data_times(self) -> Optional[DataTimes]:
        """The simulated learners' data times (None: data is always ready)."""
        return self.data_delay if isinstance(self.data_delay, DataTimes) else None

    def check_learners(self, learners: int) -> None:
        """Refuse a delay model that does not fit ``learners`` (one slowdown per learner, a trace's learners)."""
        if self.data_times is not None:
            try:
                self.data_times.check_learners(learners)
            except ConfigError as error:
                raise error.with_prefix("data_delay.") from None
        if self.compute_times is not None:
            try:
                self.compute_times.check_learners(learners)
            except ConfigError as error:
                raise error.with_prefix("stale.delay.") from None

    def effective_k(self, learners: int) -> Union[int, str]:
        """The K every update of the variant averages (``sync``: P; ``async``, ``ringmaster``: 1;
        ``"auto"`` when it is chosen while training)."""
        return AUTO if self.adaptive else self.spec(learners).k

    def is_synchronous(self, learners: int) -> bool:
        """True for the fully synchronous case (every update waits for all P learners' gradients)."""
        if self.adaptive:
            return False
        spec = self.spec(learners)
        return spec.name in ("sync", "k_sync") and spec.k == learners

    def label(self, learners: int, backend: Backend = "simulated") -> str:
        """The report label: ``k_async K=2 of P=8``; the fully synchronous case reads ``sync P=8
        (simulated)`` on simulated learners; every run on real processes ends in ``(processes)``."""
        one_of("backend", backend, BACKENDS)
        spec = self.spec(learners)
        processes = backend == "processes"
        if self.is_synchronous(learners):
            label = f"sync P={spec.learners}" + ("" if processes else " (simulated)")
        elif spec.name in ("async", "ringmaster"):
            label = f"{spec.name} P={spec.learners}"
        elif spec.name == "rennala":
            label = f"rennala B={self.effective_k(learners)}, P={spec.learners}"
        else:
            label = f"{spec.name} K={self.effective_k(learners)} of P={spec.learners}"
        if spec.name == "ringmaster":
            label += f", R={spec.max_delay if spec.max_delay is not None else 'inf'}" + (" (stops)" if spec.stop_stale else "")
        return label + (f", {self.lr_rule}" if self.lr_rule != "constant" else "") + (" (processes)" if processes else "")


def check_learner_count(learners: Any) -> int:
    """Return ``learners`` (P) if it is a positive integer of at most :data:`MAX_LEARNERS`, else
    raise ConfigError (before anything allocates per-learner state)."""
    positive_int("stale.learners", learners)
    if learners > MAX_LEARNERS:
        raise ConfigError("stale.learners", learners, f"must be at most {MAX_LEARNERS} (the most learners one run may have)")
    return learners


def check_stale_settings(learners: int, **fields: Any) -> StragglerSettings:
    """Check a ``stale`` config block (``learners`` and the settings) for any algorithm: the
    command line refuses a bad ``stale.*`` value also when the chosen algorithm has no learners."""
    check_learner_count(learners)
    if isinstance(fields.get("delay"), Mapping):  # read knowing P: a trace's learner ids are checked against it
        fields["delay"] = compute_times_from_config(fields["delay"], learners)
    if fields.get("k") == AUTO:  # whether the variant takes auto is the algorithm's check (its variant is not known here)
        fields["k"] = None
    settings = StragglerSettings.build(None, **fields)
    settings.check_learners(learners)
    return settings
