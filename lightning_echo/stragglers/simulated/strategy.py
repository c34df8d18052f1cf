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
from lightning_echo.combinations import find_data_echoing
from lightning_echo.core.adaptive_k import AdaptiveK
from lightning_echo.core.delays import ComputeTimes, DelayDistribution
from lightning_echo.core.learner_data import LearnerDataStreams, LearnerEcho
from lightning_echo.core.progress import SIMULATED, ProgressLedger, StepReport
from lightning_echo.core.schedule import ScheduleSimulation
from lightning_echo.errors import ConfigError
from lightning_echo.lightning_namespace import pl
from lightning_echo.metric_names import LearnerData, Stale
from lightning_echo.stragglers.base import StragglerStrategy, examples_in
from lightning_echo.stragglers.optim import in_optimizer_order
from lightning_echo.stragglers.settings import StragglerSettings
from lightning_echo.stragglers.simulated.loader import LearnerCounts, SnapshotStore, UpdateBundle, UpdateLoader
from lightning_echo.validation import positive_int

SingleDeviceStrategy, StrategyRegistry = pl.strategies.SingleDeviceStrategy, pl.strategies.StrategyRegistry

STRATEGY_NAME = "simulated_learners"


class SimulatedLearnersStrategy(StragglerStrategy, SingleDeviceStrategy):
    """Train any LightningModule as ``learners`` simulated workers and a parameter server would.

    Args:
        settings: a :class:`~lightning_echo.stragglers.StragglerSettings`, or the variant's name
            with the other settings as keywords (``k``, ``delay``, ``lr_rule``, ``c``,
            ``rule_learners``, ``smoothness``, ``drop``, ``max_delay``, ``stop_stale``, ``momentum_correction``, ``seed``;
            see there). An unset ``delay`` is exponential with mean 1.
        learners: P, the number of simulated learners.
        device: the Trainer's one device.
        adaptive_k: with ``k="auto"``, an :class:`~lightning_echo.core.adaptive_k.AdaptiveK` of
            your own constants (None: the defaults'); the run's rule is :attr:`adaptive`.

    With a ``DataEchoing`` callback (batch echoing) and/or ``data_delay``, each learner also has its
    own loader (:mod:`lightning_echo.core.learner_data`): it waits for its next fresh batch, or
    echoes its current one, and the server treats echoed gradients like any other; its held
    mini-batches are saved with the loader's state. An epoch is then one pass over the mini-batches
    the updates draw, whose number of updates is not known in advance when learners echo (set
    ``max_steps``). Logged with them: ``stale/echoed_gradients``, ``stale/data_wait_s`` and each
    learner's fresh samples, echoed gradients and data wait.

    With ``k="auto"`` (:class:`~lightning_echo.core.adaptive_k.AdaptiveK`) the K of each update is
    chosen just before it is planned, from the simulated compute times of the gradients that
    arrived so far and the training losses of the updates up to two before (see
    :mod:`~lightning_echo.stragglers.simulated.loader`); the rule's state is saved with the loader's,
    so a resumed run plans the same updates. An epoch's number of updates is then not known in
    advance: ``estimated_stepping_batches`` is ``max_steps``, and a run only epochs would end is refused.

    Every server update is one Lightning optimizer step: ``global_step`` and ``max_steps`` count
    updates, schedulers step once per update. Logged (``stale/*``) per update: the staleness of
    the gradients used, the step-size factor and lr applied, gradients discarded and computations
    cancelled, the compute time they wasted and learner utilisation, all counted over the whole
    run (a resumed run continues them); the run's clock is simulated (``time/simulated_s``, shown
    in the progress bar as ``sim_s``).

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
    owner_name = "simulated learners"

    def __init__(
        self,
        settings: Union[StragglerSettings, str, None] = None,
        learners: int = 8,
        device: Union[str, torch.device] = "cpu",
        *,
        accelerator: Any = None,
        checkpoint_io: Any = None,
        precision_plugin: Any = None,
        adaptive_k: Optional[AdaptiveK] = None,
        **setting_fields: Any,
    ) -> None:
        self._init_stragglers(settings, setting_fields, adaptive_k)
        super().__init__(device=device, accelerator=accelerator, checkpoint_io=checkpoint_io,
                         precision_plugin=precision_plugin)
        self.learners = positive_int("stale.learners", learners)
        self._resolve(self.learners)
        compute_times = self.settings.compute_times
        self.compute_times = compute_times if compute_times is not None else ComputeTimes(DelayDistribution("exponential"))
        self.adaptive = self._new_adaptive_k(self.learners)
        self.store = SnapshotStore()
        self.counts = LearnerCounts.zeros(self.learners)
        self.echo: Optional[LearnerEcho] = None
        self.clock_s = 0.0
        self._loader: Optional[UpdateLoader] = None
        self._bundle: Optional[UpdateBundle] = None
        self._pending_grads: Optional[list[Optional[torch.Tensor]]] = None
        self._params: list[torch.nn.Parameter] = []

    # -- setup --------------------------------------------------------------------------------------
    def check_trainer(self, trainer: pl.Trainer) -> None:
        devices = lightning_internals.requested_devices(trainer) * trainer.num_nodes
        if devices > 1:
            raise ConfigError("trainer.devices", devices, "simulated learners run on one device (the learners are simulated); use devices=1")
        super().check_trainer(trainer)
        echoing = find_data_echoing(trainer)
        if echoing is not None:
            if echoing.kind != "batch":
                raise ConfigError("echo.kind", echoing.kind, "simulated learners echo whole batches: use kind=batch")
            if echoing.placement != "after_augmentation":
                raise ConfigError("echo.placement", echoing.placement, "simulated learners echo the batch they hold: "
                                  "use placement=after_augmentation")

    @override
    def setup(self, trainer: pl.Trainer) -> None:
        self.check_trainer(trainer)
        echoing = find_data_echoing(trainer)
        self.echo = None if echoing is None else LearnerEcho(echoing.factor, echoing.max_factor, echoing.seed)
        if trainer.training:
            # Before configure_optimizers: `estimated_stepping_batches` must count server updates.
            self._undo.append(lightning_internals.wrap_train_source(trainer, self._update_loader))
        super().setup(trainer)

    def _update_loader(self, loader: Any) -> UpdateLoader:
        self._check_train_loader(loader)
        if self._loader is None:
            assert self.spec is not None
            simulation = ScheduleSimulation(self.spec, self.compute_times, seed=self.settings.seed,
                                            data=self._data_streams())
        else:  # a reloaded train loader continues the same simulation
            simulation = self._loader.simulation
        self._loader = UpdateLoader(loader, simulation, self.store, self.counts, adaptive=self.adaptive)
        return self._loader

    def _data_streams(self) -> Optional[LearnerDataStreams]:
        """Each learner's data stream, when it echoes (``DataEchoing``) or waits for data (``data_delay``)."""
        times = self.settings.data_times
        if times is None and self.echo is None:
            return None
        source = times.source(self.compute_times, self.learners) if times is not None else None
        return LearnerDataStreams(self.learners, source, self.echo, prefetch=times.prefetch if times else 2,
                                  seed=self.settings.seed)

    @override
    def teardown(self) -> None:
        self._undo_all()
        self._pending_grads = None
        self._bundle = None
        self._step_report = None
        super().teardown()

    def progress_bar(self, ledger: ProgressLedger) -> Dict[str, float]:
        return {"sim_s": round(self.clock_s, 2)}

    def data_echoing_role(self) -> str:
        """Where a ``DataEchoing`` callback echoes (``lightning_echo.combinations.echo_role``): on the
        simulated learners, inside the schedule (each learner echoes its own current mini-batch)."""
        return "simulated"

    # -- one server update ---------------------------------------------------------------------------
    @override
    def batch_to_device(self, batch: Any, device: Optional[torch.device] = None, dataloader_idx: int = 0) -> Any:
        if isinstance(batch, UpdateBundle):  # the user's transfer hooks see each mini-batch as usual
            moved = [super(SimulatedLearnersStrategy, self).batch_to_device(b, device, dataloader_idx) for b in batch.batches]
            return UpdateBundle(batch.plan, moved, batch.drawn)
        return super().batch_to_device(batch, device, dataloader_idx)

    @override
    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        if not args or not isinstance(args[0], UpdateBundle):
            return super().training_step(*args, **kwargs)
        bundle: UpdateBundle = args[0]
        self._bundle = bundle
        assert bundle.drawn is not None
        sizes = [examples_in(b) for b in bundle.batches]
        fresh = sum(size for size, drawn in zip(sizes, bundle.drawn) if drawn)
        self._step_report = StepReport(samples=sum(sizes), fresh_samples=fresh, fresh_batches=sum(bundle.drawn),
                                       clock_s=bundle.plan.time)
        self.counts.add(bundle, sizes)
        plan = bundle.plan
        module = self.lightning_module
        assert module is not None
        params = [p for p in module.parameters() if p.requires_grad]
        losses = []
        live = [p.data for p in params]
        optimizer = self.server_optimizer
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
        assert self.rule is not None
        stale = None
        if self.rule.needs_distance:  # the parameters each gradient was computed at, paired as the optimizer lists them
            order = [p for group in optimizer.param_groups for p in group["params"]]
            read = [self.store.get(g.read_version) if g.read_version != plan.version else live for g in plan.gradients]
            stale = [in_optimizer_order(order, params, values) for values in read]
        optimizer.tell([g.staleness for g in plan.gradients], stale_params=stale)
        self.store.release_all_but(plan.held_versions)  # versions nobody reads after this update
        if plan.version in plan.held_versions:
            self.store.keep(plan.version, params)  # a running learner still reads the version this update overwrites
        mean = None if not losses else losses[0] if len(losses) == 1 else torch.stack(losses).mean()
        if self._loader is not None and self._loader.adaptive is not None:
            self._loader.record_loss(plan.version, float("nan") if mean is None else float(mean))
        return mean

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
            self._after_update(bundle)
        return result

    def _after_update(self, bundle: UpdateBundle) -> None:
        plan = bundle.plan
        self.store.release_all_but(plan.held_versions)
        self.clock_s = plan.time
        totals = plan.totals  # the simulation's, up to this update: continuous across a resume
        extra = {
            Stale.WASTED_TIME: float(totals.wasted_time),
            Stale.UTILISATION: totals.busy_time / (self.learners * plan.time) if plan.time > 0 else 0.0,
            Stale.SNAPSHOTS: float(len(self.store.snapshots)),
        }
        if self._loader is not None and self._loader.simulation.data is not None:
            extra.update(learner_data_metrics(self.counts, totals.data_wait_per_learner))
        self._record_update([g.staleness for g in plan.gradients], totals.gradients_discarded,
                            totals.computations_cancelled, extra)

    # -- registry ------------------------------------------------------------------------------------
    @classmethod
    @override
    def register_strategies(cls, strategy_registry: Any) -> None:
        strategy_registry.register(STRATEGY_NAME, cls, description="simulated learners and a parameter server")


SimulatedLearnersStrategy.register_strategies(StrategyRegistry)


def learner_data_metrics(counts: LearnerCounts, waits: tuple[float, ...]) -> Dict[str, float]:
    """The ``LearnerData`` metrics: cluster totals and each learner's fresh samples, echoed
    gradients and data wait."""
    metrics = {LearnerData.ECHOED_GRADIENTS: float(sum(counts.echoed_gradients)),
               LearnerData.DATA_WAIT_S: float(sum(waits))}
    for learner, (fresh, echoed) in enumerate(zip(counts.fresh_samples, counts.echoed_gradients)):
        metrics[LearnerData.LEARNER_FRESH_SAMPLES.format(learner=learner)] = float(fresh)
        metrics[LearnerData.LEARNER_ECHOED_GRADIENTS.format(learner=learner)] = float(echoed)
        metrics[LearnerData.LEARNER_DATA_WAIT_S.format(learner=learner)] = float(waits[learner]) if waits else 0.0
    return metrics
