"""What the simulated-learners recipes share: one ``Trainer.fit`` per curve, on the simulated clock.

Every curve of ``dutta_fig8.py``, ``dutta_fig9.py`` and ``mishchenko_least_squares.py`` is one
``pl.Trainer.fit`` of a library model under ``lightning_echo.stragglers.SimulatedLearnersStrategy`` (P
learners and a parameter server on a virtual clock; ``lightning_echo.TrainingProgress`` counts the
gradients). :class:`Recorder` evaluates the full training objective on a grid of simulated times
and reads, after every server update, the strategy's ``stale/*`` metrics (staleness, applied step
size, discarded and cancelled work). The rest formats what the recipes write.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import pytorch_lightning as pl
import torch

from lightning_echo import TrainingProgress
from lightning_echo.core.delays import ComputeTimes, DelayDistribution
from lightning_echo.core.schedule import ScheduleSimulation, variant_spec
from lightning_echo.stragglers import SimulatedLearnersStrategy


DEFAULT_OUT = Path(__file__).resolve().parent / "results"
# None: the data modules read the LIGHTNING_ECHO_DATA environment variable, as the command line does.
DEFAULT_DATA_ROOT = None
COLORS = {"sync": "tab:blue", "k_sync": "tab:green", "k_batch_async": "tab:orange", "async": "tab:red",
          "async_adaptive": "tab:purple", "paper_lr": "tab:gray", "control": "tab:cyan", "rennala": "tab:brown", "ringmaster": "tab:olive"}


# -- one run ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Method:
    """One curve: a variant of ``SimulatedLearnersStrategy`` and its step size."""

    key: str
    label: str
    variant: str
    lr: float
    k: Optional[int] = None
    lr_rule: str = "constant"
    c: Optional[float] = None
    max_delay: Optional[int] = None
    stop_stale: bool = False


@dataclass
class Curve:
    """What one run recorded: the objective at simulated times, and the staleness of the applied gradients."""

    method: Method
    times: list[float] = field(default_factory=list)
    gradients: list[int] = field(default_factory=list)
    updates: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    step_lr: list[float] = field(default_factory=list)  # mean applied lr over the updates since the previous point
    staleness: Counter = field(default_factory=Counter)  # per update (exact per gradient when K = 1)
    staleness_sum: float = 0.0  # over gradients
    staleness_max: int = 0
    lr_sum: float = 0.0  # applied step sizes, summed over updates
    diverged_at: Optional[float] = None
    wall_s: float = 0.0
    discarded: int = 0
    cancelled: int = 0

    @property
    def final(self) -> float:
        return self.values[-1] if self.values else math.nan

    def value_at(self, when: float) -> float:
        """The objective at the last evaluation at or before simulated time ``when`` (inf once diverged)."""
        if self.diverged_at is not None and when >= self.diverged_at:
            return math.inf
        best = math.nan
        for t, v in zip(self.times, self.values):
            if t <= when + 1e-9:
                best = v
        return best

    def first_time(self, target: float) -> Optional[float]:
        """Simulated time of the first evaluation at or below ``target``."""
        return next((t for t, v in zip(self.times, self.values) if v <= target), None)

    def first_gradients(self, target: float) -> Optional[int]:
        return next((g for g, v in zip(self.gradients, self.values) if v <= target), None)

    @property
    def total_updates(self) -> int:
        return self.updates[-1] if self.updates else 0

    @property
    def total_gradients(self) -> int:
        return self.gradients[-1] if self.gradients else 0

    def mean_staleness(self) -> float:
        return self.staleness_sum / self.total_gradients if self.total_gradients else math.nan

    def mean_lr(self) -> float:
        return self.lr_sum / self.total_updates if self.total_updates else math.nan


class Recorder(pl.Callback):
    """Evaluates ``objective(module)`` at simulated times 0, dt, 2 dt, ...; stops at the horizon.

    Reads the simulated clock and the counters the library exposes: ``strategy.clock_s``,
    ``TrainingProgress.ledger`` (gradients = fresh mini-batches used) and the strategy's
    ``progress_metrics`` (``stale/staleness_mean``, ``stale/staleness_max``, ``stale/lr``, ...).
    Training stops once the clock passes ``horizon`` and ``min_gradients`` gradients were used; a
    run whose objective is not finite or exceeds ``diverge_above`` is stopped as diverged.
    """

    def __init__(self, curve: Curve, objective: Callable[[pl.LightningModule], float], horizon: float,
                 points: int, min_gradients: int = 0, diverge_above: float = math.inf) -> None:
        self.curve, self.objective = curve, objective
        self.horizon, self.dt = horizon, horizon / points
        self.min_gradients, self.diverge_above = min_gradients, diverge_above
        self.next_time = 0.0
        self.progress: Optional[TrainingProgress] = None
        self._gradients = 0
        self._lr_sum, self._lr_n = 0.0, 0

    def _record(self, trainer: pl.Trainer, module: pl.LightningModule, clock: float) -> None:
        value = self.objective(module)
        curve = self.curve
        curve.times.append(clock)
        curve.gradients.append(self._gradients)
        curve.updates.append(trainer.global_step)
        curve.values.append(value)
        curve.step_lr.append(self._lr_sum / self._lr_n if self._lr_n else math.nan)
        self._lr_sum, self._lr_n = 0.0, 0
        if not (math.isfinite(value) and value <= self.diverge_above):
            curve.diverged_at = clock
            trainer.should_stop = True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.progress = next(c for c in trainer.callbacks if isinstance(c, TrainingProgress))
        self._record(trainer, pl_module, 0.0)
        self.next_time = self.dt

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        strategy: SimulatedLearnersStrategy = trainer.strategy  # type: ignore[assignment]
        assert self.progress is not None
        metrics = strategy.progress_metrics(self.progress.ledger)
        used = self.progress.ledger.fresh_batches - self._gradients  # gradients this update averaged
        self._gradients = self.progress.ledger.fresh_batches
        curve = self.curve
        curve.staleness[int(round(metrics["stale/staleness_mean"]))] += 1
        curve.staleness_sum += metrics["stale/staleness_mean"] * used
        curve.staleness_max = max(curve.staleness_max, int(metrics["stale/staleness_max"]))
        curve.discarded, curve.cancelled = int(metrics["stale/discarded"]), int(metrics["stale/cancelled"])
        curve.lr_sum += metrics["stale/lr"]
        self._lr_sum += metrics["stale/lr"]
        self._lr_n += 1
        clock = strategy.clock_s
        if clock >= self.next_time:
            self._record(trainer, pl_module, clock)
            while self.next_time <= clock:
                self.next_time += self.dt
        if trainer.should_stop:  # diverged
            return
        if clock >= self.horizon and self._gradients >= self.min_gradients:
            if curve.times[-1] != clock:
                self._record(trainer, pl_module, clock)
            trainer.should_stop = True


def full_objective(x: torch.Tensor, y: torch.Tensor, chunk: int = 20000) -> Callable[[pl.LightningModule], float]:
    """The module's training objective (mean loss + penalty) on all of ``x, y``."""

    def evaluate(module: pl.LightningModule) -> float:
        was_training = module.training
        module.eval()
        total = 0.0
        with torch.no_grad():
            for start in range(0, len(x), chunk):
                xb, yb = x[start:start + chunk], y[start:start + chunk]
                total += float(module.loss(module(xb), yb)) * len(xb)
            value = total / len(x) + float(module.penalty())
        module.train(was_training)
        return value

    return evaluate


