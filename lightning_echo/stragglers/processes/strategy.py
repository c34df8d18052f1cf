"""``ParameterServerStrategy``: K-sync ... K-batch-async, Rennala and Ringmaster SGD for any
LightningModule on real processes: a parameter server (global rank 0) and P learners (ranks
1..P) on torch.distributed, launched as Lightning launches DDP.

Rank 0 runs no training step of the user's: each of its Lightning steps is one server update
(the averaged gradient becomes ``.grad``, the user's optimizer steps through Lightning, so
schedulers, gradient clipping and precision work as usual, then the new parameters go out).
Each learner's Lightning step takes the server's parameters, runs the user's ``training_step``
and backward, and pushes the gradient instead of stepping. Design note: ``README.md`` here.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Dict, Optional, Union

import torch
from torch.distributed.constants import default_pg_timeout
from typing_extensions import override

from lightning_echo import lightning_internals
from lightning_echo.callbacks.divergence import DivergenceGuard
from lightning_echo.callbacks.progress import training_progress
from lightning_echo.combinations import find_data_echoing
from lightning_echo.core.adaptive_k import AdaptiveK
from lightning_echo.core.echo_factor import steps_per_pass
from lightning_echo.core.progress import WALL_CLOCK, ProgressLedger, StepReport
from lightning_echo.data.nodes import set_data_shard
from lightning_echo.errors import ConfigError
from lightning_echo.lightning_namespace import import_lightning, pl
from lightning_echo.metric_names import ParameterServer, Stale
from lightning_echo.stragglers.base import StragglerStrategy, examples_in
from lightning_echo.stragglers.processes.exchange import FlatExchange
from lightning_echo.stragglers.processes.fresh import GradientData
from lightning_echo.stragglers.processes.learner import LearnerReport, learner_delays
from lightning_echo.stragglers.processes.local_metrics import keep_metric_syncs_local
from lightning_echo.stragglers.processes.logged import StepLogs
from lightning_echo.stragglers.processes.metrics import CarriedCounts, process_metrics
from lightning_echo.stragglers.processes.rendezvous import joins_late, launcher_restarts
from lightning_echo.stragglers.processes.roles import FaultPolicy, LearnerRole, ServerRole
from lightning_echo.stragglers.processes.server import ServerReport
from lightning_echo.stragglers.processes.slots import ServerStep, UpdateSlots, server_epoch_length
from lightning_echo.stragglers.processes.transport import (
    MAX_TIMEOUT_S,
    SERVER_RANK,
    Transport,
    check_timeout,
    connect,
    learner_index,
)
from lightning_echo.stragglers.settings import StragglerSettings
from lightning_echo.validation import boolean, non_negative_int, positive_int

DDPStrategy, StrategyRegistry = pl.strategies.DDPStrategy, pl.strategies.StrategyRegistry
ModelCheckpoint, EarlyStopping, Timer = pl.callbacks.ModelCheckpoint, pl.callbacks.EarlyStopping, pl.callbacks.Timer
# Ends of fit that are no failure of the run: the server stops its learners as at the end.
INTERRUPTIONS = (import_lightning("utilities.exceptions").SIGTERMException, KeyboardInterrupt)

STRATEGY_NAME = "parameter_server"
CHECKPOINT_KEY = "parameter_server"
ADAPTIVE_KEY = "adaptive_k"  # in checkpoint[CHECKPOINT_KEY]: the rule's state with stale.k=auto
# Callbacks that end or save a run: the server's business, removed from the learners' Trainers.
SERVER_ONLY_CALLBACKS = (ModelCheckpoint, EarlyStopping, Timer, DivergenceGuard)
# The Trainer's batch limit of each evaluation stage: set to 0 on learners (the server evaluates).
EVALUATION_LIMITS = {"validate": "limit_val_batches", "test": "limit_test_batches", "predict": "limit_predict_batches"}
LOG = logging.getLogger("lightning_echo.stragglers.processes")


class ParameterServerStrategy(StragglerStrategy, DDPStrategy):
    """Train any LightningModule with a parameter server (rank 0) and P learner processes.

    Launch it like DDP with one process more than learners: ``Trainer(devices=P + 1,
    accelerator="cpu", strategy=ParameterServerStrategy(...))`` (Lightning starts the other
    processes), or under torchrun / SLURM with ``devices x num_nodes = P + 1`` processes: the
    devices and nodes count the server too. Global rank 0 is the server, rank ``i + 1`` learner
    ``i``. The ``timeout`` must exceed the longest gradient computation (injected delay included)
    and any validation pass on the server.

    Args:
        settings: a :class:`~lightning_echo.stragglers.StragglerSettings`, or the variant's name
            with the other settings as keywords (``k``, ``delay``, ``lr_rule``, ``c``,
            ``rule_learners``, ``smoothness``, ``drop``, ``max_delay``, ``stop_stale``, ``momentum_correction``, ``seed``;
            see there). ``delay`` here is injected: each learner sleeps until its drawn compute
            time has passed (unset: none, the processes' real speed).
        learners: if given, checked against the world (``devices x num_nodes - 1``).
        timeout: seconds a started learner may take to deliver a gradient; learners give up on a
            silent server after twice that.
        inject_delays: whether learners sleep ``delay``'s compute times (None: when ``delay`` is set);
            False runs a config written for simulated learners at the processes' own speed.
        process_group_timeout: the default process group's timeout (DDP's ``timeout``).
        adaptive_k: with ``k="auto"``, the server's :class:`~lightning_echo.core.adaptive_k.AdaptiveK`
            with constants of your own (None: the defaults').
        shrink_k: when learners are lost, the variants whose update needs K distinct learners
            (sync, k_sync, async, k_async) average the K of those alive, and K grows back as
            learners rejoin (default); False: sync, k_sync and k_batch_sync stop at the first lost
            learner, async and k_async when fewer than K are left.
        min_learners: the run stops (:class:`~lightning_echo.stragglers.processes.ParameterServerError`,
            one line) when fewer learners are alive and none joins within ``rejoin_wait``.
        rejoin_wait: seconds the server waits for a learner to join when too few are left, and a
            learner waits for its server to come back (a restarted server) before it gives up
            (0: neither waits; None: ``max(timeout, 120 s)`` under a launcher that restarts lost processes,
            ``$LIGHTNING_ECHO_PS_RESTARTS=1`` as the command line sets it, else 0).

    What differs from DDP while ``fit`` runs:

    - ``global_step``, ``max_steps`` and ``estimated_stepping_batches`` count server updates
      (a one-cycle schedule sized by the run ends with it). Learners ignore their own
      ``max_steps``, ``max_epochs``, ``min_*``, ``max_time``, checkpoint and early-stopping
      callbacks, validation and lr schedulers: they compute gradients until the server's STOP.
    - The server's train loader is never read: it yields one placeholder per update
      (:class:`~lightning_echo.stragglers.processes.slots.UpdateSlots`, ``ceil(batches / K)`` per epoch;
      endless with ``stale.k=auto``, whose K the server chooses before each update from the
      gradients' arrival times and the updates' losses: end the run with ``max_steps``). Learner
      ``i`` reads shard ``i`` of ``P`` (the ``DistributedSampler`` Lightning adds); validation
      runs on the server, on the whole validation set.
    - ``setup`` hooks and ``configure_optimizers`` see ``world_size`` P, the learners' world (a
      DDP-style DataModule divides its batch by P). Lightning's loop in each process then sees a
      world of one (``world_size`` is 1): ``barrier`` is a no-op, ``reduce`` / ``all_gather`` /
      ``broadcast`` (``self.log(..., sync_dist=True)``, checkpoint and early-stopping decisions)
      return the process's own value, since the processes take different numbers of steps; the
      module's torchmetrics objects compute from their own process's state.
    - What a learner logs in ``training_step`` travels with its gradient; the server logs the mean
      over each update with the user's options (rank 0's loggers and callbacks see it).
    - A ``DataEchoing`` callback echoes on each learner's own loader: every echo is one more
      gradient pushed, computed at the parameters of its START. Each PUSH says whether its batch
      was fresh and how many fresh examples it brought, so the server counts the cluster's fresh
      data: ``progress/fresh_samples`` and the fresh-data budget (``TrainingProgress`` and
      ``DataEchoing``'s ``max_fresh_*`` on rank 0; the learners' echo stages enforce none) count
      fresh examples of the gradients used, not gradients. A server epoch spans about one echoed
      pass (``factor`` a number, batch echoing); with ``factor="auto"`` or example echoing it has
      no length: end the run with ``max_steps``, ``max_time`` or a budget.
    - ``validate``, ``test`` and ``predict`` (before or after ``fit``) run on the server alone,
      on all the data, with no collective (learners run no batch), so they also work after a
      learner was lost. Other collectives outside ``fit`` are DDP's.
    - Floating-point buffers of the parameters' dtype (BatchNorm's running statistics) travel with
      the parameters: each learner sends what its forward passes changed, the server adds the
      mean change of each update (:mod:`~lightning_echo.stragglers.processes.exchange`); integer buffers stay each
      process's own. 16-bit mixed precision with a gradient scaler, manual optimization,
      SyncBatchNorm and gradient accumulation are refused.
    - A fit that fails raises the user's own error where it happened and
      :class:`~lightning_echo.stragglers.processes.ParameterServerError` elsewhere, and every
      channel thread ends before ``fit`` returns.

    Checkpoints are written by rank 0: the module and optimizer are the server's, plus the
    server's version, policy state and counters (``checkpoint["parameter_server"]``; with
    ``stale.k=auto`` the adaptive K's state too, so K and its rule continue);
    ``fit(ckpt_path=...)`` resumes the server at that version and every learner starts from its
    START; the counters continue (the learners' fresh and echoed gradients, fresh samples and data
    wait included). Learners save no state: a resumed learner reads its shard from the start
    again, its echo stage included, rather than from where it was. Logged on rank 0 per update
    (through :class:`~lightning_echo.TrainingProgress`, added if missing): the ``stale/*``
    metrics both backends log and
    :func:`~lightning_echo.stragglers.processes.metrics.process_metrics` (what each learner's
    gradients were computed on among them); the time axis is wall-clock.

    A learner that dies or stops answering is lost (a warning, ``ps/lost_learners``,
    ``ps/live_learners``, an event in the report): every variant carries on with the learners
    left (``shrink_k``) while at least ``min_learners`` are alive. A learner process started
    later with ``LIGHTNING_ECHO_PS_JOIN=1`` and the server's address (``LIGHTNING_ECHO_PS_ADDRESS``
    or ``LIGHTNING_ECHO_PS_STORE``; the command line's ``ps.restart_learners`` does this) joins the
    running server and takes its place; a server started so, with the run's checkpoint, takes
    the old server's learners back (``ps.restart_server``). Without a restart the server dying
    ends every learner with that error after ``rejoin_wait``. Example (a script; Lightning
    re-runs it for ranks 1 and 2)::

        strategy = ParameterServerStrategy("k_async", k=1, delay={"distribution": "exponential", "scale": 0.01})
        trainer = pl.Trainer(devices=3, accelerator="cpu", strategy=strategy, max_steps=100)
        trainer.fit(model)
    """

    strategy_name = STRATEGY_NAME
    clock = WALL_CLOCK
    owner_name = "the parameter server"

    def __init__(
        self,
        settings: Union[StragglerSettings, str, None] = None,
        learners: Optional[int] = None,
        timeout: float = 60.0,
        inject_delays: Optional[bool] = None,
        *,
        accelerator: Any = None,
        parallel_devices: Optional[list[torch.device]] = None,
        cluster_environment: Any = None,
        checkpoint_io: Any = None,
        precision_plugin: Any = None,
        process_group_backend: Optional[str] = None,
        process_group_timeout: Any = default_pg_timeout,
        adaptive_k: Optional[AdaptiveK] = None,
        shrink_k: bool = True,
        min_learners: int = 1,
        rejoin_wait: Optional[float] = None,
        **setting_fields: Any,
    ) -> None:
        self._init_stragglers(settings, setting_fields, adaptive_k)
        super().__init__(
            accelerator=accelerator, parallel_devices=parallel_devices, cluster_environment=cluster_environment,
            checkpoint_io=checkpoint_io, precision_plugin=precision_plugin,
            process_group_backend=process_group_backend, timeout=process_group_timeout,
        )
        self.learners = None if learners is None else positive_int("stale.learners", learners)
        self.timeout = check_timeout(timeout)
        if rejoin_wait is None:  # wait for each other only where a launcher starts lost processes again
            rejoin_wait = max(self.timeout, RESTART_WAIT_S) if launcher_restarts() else 0.0
        self.faults = fault_policy(shrink_k, min_learners, rejoin_wait)
        self._late = joins_late()  # started after the first world formed: no default process group
        inject = self.settings.compute_times is not None if inject_delays is None else boolean("ps.inject_delays", inject_delays)
        self.injected_delays = self.settings.compute_times if inject else None
        self.server_report: Optional[ServerReport] = None  # rank 0, after fit
        self.learner_report: Optional[LearnerReport] = None  # learners, after fit
        self._role: Union[ServerRole, LearnerRole, None] = None
        self._evaluating = False
        self._fitting = False  # from the process group's creation for fit until teardown
        self._step_logs = StepLogs()
        self._trainer: Optional[pl.Trainer] = None
        self._loaded: Optional[Dict[str, Any]] = None  # the server state of the checkpoint being resumed
        self._state: Optional[Dict[str, Any]] = None  # the server state a checkpoint saves now
        self._carried = CarriedCounts()
        self._carried_events: list[dict[str, Any]] = []  # fault events of the run's earlier segments
        self._grads_due = False
        self._batch_samples = 0
        self._echo: Any = None  # a learner's DataEchoing callback: it says what each batch is
        self._data_wait_s = 0.0  # a learner's seconds between its steps (waiting for its loader) in this fit
        self._step_ended: Optional[float] = None  # when a learner's last step (or the fit's start) ended

    # -- processes and collectives --------------------------------------------------------------
    @override
    def _configure_launcher(self) -> None:
        lightning_internals.use_launcher_that_outlives_its_children(self, self.num_processes, self.num_nodes)

    @property
    @override
    def world_size(self) -> int:
        """P + 1 processes outside ``fit``; in ``fit``, P (the learners' world) while the module and
        its DataModule are set up and the optimizers configured, then 1 while the processes train,
        each in its own loop (also 1 in a server-only evaluation)."""
        if self._local:
            return 1
        return self._processes - 1 if self._fitting else super().world_size

    @property
    def _processes(self) -> int:
        """P + 1: every process of the world, the server's included."""
        return self.num_nodes * self.num_processes

    @property
    def _local(self) -> bool:
        """Whether each process runs on its own now (``fit``, a server-only evaluation, or always
        in a process that joined late: it has no default process group)."""
        return self._role is not None or self._evaluating or self._late

    @override
    def setup_distributed(self) -> None:
        if not self._late:
            super().setup_distributed()
            return
        # A restarted learner or server: the first world's group cannot take it back (gloo groups are
        # fixed at creation), so it has none; it finds the server through the store (connect()).
        self.set_world_ranks()

    @property
    @override
    def distributed_sampler_kwargs(self) -> Dict[str, Any]:
        if self._fitting and self.global_rank != SERVER_RANK:
            return {"num_replicas": self._processes - 1, "rank": learner_index(self.global_rank)}
        if self._fitting or self._evaluating:
            return {"num_replicas": 1, "rank": 0}  # the server validates on everything; it reads no train batch
        return super().distributed_sampler_kwargs

    @override
    def barrier(self, *args: Any, **kwargs: Any) -> None:
        if not self._local:
            super().barrier(*args, **kwargs)

    @override
    def broadcast(self, obj: Any, src: int = 0) -> Any:
        return obj if self._local else super().broadcast(obj, src)

    @override
    def reduce(self, tensor: Any, group: Optional[Any] = None, reduce_op: Optional[Any] = "mean") -> Any:
        return tensor if self._local else super().reduce(tensor, group=group, reduce_op=reduce_op)

    @override
    def all_gather(self, tensor: torch.Tensor, group: Optional[Any] = None, sync_grads: bool = False) -> torch.Tensor:
        return tensor if self._local else super().all_gather(tensor, group=group, sync_grads=sync_grads)

    @override
    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        return decision if self._local else super().reduce_boolean_decision(decision, all=all)

    @override
    def configure_ddp(self) -> None:
        """No DistributedDataParallel wrapper: gradients travel through the parameter server."""

    # -- setup ----------------------------------------------------------------------------------
    @override
    def setup_environment(self) -> None:
        super().setup_environment()  # the process group of all P + 1 processes, once
        module = self.lightning_module
        trainer = module.trainer if module is not None else None
        # From here on an evaluation stage is the server's alone: Lightning's own barriers of the stage
        # (before `setup` hooks) must not wait for processes that may be gone or busy elsewhere.
        self._evaluating = trainer is not None and _stage(trainer) in EVALUATION_LIMITS
        self._fitting = trainer is not None and trainer.state.fn == "fit"
        if self._fitting and not self._local:
            # The library's own loaders (throttled_loader, throttle) shard as distributed_sampler_kwargs
            # does: learner i reads shard i of P; the server's (never read) loader spans all the data.
            kwargs = self.distributed_sampler_kwargs
            set_data_shard((kwargs["rank"], kwargs["num_replicas"]))
        if trainer is not None and trainer.state.fn == "fit" and self.global_rank == SERVER_RANK:
            # It logs the metrics of every update; added before a checkpoint's callback states are restored.
            training_progress(trainer, add=True)

    @override
    def setup(self, trainer: pl.Trainer) -> None:
        self._trainer = trainer
        if trainer.state.fn != "fit":
            self._setup_evaluation(trainer)
            return
        # Every check runs on every rank before the channels open, so all ranks fail alike.
        self._resolve(self._learners_in_world())
        self.check_trainer(trainer)
        self._check_resumed_k()
        if self.global_rank == SERVER_RANK:
            # Before configure_optimizers: `estimated_stepping_batches` must count server updates.
            self._undo.append(lightning_internals.wrap_train_source(trainer, self._server_loader))
        assert self.lightning_module is not None
        self._undo.append(keep_metric_syncs_local(self.lightning_module))
        super().setup(trainer)
        params, buffers = self._exchanged_tensors()
        exchange = FlatExchange(params, buffers)  # refuses parameters of several dtypes
        transport = connect(exchange.numel, exchange.dtype, timeout=self.timeout, rank=self.global_rank,
                            world=self._processes, wait=max(self.timeout, self.faults.rejoin_wait))
        if self.global_rank == SERVER_RANK:
            self._become_server(trainer, transport, params, buffers)
        else:
            self._become_learner(trainer, transport, params, buffers)

    def check_trainer(self, trainer: pl.Trainer) -> None:
        """Refuse what cannot work with learners that compute independently of each other (the
        module's settings once it is attached)."""
        super().check_trainer(trainer)
        processes = trainer.num_devices * trainer.num_nodes
        if self.learners is not None and processes != self.learners + 1:
            one_machine = trainer.num_nodes == 1
            raise ConfigError("trainer.devices", trainer.num_devices if one_machine else f"{trainer.num_devices} x {trainer.num_nodes} nodes",
                              f"a parameter server with stale.learners={self.learners} needs {self.learners + 1} processes"
                              + (" on this machine" if one_machine else " (devices x num_nodes)")
                              + " (the server and each learner); backend=processes sets it")
        if getattr(self.precision_plugin, "scaler", None) is not None:
            raise ConfigError("trainer.precision", trainer.precision,
                              "a gradient scaler scales each process's gradients; use bf16-mixed or 32-true")
        module = self.lightning_module
        if module is None:
            return
        if any(isinstance(m, torch.nn.SyncBatchNorm) for m in module.modules()):
            raise ConfigError("trainer.sync_batchnorm", True, "SyncBatchNorm synchronises learners at every forward; "
                              "the parameter server's learners compute independently")

    def _learners_in_world(self) -> int:
        """P: every process but the server's, checked against ``learners`` when it was given."""
        learners = self._processes - 1
        if learners < 1:
            raise ConfigError("trainer.devices x trainer.num_nodes", learners + 1,
                              "a parameter server needs at least 2 processes: the server (rank 0) and a learner")
        if self.learners is not None and self.learners != learners:
            raise ConfigError("stale.learners", self.learners,
                              f"must equal the learner processes: devices x num_nodes - 1 = {learners}")
        return learners

    def _exchanged_tensors(self) -> tuple[list[torch.nn.Parameter], list[torch.Tensor]]:
        """The module's trainable parameters and the buffers that travel with them."""
        module = self.lightning_module
        assert module is not None
        params = [p for p in module.parameters() if p.requires_grad]
        if not params:
            raise ConfigError("model parameters", 0, "the parameter server needs trainable parameters")
        return params, exchanged_buffers(module, params[0].dtype, warn=self.global_rank == SERVER_RANK)

    def _setup_evaluation(self, trainer: pl.Trainer) -> None:
        """``validate`` / ``test`` / ``predict``: the server alone, on all the data; learners run no batch.

        No collective runs (DDP's start-of-stage broadcast of the module included), so evaluation
        also works after ``fit`` lost a learner, which would leave any collective waiting forever."""
        assert self.accelerator is not None and self.model is not None
        self.accelerator.setup(trainer)
        self.precision_plugin.convert_module(self.model)
        self.model_to_device()
        self.setup_precision_plugin()
        if self.lightning_module is not None:
            self._undo.append(keep_metric_syncs_local(self.lightning_module))
        if self.global_rank != SERVER_RANK:
            limit = EVALUATION_LIMITS.get(_stage(trainer))
            if limit is not None:
                saved = getattr(trainer, limit)
                setattr(trainer, limit, 0)
                self._undo.append(lambda: setattr(trainer, limit, saved))

    def _become_server(self, trainer: pl.Trainer, transport: Transport, params: list[torch.nn.Parameter],
                       buffers: list[torch.Tensor]) -> None:
        """Rank 0: serve the learners; its train loader yields one placeholder per update."""
        assert self.spec is not None and self.rule is not None and self.lightning_module is not None
        self._role = ServerRole(transport, self.spec, params, keep_stale_params=self.rule.needs_distance,
                                timeout=self.timeout, buffers=buffers, adaptive=self._adaptive_k(), faults=self.faults)
        self._undo.append(lightning_internals.wrap_before_batch_transfer(self.lightning_module, _skip_server_steps))
        self._carried = CarriedCounts.from_totals(self._loaded["totals"]) if self._loaded else CarriedCounts()
        self._carried_events = list(self._loaded.get("events", [])) if self._loaded else []
        self._state = self._loaded

    def _check_resumed_k(self) -> None:
        """A run resumed from a checkpoint keeps its kind of K (every rank reads the checkpoint)."""
        if self._loaded is None:
            return
        saved = ADAPTIVE_KEY in self._loaded
        if saved != self.settings.adaptive:
            raise ConfigError("stale.k", self.settings.k, "differs from the checkpoint's: it was saved "
                              f"{'with' if saved else 'without'} stale.k=auto; resume with the same setting")

    def _adaptive_k(self) -> Optional[AdaptiveK]:
        """The server's adaptive K (``stale.k=auto``), continuing a resumed run's."""
        assert self.spec is not None
        adaptive = self._new_adaptive_k(self.spec.learners)
        saved = self._loaded.get(ADAPTIVE_KEY) if self._loaded else None
        if adaptive is not None and saved is not None:
            adaptive.load_state_dict(saved)
        return adaptive

    def _server_loader(self, loader: Any) -> UpdateSlots:
        self._check_train_loader(loader)
        trainer = self._trainer
        assert self.spec is not None and trainer is not None
        echo = find_data_echoing(trainer)
        batches = lightning_internals.sized_len(loader)
        adaptive = self.settings.adaptive
        length = None if adaptive else server_epoch_length(gradients_per_pass(batches, echo), self.spec.k)
        progress = training_progress(trainer)
        budget = progress is not None and progress.ledger.budget.is_limited
        if length is None and trainer.max_steps < 0 and not budget and not any(isinstance(c, Timer) for c in trainer.callbacks):
            why = ("with stale.k=auto K changes while training, so the updates of a pass over the data are not known"
                   if adaptive else "the train loader has no length" if batches is None else
                   f"with DataEchoing(factor={echo.factor!r}, kind={echo.kind!r}) on the learners the gradients of a "
                   "pass over the data are not known")
            raise ConfigError("trainer.max_steps", trainer.max_steps,
                              f"{why}, so the server's epochs never end: set max_steps (server updates), max_time or "
                              "a fresh-data budget (max_fresh_samples)")
        return UpdateSlots(length)

    def _become_learner(self, trainer: pl.Trainer, transport: Transport, params: list[torch.nn.Parameter],
                        buffers: list[torch.Tensor]) -> None:
        """Ranks 1..P: compute gradients until the server's STOP; the server's limits, callbacks,
        validation and schedules are not the learner's."""
        delays = self.injected_delays
        learner = learner_index(self.global_rank)
        injected = learner_delays(delays, learner, self.settings.seed) if delays is not None else None
        role = self._role = LearnerRole(transport, params, injected, buffers=buffers, rejoin_wait=self.faults.rejoin_wait)
        self._echo = find_data_echoing(trainer)
        self._data_wait_s, self._step_ended = 0.0, None
        self._undo.append(self._step_logs.install(self.lightning_module, lambda: role.working))
        self._undo.append(lightning_internals.lift_fit_limits(trainer))
        limit_val, callbacks = trainer.limit_val_batches, list(trainer.callbacks)
        trainer.limit_val_batches = 0
        trainer.callbacks[:] = [c for c in callbacks if not isinstance(c, SERVER_ONLY_CALLBACKS)]
        self.lr_scheduler_configs = []  # a learner never steps its optimizer

        def undo() -> None:
            trainer.limit_val_batches = limit_val
            trainer.callbacks[:] = callbacks

        self._undo.append(undo)

    def data_echoing_role(self) -> str:
        """Where a ``DataEchoing`` callback echoes (``lightning_echo.combinations.echo_role``): on each
        learner's own loader; the server reads no data and counts the cluster's fresh data."""
        return "server" if self.global_rank == SERVER_RANK else "learner"

    # -- the progress source (lightning_echo.core.progress.ProgressSource) ---------------------------
    @property
    def enforces_budget(self) -> bool:
        """On learners: the server ends them (a data budget counted on a learner must not)."""
        return isinstance(self._role, LearnerRole)

    def step_report(self) -> Optional[StepReport]:
        """On the server: the update just applied; its fresh batches and samples are those of its
        gradients that were computed on fresh data (the learners' ``DataEchoing`` says which)."""
        return self._step_report if isinstance(self._role, ServerRole) else None

    def progress_bar(self, ledger: ProgressLedger) -> Dict[str, float]:
        if not self._metrics:
            return {}
        return {"upd/s": round(self._metrics[ParameterServer.UPDATES_PER_S], 1),
                "stale": round(self._metrics[Stale.STALENESS_MEAN], 2)}

    # -- one step -------------------------------------------------------------------------------
    @override
    def batch_to_device(self, batch: Any, device: Optional[torch.device] = None, dataloader_idx: int = 0) -> Any:
        if isinstance(batch, ServerStep):
            return batch
        return super().batch_to_device(batch, device, dataloader_idx)

    @override
    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        role = self._role
        if isinstance(role, ServerRole):
            return self._server_step(role)
        if isinstance(role, LearnerRole):
            self._end_data_wait()
            if not role.take_work():  # the server sent STOP
                assert self._trainer is not None
                self._trainer.should_stop = True
                return None
            self._batch_samples = examples_in(args[0]) if args else 0
        return super().training_step(*args, **kwargs)

    def _server_step(self, role: ServerRole) -> torch.Tensor:
        if not role.started:
            assert self._trainer is not None
            role.start(int(self._loaded["version"]) if self._loaded else self._trainer.global_step)
        update = role.next_update()
        optimizer = self.server_optimizer
        order = [p for group in optimizer.param_groups for p in group["params"]]
        optimizer.tell(update.staleness, stale_params=role.stale_parameters(order))
        self._grads_due = True  # Lightning zeroes .grad after this step: backward() puts the update's there
        samples = round(role.samples)
        # The cluster's fresh data: what the update's gradients were computed on (an echo brings none).
        self._step_report = StepReport(samples=samples, fresh_samples=sum(d.fresh_samples for d in role.data),
                                       fresh_batches=sum(d.fresh_batches for d in role.data))
        module = self.lightning_module
        assert module is not None
        for name, logged in role.logged.items():  # what the learners logged in training_step, as the user logged it
            module.log(name, logged.value, batch_size=max(1, samples), **logged.options)
        return torch.tensor(role.loss, device=self.root_device)

    @override
    def backward(self, closure_loss: torch.Tensor, optimizer: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        role = self._role
        if isinstance(role, ServerRole) and self._grads_due:
            self._grads_due = False
            for param, grad in zip(role.params, role.grads):
                param.grad = grad
            return closure_loss
        return super().backward(closure_loss, optimizer, *args, **kwargs)

    @override
    def optimizer_step(self, optimizer: Any, closure: Callable[[], Any], model: Any = None, **kwargs: Any) -> Any:
        role = self._role
        if isinstance(role, LearnerRole):
            loss = closure()  # the user's training_step and backward; no optimizer step
            if role.working:
                role.deliver(None if loss is None else float(loss), self._batch_samples, self._step_logs.take(),
                             self._gradient_data())
            self._step_ended = time.perf_counter()
            return loss
        result = super().optimizer_step(optimizer, closure, model, **kwargs)
        if isinstance(role, ServerRole) and role.update is not None:
            record = role.complete_update()
            carried = self._carried
            self._record_update(record.staleness, carried.total(role.report, "gradients_discarded"),
                                carried.total(role.report, "computations_cancelled"),
                                process_metrics(record, role.report, carried, loss=role.loss))
            self._state = self._server_state(role)
        return result

    def _end_data_wait(self) -> None:
        """A learner's step begins: the time since its last one (or the fit's start) was spent
        waiting for its batch (Lightning's fetch and transfer), as ``TrainingProgress`` counts it."""
        if self._step_ended is not None:
            self._data_wait_s += max(0.0, time.perf_counter() - self._step_ended)
            self._step_ended = None

    def _gradient_data(self) -> GradientData:
        """What a learner's current gradient was computed on: its ``DataEchoing`` says (an echo
        brings no fresh example); without one every batch is fresh."""
        report = self._echo.step_report() if self._echo is not None else None
        if report is None:
            return GradientData(1, self._batch_samples, self._data_wait_s)
        return GradientData(report.fresh_batches, report.fresh_samples, self._data_wait_s)

    def _server_state(self, role: ServerRole) -> Dict[str, Any]:
        state = {"version": role.server.version, "policy": role.server.policy.state_dict(),
                 "totals": self._carried.totals(role.report), "events": self.fault_events[-MAX_EVENTS:]}
        if role.server.adaptive is not None:
            state[ADAPTIVE_KEY] = role.server.adaptive.state_dict()
        return state

    @property
    def fault_events(self) -> list[dict[str, Any]]:
        """Rank 0: the run's learner losses, joins, K changes and server restarts so far (those of
        earlier segments from the checkpoint, then this one's), in order; empty elsewhere."""
        role = self._role
        report = role.report if isinstance(role, ServerRole) else self.server_report
        return self._carried_events + (list(report.events) if report is not None else [])

    # -- the ranks' jobs (lightning_echo.protocols.AssignsRankRoles) -----------------------------
    @property
    def deciding_ranks(self) -> tuple[int, ...]:
        """The server alone decides how a run ends: a lost learner is its business."""
        return (SERVER_RANK,)

    @property
    def deciders_outlive_s(self) -> float:
        """Once every learner has failed, the server ends within its own timeout (it waits that long
        for a gradient) plus a margin; a server still running after that is frozen or stuck."""
        return self.timeout + 10.0

    def saves_checkpoints(self, global_rank: int) -> bool:
        """Rank 0 writes the run's checkpoints; learners save nothing (the server's state is the run's)."""
        return global_rank == SERVER_RANK

    # -- checkpoints ----------------------------------------------------------------------------
    @property
    def train_loss(self) -> Optional[float]:
        """Rank 0: the mean training loss of the last update's gradients (the server runs no
        ``training_step``, so the module's own logged training loss exists only on learners)."""
        return self._metrics.get(ParameterServer.LOSS)

    @property
    def server_state(self) -> Optional[Dict[str, Any]]:
        """Rank 0: what a checkpoint saves under ``"parameter_server"`` now (the server's version,
        its policy's state, the run's counters); None elsewhere and before the first update."""
        return self._state

    @override
    def save_checkpoint(self, checkpoint: Dict[str, Any], filepath: Any, storage_options: Optional[Any] = None) -> None:
        if self._state is not None:
            checkpoint = {**checkpoint, CHECKPOINT_KEY: self._state}
        super().save_checkpoint(checkpoint, filepath, storage_options=storage_options)

    @override
    def load_checkpoint(self, checkpoint_path: Any, *args: Any, **kwargs: Any) -> Dict[str, Any]:
        checkpoint = super().load_checkpoint(checkpoint_path, *args, **kwargs)
        self._loaded = checkpoint.get(CHECKPOINT_KEY)
        if self.global_rank != SERVER_RANK:
            # The loops' state is the server's (its update slots); a learner starts its shard over.
            checkpoint = {key: value for key, value in checkpoint.items() if key != "loops"}
        return checkpoint

    # -- the end --------------------------------------------------------------------------------
    @override
    def on_train_start(self) -> None:
        super().on_train_start()
        if isinstance(self._role, LearnerRole):
            self._step_ended = time.perf_counter()

    @override
    def on_train_end(self) -> None:
        super().on_train_end()
        role = self._role
        if isinstance(role, ServerRole) and not role.finished:
            self.server_report = role.stop()

    @override
    def on_exception(self, exception: BaseException) -> None:
        super().on_exception(exception)
        role = self._role
        if isinstance(role, ServerRole) and not role.finished:
            if isinstance(exception, INTERRUPTIONS):  # stopped on purpose: the learners stop as at the end
                self.server_report = role.stop()
            else:
                role.abort(exception)
                self.server_report = role.report
        elif isinstance(role, LearnerRole):
            role.fail()

    @override
    def teardown(self) -> None:
        role, self._role = self._role, None
        try:
            if isinstance(role, ServerRole) and not role.finished:
                self.server_report = role.stop()
            elif isinstance(role, LearnerRole):
                role.leave_if_running()
                role.close()
                role.session.report.data_wait_s = self._data_wait_s
                self.learner_report = role.session.report
        finally:
            self._undo_all()
            self._loaded = None
            self._grads_due = False
            self._echo, self._step_ended, self._data_wait_s = None, None, 0.0
            self._evaluating = False
            self._fitting = False
            set_data_shard(None)
            self._step_logs.take()
            super().teardown()

    # -- registry -------------------------------------------------------------------------------
    @classmethod
    @override
    def register_strategies(cls, strategy_registry: Any) -> None:
        strategy_registry.register(STRATEGY_NAME, cls, description="a parameter server (rank 0) and learner processes")


RESTART_WAIT_S = 120.0  # the least rejoin_wait under restarts: a new server process takes 15-30 s to start on a busy host
MAX_EVENTS = 10_000  # fault events a checkpoint carries (the newest)


def fault_policy(shrink_k: Any, min_learners: Any, rejoin_wait: Any) -> FaultPolicy:
    """The strategy's fault settings, each refused in one line when out of range."""
    wait = float(rejoin_wait) if isinstance(rejoin_wait, (int, float)) and not isinstance(rejoin_wait, bool) else None
    if wait is None or not 0.0 <= wait <= MAX_TIMEOUT_S:
        raise ConfigError("ps.rejoin_wait", rejoin_wait, f"must be a number of seconds in [0, {MAX_TIMEOUT_S:g}]")
    return FaultPolicy(boolean("ps.shrink_k", shrink_k), positive_int("ps.min_learners", min_learners), wait)


def check_process_settings(timeout: float, inject_delays: bool, shrink_k: bool = True, min_learners: int = 1,
                           rejoin_wait: Optional[float] = None, restart_learners: int = 0, restart_server: int = 0) -> None:
    """Check a ``ps`` config block (the processes backend's own settings) for any algorithm."""
    check_timeout(timeout)
    boolean("ps.inject_delays", inject_delays)
    fault_policy(shrink_k, min_learners, 0.0 if rejoin_wait is None else rejoin_wait)
    non_negative_int("ps.restart_learners", restart_learners)
    non_negative_int("ps.restart_server", restart_server)


def exchanged_buffers(module: torch.nn.Module, dtype: torch.dtype, warn: bool = False) -> list[torch.Tensor]:
    """The buffers that travel with the parameters: the floating-point ones of the parameters'
    ``dtype`` (BatchNorm's running statistics). Others (integer counters such as BatchNorm's
    ``num_batches_tracked``, floats of another dtype) stay each process's own; with ``warn``, a
    warning names the floating-point ones left out."""
    exchanged, left_out = [], []
    for name, buffer in module.named_buffers():
        if buffer.is_floating_point():
            (exchanged if buffer.dtype == dtype else left_out).append((name, buffer))
    if warn and left_out:
        LOG.warning("parameter server: buffers %s are %s, not %s like the parameters: each process keeps its own",
                    ", ".join(name for name, _ in left_out), left_out[0][1].dtype, dtype)
    return [buffer for _, buffer in exchanged]


def gradients_per_pass(batches: Optional[int], echo: Any = None) -> Optional[int]:
    """The gradients one pass over a train loader of ``batches`` batches gives (None: not known):
    ``batches``, or with the learners' ``DataEchoing`` the steps its echo stage serves per pass
    (known for batch echoing with a number as factor; summed over the learners' shards, a
    non-integer factor's pass differs by the rounding of each shard's extra serves)."""
    if batches is None or echo is None:
        return batches
    return steps_per_pass(float(echo.factor), batches) if echo.knows_epoch_length else None


def _stage(trainer: pl.Trainer) -> Any:
    """The Trainer's entry point now: ``fit``, ``validate``, ``test`` or ``predict``."""
    return getattr(trainer.state.fn, "value", trainer.state.fn)


def _skip_server_steps(original: Callable[..., Any]) -> Callable[..., Any]:
    """The user's ``on_before_batch_transfer`` never sees the server's placeholders."""

    def before_batch_transfer(batch: Any, dataloader_idx: int = 0) -> Any:
        return batch if isinstance(batch, ServerStep) else original(batch, dataloader_idx)

    return before_batch_transfer


ParameterServerStrategy.register_strategies(StrategyRegistry)
