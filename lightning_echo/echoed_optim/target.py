"""Time to target: the first optimizer step (and fresh sample) at which the full training loss
comes within a relative gap of its optimum (Agarwal et al. 2020, Section 5)."""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn
from typing_extensions import override

from lightning_echo.callbacks.divergence import Divergence, DivergenceGuard, divergence_guard
from lightning_echo.callbacks.progress import training_progress
from lightning_echo.core.optimum import logistic_regression_optimum
from lightning_echo.data.modules.synthetic import least_squares_optimum
from lightning_echo.echoed_optim.averaging import parameters_at_iterates
from lightning_echo.errors import ConfigError
from lightning_echo.lightning_namespace import pl, require_same_lightning, warn_if_other_lightning_imported
from lightning_echo.metric_names import Loss
from lightning_echo.models import LinearRegression, LogisticRegression
from lightning_echo.records import write_json
from lightning_echo.validation import positive_float, positive_int

RESULT_FILE = "target.json"


class TargetLoss(pl.Callback):
    """Evaluates the full training objective every ``every_n_steps`` optimizer steps.

    Records the first step at which ``loss <= optimum * (1 + relative_gap)`` as ``reached_step``
    and the fresh samples seen by then as ``reached_fresh_samples`` (from a ``DataEchoing``
    callback when there is one, else steps x batch size). With ``at_iterates`` the loss is taken
    at the optimizer's iterates ``w`` where it keeps them apart from the parameters
    (``EchoedNesterov``'s Algorithm 2 output), not at the look-ahead point. With ``cache_dir``
    a computed optimum is kept there, keyed by the data and the model, for the next run. ``optimum`` is computed at fit start
    for logistic and linear regression when not given. The result is written to
    ``<default_root_dir>/target.json`` when training ends.

    Divergence is the Trainer's :class:`~lightning_echo.callbacks.divergence.DivergenceGuard`'s to
    decide (one is added when there is none): each full loss is reported to it with the bound
    ``divergence_factor x`` the initial loss, and the guard stops the run at the first loss above
    that bound or not finite (``divergence_factor=None``: only a loss that is not finite).

    Example::

        trainer = pl.Trainer(callbacks=[DataEchoing(factor=4), TargetLoss(stop_at_target=True)])
    """

    def __init__(
        self,
        optimum: Optional[float] = None,
        relative_gap: float = 0.01,
        every_n_steps: int = 10,
        stop_at_target: bool = False,
        chunk_size: int = 65536,
        divergence_factor: Optional[float] = 10.0,
        at_iterates: bool = True,
        cache_dir: Optional[str] = None,
    ) -> None:
        warn_if_other_lightning_imported(self)
        if optimum is not None and (isinstance(optimum, bool) or not isinstance(optimum, (int, float)) or not math.isfinite(optimum)):
            raise ConfigError("optimum", optimum, "must be a finite number, or null to compute it at fit start")
        self.optimum: Optional[float] = float(optimum) if optimum is not None else None
        self.relative_gap = positive_float("relative_gap", relative_gap)
        self.every_n_steps = positive_int("every_n_steps", every_n_steps)
        if not isinstance(stop_at_target, bool):
            raise ConfigError("stop_at_target", stop_at_target, "must be true or false")
        self.stop_at_target = stop_at_target
        self.chunk_size = positive_int("chunk_size", chunk_size)
        if divergence_factor is not None and positive_float("divergence_factor", divergence_factor) <= 1:
            raise ConfigError("divergence_factor", divergence_factor, "must be > 1, or null to stop only on a loss that is not finite")
        self.divergence_factor = divergence_factor
        if not isinstance(at_iterates, bool):
            raise ConfigError("at_iterates", at_iterates, "must be true or false")
        self.at_iterates = at_iterates
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self.reached_step: Optional[int] = None
        self.reached_fresh_samples: Optional[int] = None
        self.reached_loss: Optional[float] = None
        self.initial_loss: Optional[float] = None
        self.last_loss: Optional[float] = None
        self._guard: Optional[DivergenceGuard] = None

    @property
    def target(self) -> Optional[float]:
        """The loss to reach: ``optimum * (1 + relative_gap)``."""
        return None if self.optimum is None else self.optimum * (1.0 + self.relative_gap)

    @property
    def divergence(self) -> Optional[Divergence]:
        """Where the run diverged (as the Trainer's ``DivergenceGuard`` recorded it), or None."""
        return self._guard.divergence if self._guard is not None else None

    @property
    def diverged(self) -> bool:
        """Whether the run was stopped as diverged."""
        return self.divergence is not None

    # -- Lightning hooks --------------------------------------------------------------------
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        require_same_lightning(trainer, self)
        if stage == "fit":
            self._guard = divergence_guard(trainer, add=True)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        x, y = self._training_tensors(trainer)
        if self.optimum is None:
            self.optimum = cached_convex_optimum(pl_module, x, y, self.cache_dir)
        self.initial_loss = full_loss(pl_module, x, y, self.chunk_size)
        self.last_loss = self.initial_loss

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if step % self.every_n_steps != 0:
            return
        with parameters_at_iterates(trainer.optimizers if self.at_iterates else ()):
            loss = full_loss(pl_module, *self._training_tensors(trainer), self.chunk_size)
        self.last_loss = loss
        pl_module.log(Loss.TRAIN_FULL, loss, on_step=True, on_epoch=False)
        if self.reached_step is None and self.target is not None and loss <= self.target:
            self.reached_step = step
            self.reached_fresh_samples = self._fresh_samples(trainer, step)
            self.reached_loss = loss
            if self.stop_at_target:
                trainer.should_stop = True
        if self._guard is not None:
            self._guard.observe(trainer, Loss.TRAIN_FULL, loss, self._divergence_limit())

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero and trainer.default_root_dir:
            path = Path(trainer.default_root_dir) / RESULT_FILE
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json(path, self.result(trainer))

    # -- results ----------------------------------------------------------------------------
    def result(self, trainer: pl.Trainer) -> dict[str, Any]:
        """What ``target.json`` holds."""
        return {
            "optimum": self.optimum,
            "relative_gap": self.relative_gap,
            "target": self.target,
            "reached": self.reached_step is not None,
            "reached_step": self.reached_step,
            "reached_fresh_samples": self.reached_fresh_samples,
            "reached_loss": self.reached_loss,
            "initial_loss": self.initial_loss,
            "last_loss": self.last_loss,
            "diverged": self.diverged,
            "divergence": self.divergence.as_dict() if self.divergence is not None else None,
            "final_step": int(trainer.global_step),
            "final_fresh_samples": self._fresh_samples(trainer, int(trainer.global_step)),
            "every_n_steps": self.every_n_steps,
        }

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "optimum": self.optimum,
            "reached_step": self.reached_step,
            "reached_fresh_samples": self.reached_fresh_samples,
            "reached_loss": self.reached_loss,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.optimum = state_dict.get("optimum", self.optimum)
        self.reached_step = state_dict.get("reached_step")
        self.reached_fresh_samples = state_dict.get("reached_fresh_samples")
        self.reached_loss = state_dict.get("reached_loss")

    # -- helpers ----------------------------------------------------------------------------
    def _divergence_limit(self) -> Optional[float]:
        if self.divergence_factor is None or self.initial_loss is None or not math.isfinite(self.initial_loss):
            return None
        return self.divergence_factor * max(self.initial_loss, 1e-12)

    @staticmethod
    def _training_tensors(trainer: pl.Trainer) -> tuple[torch.Tensor, torch.Tensor]:
        splits = getattr(getattr(trainer, "datamodule", None), "splits", None)
        if splits is None:
            raise ConfigError("datamodule", type(getattr(trainer, "datamodule", None)).__name__,
                              "TargetLoss needs a datamodule with in-memory splits (an ArrayDataModule)")
        return splits.x_train, splits.y_train

    @staticmethod
    def _fresh_samples(trainer: pl.Trainer, step: int) -> int:
        progress = training_progress(trainer)
        if progress is not None:
            return int(progress.fresh_samples)
        return int(step * trainer.datamodule.batch_size)