def fit(method: Method, datamodule: pl.LightningDataModule, make_model: Callable[[Any, float], pl.LightningModule],
        objective: Callable[[pl.LightningModule], float], learners: int, delay: dict, horizon: float, points: int,
        seed: int, min_gradients: int = 0, diverge_above: float = math.inf) -> Curve:
    """Train one method on the simulated clock until ``horizon`` simulated seconds (and ``min_gradients``).

    ``datamodule`` is loaded once and shared by the runs: each ``train_dataloader`` reshuffles from its seed.
    """
    pl.seed_everything(seed, verbose=False)
    model = make_model(datamodule, method.lr)
    strategy = SimulatedLearnersStrategy(method.variant, learners=learners, k=method.k, delay=delay,
                                         lr_rule=method.lr_rule, c=method.c, max_delay=method.max_delay,
                                         stop_stale=method.stop_stale, seed=seed, device="cpu")
    curve = Curve(method)
    recorder = Recorder(curve, objective, horizon, points, min_gradients, diverge_above)
    trainer = pl.Trainer(strategy=strategy, max_steps=-1, max_epochs=-1, callbacks=[TrainingProgress(), recorder],
                         logger=False, enable_progress_bar=False, enable_checkpointing=False,
                         enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0, accelerator="cpu")
    started = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    curve.wall_s = time.perf_counter() - started
    print(f"  {method.label}, lr {method.lr:g}: {curve.total_updates} updates, {curve.total_gradients} gradients, "
          f"sim {curve.times[-1]:.0f} s, objective {curve.final:.4g}"
          + (f" (diverged at {curve.diverged_at:.0f} s)" if curve.diverged_at is not None else "")
          + f", {curve.wall_s:.0f} s wall", flush=True)
    return curve


def replayed_staleness(variant: str, learners: int, delay: dict, seed: int, updates: int) -> tuple[Counter, dict[int, list[int]]]:
    """The same schedule replayed by ``ScheduleSimulation`` alone (same compute times, same seed): staleness
    counts over all applied gradients, and each learner's list of delays."""
    distribution = DelayDistribution(delay["distribution"], **{k: float(v) for k, v in delay.items()
                                                               if k not in ("distribution", "speeds")})
    simulation = ScheduleSimulation(variant_spec(variant, learners), ComputeTimes(distribution, speeds=delay.get("speeds")),
                                    seed=seed)
    per_learner: dict[int, list[int]] = {i: [] for i in range(learners)}
    for _ in range(updates):
        for gradient in simulation.next_update().gradients:
            per_learner[gradient.learner].append(gradient.staleness)
    return Counter(simulation.statistics()["staleness_counts"]), per_learner


