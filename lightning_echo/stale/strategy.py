"""``SimulatedLearnersStrategy``: K-sync ... K-batch-async, Rennala and Ringmaster SGD on simulated
learners, for any LightningModule, on the Trainer's one device and a virtual clock.

Each mini-batch the train loader yields is one learner's mini-batch. The schedule
(:mod:`lightning_echo.core.schedule`) decides which learner computes at which parameter version,
when the parameter server updates, and which work is cancelled or discarded; the strategy
computes each gradient the schedule uses at the exact stale parameters its learner read, averages
the update's gradients and takes one step of the user's own optimizer (scheduler, gradient
clipping and precision as usual), scaled by a staleness-aware step-size rule.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Union

import torch
from typing_extensions import override

from lightning_echo import lightning_internals
from lightning_echo.core.delays import ComputeTimeSource
from lightning_echo.core.progress import SIMULATED, ProgressLedger, ProgressSource, StepReport
from lightning_echo.core.schedule import ScheduleSimulation, VariantSpec, variant_spec
from lightning_echo.core.step_sizes import StepSizeRule
from lightning_echo.errors import ConfigError
from lightning_echo.lightning_namespace import import_lightning, pl, warn_if_other_lightning_imported
from lightning_echo.stale.delay_config import compute_times_from_config
from lightning_echo.stale.labels import resolve_k
from lightning_echo.stale.loader import SnapshotStore, UpdateBundle, UpdateLoader
from lightning_echo.stale.optim import StalenessAwareOptimizer
from lightning_echo.validation import non_negative_int

SingleDeviceStrategy, StrategyRegistry = pl.strategies.SingleDeviceStrategy, pl.strategies.StrategyRegistry
extract_batch_size = import_lightning("utilities.data").extract_batch_size

STRATEGY_NAME = "simulated_learners"


class SimulatedLearnersStrategy(SingleDeviceStrategy):
    """Train any LightningModule as ``learners`` simulated workers and a parameter server would.

    Args:
        variant: ``sync``, ``k_sync``, ``k_batch_sync``, ``async``, ``k_async``, ``k_batch_async``,
            ``rennala`` or ``ringmaster`` (Dutta et al. 2018; Tyurin and Richtarik 2023;
            Maranjyan et al. 2025).
        learners: P, the number of simulated learners.
        k: gradients per server update (K, or Rennala's B); fixed by ``sync``, ``async`` and
            ``ringmaster``; None gives half the learners.
        delay: the learners' compute times: a mapping as in the ``stale.delay`` config
            (``{"distribution": "exponential", "scale": 1.0, "speeds": [...]}`` or
            ``{"trace": "times.csv"}``), or a :class:`~lightning_echo.core.delays.ComputeTimeSource`.
        lr_rule: step-size rule: ``constant``, ``dutta`` (needs ``c``), ``mishchenko``
            (``learners`` defaults to P), ``koloskova`` (``smoothness``, or ``drop``).
        max_delay: Ringmaster's threshold R (None: no threshold); ``stop_stale`` stops running
            computations that reach it.
        seed: seeds the compute times.

    Every server update is one Lightning optimizer step: ``global_step`` and ``max_steps`` count
    updates, schedulers step once per update. Logged (``stale/*``) per update: the staleness of
    the gradients used, the step-size factor and lr applied, gradients discarded and computations
    cancelled, learner utilisation; the run's clock is simulated (``time/simulated_s``, shown in
    the progress bar as ``sim_s``).

    Example::

        from pytorch_lightning.demos.boring_classes import BoringModel

        strategy = SimulatedLearnersStrategy("k_async", learners=4, k=2, delay={"distribution": "exponential"})
        trainer = pl.Trainer(strategy=strategy, max_steps=5, logger=False, enable_progress_bar=False,
                             enable_checkpointing=False, enable_model_summary=False)
        trainer.fit(BoringModel())
        assert trainer.global_step == 5 and strategy.clock_s > 0
    """

    strategy_name = STRATEGY_NAME
    clock = SIMULATED
    enforces_budget = False

    def __init__(
        self,
        variant: str = "async",
        learners: int = 8,
        k: Optional[int] = None,
        delay: Union[Mapping[str, Any], ComputeTimeSource, None] = None,
        lr_rule: str = "constant",
        c: Optional[float] = None,
        rule_learners: Optional[int] = None,
        smoothness: Optional[float] = None,
        drop: bool = False,
        max_delay: Optional[int] = None,
        stop_stale: bool = False,
        seed: int = 0,
        device: Union[str, torch.device] = "cpu",
        **kwargs: Any,
    ) -> None:
        warn_if_other_lightning_imported(self)
        super().__init__(device=device, **kwargs)
        # Settings of other variants are ignored, so one config can sweep every variant.
        ringmaster = variant == "ringmaster"
        self.spec: VariantSpec = variant_spec(variant, learners, resolve_k(variant, learners, k),
                                              max_delay if ringmaster else None, stop_stale if ringmaster else False)
        self.compute_times = delay if isinstance(delay, ComputeTimeSource) else compute_times_from_config(delay or {})
        self.compute_times.check_learners(self.spec.learners)
        self.rule = StepSizeRule(lr_rule, c=c, learners=rule_learners if rule_learners is not None else learners,
                                 smoothness=smoothness, drop=drop)
        self.seed = non_negative_int("stale.seed", seed)
        self.store = SnapshotStore()
        self.clock_s = 0.0
        self._loader: Optional[UpdateLoader] = None
        self._bundle: Optional[UpdateBundle] = None
        self._pending_grads: Optional[list[Optional[torch.Tensor]]] = None
        self._params: list[torch.nn.Parameter] = []
        self._undo: list[Callable[[], None]] = []
        self._metrics: Dict[str, float] = {}
        self._totals = {"discarded": 0, "cancelled": 0, "wasted_time": 0.0, "busy_time": 0.0, "gradients": 0}

    # -- setup --------------------------------------------------------------------------------------
    @override
    def setup(self, trainer: pl.Trainer) -> None:
        devices = lightning_internals.requested_devices(trainer) * trainer.num_nodes
        if devices > 1:
            raise ConfigError("trainer.devices", devices, "simulated learners run on one device (the learners are simulated); use devices=1")
        if trainer.accumulate_grad_batches != 1:
            raise ConfigError("trainer.accumulate_grad_batches", trainer.accumulate_grad_batches,
                              "must be 1 with simulated learners: each server update already averages K gradients")
        other = next((c for c in trainer.callbacks if isinstance(c, ProgressSource)), None)
        if other is not None:  # e.g. DataEchoing: it would serve one mini-batch to several learners
            raise ConfigError("callbacks", type(other).__name__,
                              "cannot be combined with simulated learners (each mini-batch is one learner's)")
        super().setup(trainer)
        if trainer.training:
            self._undo.append(lightning_internals.wrap_train_source(trainer, self._update_loader))

    @override
    def setup_optimizers(self, trainer: pl.Trainer) -> None:
        super().setup_optimizers(trainer)
        if trainer.training and len(self.optimizers) != 1:
            raise ConfigError("configure_optimizers", f"{len(self.optimizers)} optimizers",
                              "simulated learners need exactly one optimizer (the parameter server's)")
        self.optimizers = [o if isinstance(o, StalenessAwareOptimizer) else StalenessAwareOptimizer(o, self.rule)
                           for o in self.optimizers]

    def _update_loader(self, loader: Any) -> UpdateLoader:
        if isinstance(loader, (list, tuple, dict)) or type(loader).__name__ == "CombinedLoader":
            raise ConfigError("train_dataloaders", type(loader).__name__, "simulated learners take a single train loader")
        if self._loader is None:
            simulation = ScheduleSimulation(self.spec, self.compute_times, seed=self.seed)
            self._loader = UpdateLoader(loader, simulation, self.store)
        else:  # a reloaded train loader continues the same simulation
            self._loader = UpdateLoader(loader, self._loader.simulation, self.store)
        return self._loader

    @override
    def teardown(self) -> None:
        while self._undo:
            self._undo.pop()()
        self._pending_grads = None
        self._bundle = None
        super().teardown()

    # -- the progress source (lightning_echo.core.progress.ProgressSource) ------------------------------
    def step_report(self) -> Optional[StepReport]:
        """What the update being trained consumed: one fresh mini-batch per gradient used."""
        bundle = self._bundle
        if bundle is None:
            return None
        samples = sum(_batch_size(b) for b in bundle.batches)
        return StepReport(samples=samples, fresh_samples=samples, fresh_batches=len(bundle.batches), clock_s=bundle.plan.time)

    def progress_metrics(self, ledger: ProgressLedger) -> Dict[str, float]:
        return dict(self._metrics)

    def progress_bar(self, ledger: ProgressLedger) -> Dict[str, float]:
        return {"sim_s": round(self.clock_s, 2)}

    # -- one server update ---------------------------------------------------------------------------
    @override
    def batch_to_device(self, batch: Any, device: Optional[torch.device] = None, dataloader_idx: int = 0) -> Any:
        if isinstance(batch, UpdateBundle):  # the user's transfer hooks see each mini-batch as usual
            moved = [super(SimulatedLearnersStrategy, self).batch_to_device(b, device, dataloader_idx) for b in batch.batches]
            return UpdateBundle(batch.plan, moved)
        return super().batch_to_device(batch, device, dataloader_idx)

    @override
    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        if not args or not isinstance(args[0], UpdateBundle):
            return super().training_step(*args, **kwargs)
        bundle: UpdateBundle = args[0]
        self._bundle = bundle
        plan = bundle.plan
        module = self.lightning_module
        assert module is not None
        params = [p for p in module.parameters() if p.requires_grad]
        losses = []
        live = [p.data for p in params]
        optimizer = self.optimizers[0]
        for p in params:  # Lightning zeroes gradients only after training_step: the last update's are still here
            p.grad = None
        try:
            # Autograd sums the K gradients in .grad; only the parameter tensors are swapped, nothing is copied.
            for gradient, batch in zip(plan.gradients, bundle.batches):
                if gradient.read_version != plan.version:
                    for p, value in zip(params, self.store.get(gradient.read_version)):
                        p.data = value
                output = super().training_step(batch, *args[1:], **kwargs)
                loss = output["loss"] if isinstance(output, Mapping) else output
                if loss is not None:
                    super().backward(loss, optimizer)
                    losses.append(loss.detach())
                for p, value in zip(params, live):
                    p.data = value
        finally:
            for p, value in zip(params, live):
                p.data = value
        count = len(plan.gradients)
        # Moved out of .grad (Lightning zeroes it before calling backward), averaged in place.
        self._pending_grads = [p.grad if p.grad is None or count == 1 else p.grad.div_(count) for p in params]
        for p in params:
            p.grad = None
        self._params = params
        stale = [self.store.get(g.read_version) if g.read_version != plan.version else live for g in plan.gradients]
        optimizer.tell([g.staleness for g in plan.gradients], stale_params=stale if self.rule.needs_distance else None)
        self.store.release_all_but(plan.held_versions)  # versions nobody reads after this update
        if plan.version in plan.held_versions:
            self.store.keep(plan.version, params)  # a running learner still reads the version this update overwrites
        if not losses:
            return None
        return losses[0] if len(losses) == 1 else torch.stack(losses).mean()

    @override
    def backward(self, closure_loss: torch.Tensor, optimizer: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self._pending_grads is None:
            return super().backward(closure_loss, optimizer, *args, **kwargs)
        for p, grad in zip(self._params, self._pending_grads):
            p.grad = grad
        self._pending_grads = None
        return closure_loss

    @override
    def optimizer_step(self, optimizer: Any, closure: Callable[[], Any], model: Any = None, **kwargs: Any) -> Any:
        result = super().optimizer_step(optimizer, closure, model, **kwargs)
        bundle = self._bundle
        if bundle is not None:
            self._after_update(bundle, optimizer)
        return result

    def _after_update(self, bundle: UpdateBundle, optimizer: Any) -> None:
        plan = bundle.plan
        self.store.release_all_but(plan.held_versions)
        self.clock_s = plan.time
        totals = self._totals
        totals["discarded"] += len(plan.discarded)
        totals["cancelled"] += plan.cancelled
        totals["wasted_time"] += plan.wasted_time
        totals["busy_time"] += plan.busy_time
        totals["gradients"] += len(plan.gradients)
        staleness = [g.staleness for g in plan.gradients]
        inner = getattr(optimizer, "_optimizer", optimizer)
        self._metrics = {
            "stale/staleness_mean": sum(staleness) / len(staleness),
            "stale/staleness_max": float(max(staleness)),
            "stale/step_factor": float(getattr(inner, "last_factor", 1.0)),
            "stale/lr": float(getattr(inner, "last_lr", inner.param_groups[0]["lr"])),
            "stale/discarded": float(totals["discarded"]),
            "stale/cancelled": float(totals["cancelled"]),
            "stale/wasted_time": float(totals["wasted_time"]),
            "stale/utilisation": totals["busy_time"] / (self.spec.learners * plan.time) if plan.time > 0 else 0.0,
            "stale/snapshots": float(len(self.store.snapshots)),
        }

    # -- registry ------------------------------------------------------------------------------------
    @classmethod
    @override
    def register_strategies(cls, strategy_registry: StrategyRegistry) -> None:
        strategy_registry.register(STRATEGY_NAME, cls, description="simulated learners and a parameter server")


def _batch_size(batch: Any) -> int:
    return int(extract_batch_size(batch))


SimulatedLearnersStrategy.register_strategies(StrategyRegistry)