def full_loss(module: pl.LightningModule, x: torch.Tensor, y: torch.Tensor, chunk_size: int = 65536) -> float:
    """The training objective on all of ``x``: the mean of ``module.loss(module(x), y)``, evaluated
    in chunks without gradients, plus ``module.penalty()`` when the module has a regulariser."""
    was_training = module.training
    module.eval()
    total = 0.0
    try:
        with torch.no_grad():
            for start in range(0, len(x), chunk_size):
                xs = x[start : start + chunk_size].to(module.device)
                ys = y[start : start + chunk_size].to(module.device)
                total += float(module.loss(module(xs), ys).item()) * len(xs)
            penalty = float(module.penalty().item()) if hasattr(module, "penalty") else 0.0
    finally:
        module.train(was_training)
    return total / len(x) + penalty


def convex_optimum(module: pl.LightningModule, x: torch.Tensor, y: torch.Tensor) -> float:
    """Minimum of the training loss of a logistic or linear regression module (float64 solve)."""
    linear = _single_linear(module)
    if isinstance(module, LogisticRegression) and linear is not None:
        return logistic_regression_optimum(x.cpu(), y.cpu(), linear.out_features,
                                          bias=linear.bias is not None, l2=module.l2)[2]
    if isinstance(module, LinearRegression) and linear is not None:
        a = x.reshape(len(x), -1).cpu()
        if linear.bias is not None:
            a = torch.cat([a, torch.ones(len(a), 1, dtype=a.dtype)], dim=1)
        return least_squares_optimum(a, y.cpu())[1]
    raise ConfigError("optimum", None, f"cannot compute it for {type(module).__name__}; give the optimal training loss")


def cached_convex_optimum(module: pl.LightningModule, x: torch.Tensor, y: torch.Tensor,
                          cache_dir: Optional[Path]) -> float:
    """:func:`convex_optimum`, read from or written to ``cache_dir`` when one is given."""
    if cache_dir is None:
        return convex_optimum(module, x, y)
    digest = hashlib.sha256()
    for tensor in (x, y):
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    linear = _single_linear(module)
    digest.update(repr((type(module).__name__, tuple(x.shape), linear is not None and linear.bias is not None,
                        getattr(module, "l2", 0.0))).encode())
    path = cache_dir / f"optimum-{digest.hexdigest()[:32]}.json"
    if path.is_file():
        return float(json.loads(path.read_text())["optimum"])
    value = convex_optimum(module, x, y)
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial_path = path.with_suffix(f".{os.getpid()}.tmp")
    partial_path.write_text(json.dumps({"optimum": value, "model": type(module).__name__}) + "\n")
    partial_path.replace(path)  # atomic: concurrent runs never read half a file
    return value


def _single_linear(module: nn.Module) -> Optional[nn.Linear]:
    layers = [m for m in module.modules() if isinstance(m, nn.Linear)]
    return layers[0] if len(layers) == 1 else None