# -- shared output -----------------------------------------------------------------------------------
def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path, title: str) -> None:
    """Title ``fig``, lay it out, write it to ``path`` and free it."""
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)


# What the results files write instead of a path of the machine that made them.
PATH_PLACEHOLDERS = {"--data-root": "DATA_ROOT", "--out": "OUT_DIR"}


def command_line(argv: Optional[list[str]] = None) -> str:
    """The command that produced this result, as the results files quote it (``argv``: ``sys.argv``).

    The data root always reads ``DATA_ROOT``, and an ``--out`` outside the repository (absolute, or
    through ``..``) reads ``OUT_DIR``, so no result names a directory of one machine.
    """
    argv = list(sys.argv if argv is None else argv)
    words, rest = ["python", f"recipes/{Path(argv[0]).name}"], argv[1:]
    i = 0
    while i < len(rest):
        option, _, inline = rest[i].partition("=")
        if option in PATH_PLACEHOLDERS and (inline or i + 1 < len(rest)):
            value = inline or rest[i + 1]
            shown = PATH_PLACEHOLDERS[option] if _machine_specific(option, value) else value
            words.append(f"{option}={shown}" if inline else f"{option} {shown}")
            i += 1 if inline else 2
            continue
        words.append(rest[i])
        i += 1
    return " ".join(words)


def command_lines(argv: Optional[list[str]] = None) -> list[str]:
    """The command as a markdown code line, and what its placeholders stand for (if it has any)."""
    command = command_line(argv)
    used = [f"`{word}` is the directory given as `{option}`" for option, word in PATH_PLACEHOLDERS.items()
            if f" {option} {word}" in command or f" {option}={word}" in command]
    return [f"    {command}"] + (["", f"({'; '.join(used)}.)"] if used else [])


def _machine_specific(option: str, value: str) -> bool:
    path = Path(value)
    return option == "--data-root" or path.is_absolute() or ".." in path.parts or value.startswith("~")


def save_curves(path: Path, curves: list[Curve], extra: Optional[dict] = None) -> None:
    """The raw numbers next to the figure, for anyone who wants to replot or compare."""
    data: dict[str, Any] = {"command": command_line(), "curves": [
        {"method": asdict(c.method), "times": c.times, "gradients": c.gradients, "updates": c.updates,
         "values": c.values, "step_lr": c.step_lr, "diverged_at": c.diverged_at, "wall_s": c.wall_s,
         "staleness_per_update": dict(sorted(c.staleness.items())), "mean_staleness": c.mean_staleness(),
         "max_staleness": c.staleness_max, "discarded": c.discarded, "cancelled": c.cancelled} for c in curves]}
    data.update(extra or {})
    path.write_text(json.dumps(data, indent=1, default=float) + "\n")


def load_curves(path: Path) -> list[Curve]:
    """The curves :func:`save_curves` wrote; the sum of applied step sizes is not stored (``mean_lr``: nan)."""
    curves = []
    for record in json.loads(path.read_text())["curves"]:
        staleness = Counter({int(k): n for k, n in record["staleness_per_update"].items()})
        curve = Curve(Method(**record["method"]), times=record["times"], gradients=record["gradients"],
                      updates=record["updates"], values=record["values"], step_lr=record["step_lr"],
                      staleness=staleness, staleness_max=record["max_staleness"], diverged_at=record["diverged_at"],
                      wall_s=record["wall_s"], discarded=record["discarded"], cancelled=record["cancelled"])
        mean = record["mean_staleness"]
        curve.staleness_sum = mean * curve.total_gradients if math.isfinite(mean) else 0.0
        curve.lr_sum = math.nan
        curves.append(curve)
    return curves


def fmt(value: Optional[float], digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "diverged"
    return f"{value:.{digits}g}"


def fmt_time(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.0f}"


def runtime_line(elapsed: float, cpu: float, curves: list[Curve]) -> str:
    per_run = ", ".join(f"{c.method.key} {c.wall_s:.0f} s" for c in curves)
    return (f"Measured runtime: {elapsed:.0f} s wall-clock ({cpu:.0f} s CPU time in this process, torch on "
            f"1 thread, 2 shared cores) for {len(curves)} runs; per run: {per_run}.")


def recipe_arguments(description: str) -> argparse.ArgumentParser:
    """The options every simulated-learners recipe takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the .md, .png and .json go")
    parser.add_argument("--horizon-scale", type=float, default=1.0, help="scale every run's simulated-time horizon")
    parser.add_argument("--points", type=int, default=50, help="evaluations of the objective per run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=None, help="override the recipe's mini-batch size")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the default leaves cores to others)")
    parser.add_argument("--no-verify-checksums", action="store_true",
                        help="accept image files other than the published ones (a smaller set in the same format)")
    return parser


def start(args: argparse.Namespace) -> None:
    """Apply ``--threads`` and quieten Lightning's per-fit messages (a recipe fits dozens of times)."""
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
