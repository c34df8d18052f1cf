"""The advisor's answer: fits, predictions, echo, a recommendation with its reasons; a table for the
terminal, an HTML page with its figures, and with ``replay=True`` the run's own model trained on the
recorded times for each shortlisted variant (the error-runtime figure). Where the recorded run tells
its real time per update (one device, DDP, a parameter server's p_sync), the predictions include the
overhead calibrated on it (:class:`~lightning_echo.advisor.predict.Overhead`; ``overhead=False``:
compute alone).

    advice = advise("outputs/2025-01-01/12-00-00")      # a run directory, or a trace CSV
    print(advice.text())
    advice.recommendation.choice                          # the VariantSpec to run
"""

from __future__ import annotations

import base64
import csv
import math
import shlex
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from lightning_echo.advisor.fit import TraceFit, fit_step_trace
from lightning_echo.advisor.predict import (
    DEFAULT_GRADIENTS,
    DEFAULT_MAX_FACTOR,
    ECHO_WORTH,
    ENOUGH,
    MAX_STALENESS,
    REPLAY_VARIANTS,
    CombinedPrediction,
    EchoPrediction,
    Prediction,
    PredictionTable,
    Source,
    calibrate_overhead,
    combined,
    command_overrides,
    echo_prediction,
    label,
    learner_data_time_lists,
    predict,
    recorded_time_per_update,
)
from lightning_echo.advisor.trace import COMPUTE_FILE, STEPS_FILE, StepTrace, read_step_trace
from lightning_echo.core.schedule import VariantSpec
from lightning_echo.errors import ConfigError
from lightning_echo.metric_names import Loss
from lightning_echo.records import CLOCK, RUN_FILE, read_run_record
from lightning_echo.validation import positive_int, writable_directory

ADVICE_DIR, HTML_FILE, GRID_FILE, DATA_FILE = "advice", "index.html", "predictions.csv", "data_times.csv"
SPEEDUP_FIGURE, LOSS_FIGURE = "speedup_vs_k.png", "loss_vs_time.png"
SAVED_CONFIG, OVERRIDES = Path(".hydra") / "config.yaml", Path(".hydra") / "overrides.yaml"
DEFAULT_REPLAY_STEPS = 400  # p_sync updates of a replay, at most (the run's own max_steps when smaller)
VALIDATIONS = 20  # validations per replayed run


@dataclass(frozen=True)
class Recommendation:
    """What to run (``choice``; p_sync when ``sync_is_enough``), why (``lines``), and the command
    that runs it on simulated learners replaying the recorded times."""

    choice: VariantSpec
    sync_is_enough: bool
    lines: tuple[str, ...]
    command: str


@dataclass(frozen=True)
class TrainedReplay:
    """The run's model trained under one variant on the recorded times: (simulated time [s], update,
    validation loss) points and when it reached the target (None: not within the horizon)."""

    spec: VariantSpec
    points: tuple[tuple[float, int, float], ...]
    time_to_target: Optional[float]

    @property
    def final_loss(self) -> float:
        return self.points[-1][2]


@dataclass(frozen=True)
class ReplayTraining:
    """Every trained replay; ``target`` is p_sync's final loss times ``1 + gap``."""

    runs: tuple[TrainedReplay, ...]
    target: float
    gap: float
    metric: str = Loss.VAL

    @property
    def baseline(self) -> TrainedReplay:
        return self.runs[0]

    def speedup(self, run: TrainedReplay) -> Optional[float]:
        """p_sync's time to the target over ``run``'s (None when either did not reach it)."""
        base = self.baseline.time_to_target
        if base is None or run.time_to_target is None or run.time_to_target <= 0:
            return None
        return base / run.time_to_target


@dataclass
class Advice:
    """Everything the advisor concluded about one recorded run."""

    source: str
    trace: StepTrace
    fit: TraceFit
    table: PredictionTable
    echo: EchoPrediction
    combined: list[CombinedPrediction]
    recommendation: Recommendation
    replay: Optional[ReplayTraining] = None
    out: Optional[Path] = None
    files: dict[str, Path] = field(default_factory=dict)
    max_staleness: float = MAX_STALENESS
    synchronous_run: bool = False  # run.json says the recorded run was p_sync

    def best_per_variant(self) -> list[Prediction]:
        """One row per variant: the shortlisted one, else the one of largest gain."""
        table, chosen = self.table, {r.spec.name: r for r in self.table.shortlist(self.max_staleness)}
        for row in sorted(table.rows, key=table.gain, reverse=True):
            chosen.setdefault(row.spec.name, row)
        order = ["sync", "k_sync", "k_async", "k_batch_sync", "k_batch_async", "async", "rennala", "ringmaster"]
        return [chosen[name] for name in order if name in chosen]

    def recorded_line(self) -> str:
        """The recorded run's own time per update next to p_sync's prediction (one device, DDP, a
        parameter server's p_sync), and the overhead model calibrated on it."""
        recorded = recorded_time_per_update(self.trace, self.synchronous_run)
        if recorded is None:
            return ""
        sync = next((c for c in self.combined if c.spec.name == "sync"), None)
        with_data = f", {sync.with_data.time_per_update:.4g} with the recorded data times" if sync is not None else ""
        overhead = self.table.overhead
        predicted = overhead.predicted if overhead is not None else self.table.baseline.compute_time_per_update
        line = (f"recorded: {recorded:.4g} s per update (compute, data and sync waits; mean over ranks); p_sync predicted "
                f"{predicted:.4g} from compute alone{with_data}")
        if overhead is not None:
            return (line + f"; overhead model calibrated on it: the {overhead.total:.3g} s more per update "
                    f"({overhead.total / predicted:.0%}) = {overhead.describe()}, included in the predictions")
        if recorded > 1.02 * predicted:
            line += (f" (the {recorded - predicted:.3g} s more per update are communication and the loop's own work, which "
                     "these predictions leave out)")
        return line

    def text(self) -> str:
        """The answer for the terminal."""
        fit, table = self.fit, self.table
        lines = [f"advice for {self.source} ({self.trace.kind}, {len(self.trace.ranks)} recorded ranks; "
                 f"predicted for P={table.learners} learners)", "", "compute times per rank:"]
        lines += _text_table(*_fit_rows(fit))
        for note in (*fit.notes, *table.notes):
            lines.append(f"note: {note}")
        lines += ["", f"predictions, best of each variant ({len(table.rows)} configurations"
                  + (f" in {self.files[GRID_FILE]}" if GRID_FILE in self.files else "") + "):"]
        header, rows, legend = _prediction_rows(self, self.best_per_variant())
        lines += _text_table(header, rows)
        lines += [f"  [{tag}] {text}" for text, tag in legend.items()]
        recorded = self.recorded_line()
        if recorded:
            lines += ["", recorded]
        lines += ["", "echo: " + _echo_line(self.echo)]
        if self.combined:
            lines += ["with each learner's recorded data times (time per update [s]):"]
            lines += _text_table(*_combined_rows(self))
        if self.replay is not None:
            lines += ["", f"trained on the recorded times (target: p_sync's final {self.replay.metric} "
                      f"x {1 + self.replay.gap:g} = {self.replay.target:.4g}"
                      + ("; predicted times include the overhead model" if self.table.overhead is not None else "") + "):"]
            lines += _text_table(*_replay_rows(self.replay))
        lines += ["", "recommendation:"] + [f"- {line}" for line in self.recommendation.lines]
        lines.append(f"  try it on simulated learners: {self.recommendation.command}")
        if HTML_FILE in self.files:
            lines.append(f"advice: {self.files[HTML_FILE]}")
        return "\n".join(lines)


# -- the analysis ---------------------------------------------------------------------------------
def advise(path: Union[str, Path], out: Optional[Union[str, Path]] = None, learners: Optional[int] = None,
           max_k: Optional[int] = None, replay: bool = False, source: Source = "trace",
           gradients: int = DEFAULT_GRADIENTS, max_staleness: float = MAX_STALENESS,
           max_factor: int = DEFAULT_MAX_FACTOR, replay_steps: Optional[int] = None, target_gap: float = 0.01,
           trust_config: bool = False, write: bool = True, seed: int = 0, overhead: bool = True,
           replay_variants: int = REPLAY_VARIANTS) -> Advice:
    """Advise on the recorded run at ``path`` (a run directory with ``step_times.csv``, that file, or a
    compute-time trace): fit, predict, recommend; with ``write``, the HTML page, its figures and
    ``predictions.csv`` into ``out`` (default ``<run dir>/advice``). ``replay`` trains the run's own
    model (rebuilt from ``.hydra/config.yaml``) under p_sync and the first ``replay_variants``
    shortlisted variants on the recorded times. ``overhead``: where the trace tells the recorded run's
    real time per update, calibrate the overhead model on it and include it in the predictions and
    the replay's times (:func:`~lightning_echo.advisor.predict.calibrate_overhead`). One-line
    ConfigError for bad input."""
    path = Path(path).expanduser()
    if learners is not None:
        positive_int("--learners", learners)
    if max_k is not None:
        positive_int("--max-k", max_k)
    positive_int("--gradients", gradients)
    positive_int("--replay-variants", replay_variants)
    if not (math.isfinite(max_staleness) and max_staleness >= 0):
        raise ConfigError("--max-staleness", max_staleness, "must be a finite number >= 0")
    if not (math.isfinite(target_gap) and target_gap >= 0):
        raise ConfigError("--target-gap", target_gap, "must be a finite number >= 0")
    run_dir = _run_directory(path)
    _refuse_simulated_run(run_dir, path)
    if replay and (run_dir is None or not (run_dir / SAVED_CONFIG).is_file()):
        raise ConfigError("--replay", True, f"needs the run directory's {SAVED_CONFIG} to rebuild the model "
                          f"(a command-line run); {path} has none: advise without --replay")
    folder = Path(out).expanduser() if out is not None else (run_dir or path.parent) / ADVICE_DIR
    writes = write or replay  # a replay reads the compute times from the folder
    if writes:
        writable_directory("--out", str(folder), folder)
    trace = read_step_trace(path)
    fit = fit_step_trace(trace)
    synchronous = _recorded_p_sync(run_dir)
    calibrated = calibrate_overhead(trace, fit, synchronous, source, gradients, seed) if overhead else None
    table = predict(fit, learners=learners, source=source, gradients=gradients, max_k=max_k, seed=seed,
                    overhead=calibrated)
    echo = echo_prediction(trace, [r.rank for r in fit.ranks], max_factor=max_factor)
    shortlist = [r.spec for r in table.shortlist(max_staleness) if r.spec.name != "sync"]
    together = combined(fit, trace, shortlist, table, source=source, gradients=gradients, max_factor=max_factor,
                        seed=seed) if table.learners > 1 or echo.data_bound_ranks else []
    compute_csv = folder / COMPUTE_FILE
    overrides = saved_overrides(run_dir)
    recommendation = recommend(fit, table, echo, together, max_staleness, compute_csv if writes else None,
                               run_overrides=overrides)
    advice = Advice(str(path), trace, fit, table, echo, together, recommendation, out=folder if write else None,
                    max_staleness=max_staleness, synchronous_run=synchronous)
    if writes:
        folder.mkdir(parents=True, exist_ok=True)
        _write_compute_times(fit, table.learners, compute_csv)
        advice.files[COMPUTE_FILE] = compute_csv
        data_times = learner_data_time_lists(trace, [r.rank for r in fit.ranks], table.learners) if together else None
        if data_times is not None:
            _write_times(data_times, folder / DATA_FILE)
            advice.files[DATA_FILE] = folder / DATA_FILE
    if replay:
        assert run_dir is not None
        specs = [table.baseline.spec, *shortlist[:replay_variants]]
        advice.replay = replay_training(run_dir, specs, compute_csv, table, steps=replay_steps, gap=target_gap,
                                        trust_config=trust_config)
        advice.recommendation = recommend(fit, table, echo, together, max_staleness, compute_csv, advice.replay, overrides)
    if write:
        write_advice(advice, folder)
    return advice


def _run_directory(path: Path) -> Optional[Path]:
    """The run directory ``path`` is or lies in (its steps file's folder), else None."""
    if path.is_dir():
        return path
    if path.name in (STEPS_FILE, COMPUTE_FILE) and (path.parent / RUN_FILE).is_file():
        return path.parent
    return None


def _recorded_p_sync(run_dir: Optional[Path]) -> bool:
    """Whether the run directory's ``run.json`` says it ran p_sync (every learner step one update)."""
    if run_dir is None or not (run_dir / RUN_FILE).is_file():
        return False
    try:
        return read_run_record(run_dir).get("config", {}).get("algorithm") == "p_sync"
    except (OSError, ValueError, AttributeError):
        return False


def _refuse_simulated_run(run_dir: Optional[Path], path: Path) -> None:
    """A run on simulated learners has no real compute times to advise on."""
    if run_dir is None or not (run_dir / RUN_FILE).is_file():
        return
    try:
        clock = read_run_record(run_dir).get("config", {}).get(CLOCK)
    except (OSError, ValueError, AttributeError):
        return
    if clock not in (None, "wall_clock"):
        raise ConfigError("trace", str(path), f"comes from a run on a {clock} clock (simulated learners): its times are "
                          "drawn from stale.delay, not measured; advise on a run on real hardware")


# Overrides of the recorded run that the command trying a variant replaces (the variant, its learners'
# times and backend, the recorder).
_REPLACED = ("algorithm", "backend", "stale.k", "stale.learners", "stale.max_delay", "stale.stop_stale", "stale.delay",
             "record.", "ps.", "hydra.", "loader", "echo.", "experiment")


def try_command(spec: VariantSpec, compute_csv: Optional[Path] = None, run_overrides: Sequence[str] = (),
                data_csv: Optional[Path] = None, echo: bool = False) -> str:
    """The command that runs ``spec`` on simulated learners replaying ``compute_csv`` (and each learner's
    data times ``data_csv``, echoing ``auto`` with ``echo``), with the recorded run's other overrides
    (its data, model, optimizer, ...)."""
    kept = [o for o in run_overrides if not o.lstrip("+~").startswith(_REPLACED)]
    words = ["lightning-echo", "experiment=single", *kept, *command_overrides(spec)]
    if compute_csv is not None:
        words.append(f"stale.delay.trace={compute_csv}")
    if data_csv is not None:
        words += ["loader=throttle", f"loader.trace={data_csv}"] + (["echo.factor=auto"] if echo else [])
    return " ".join(shlex.quote(w) for w in words)


def saved_overrides(run_dir: Optional[Path]) -> list[str]:
    """The command-line overrides a run was started with (``.hydra/overrides.yaml``), if any."""
    path = run_dir / OVERRIDES if run_dir is not None else None
    if path is None or not path.is_file():
        return []
    try:
        import yaml

        loaded = yaml.safe_load(path.read_text())
    except (OSError, ValueError, ImportError):
        return []
    return [str(o) for o in loaded] if isinstance(loaded, list) else []


def recommend(fit: TraceFit, table: PredictionTable, echo: EchoPrediction, together: Sequence[CombinedPrediction],
              max_staleness: float = MAX_STALENESS, compute_csv: Optional[Path] = None,
              trained: Optional[ReplayTraining] = None, run_overrides: Sequence[str] = ()) -> Recommendation:
    """The recommendation and its reasons, from the numbers (see :mod:`.predict` for the rule)."""
    base = table.baseline
    p = table.learners
    lines: list[str] = []
    best = fit.best
    verdict = "accepted" if best.acceptable else "rejected"
    lines.append(f"compute times: {best.describe()} fits best (KS {best.ks:.3f}, {verdict} at 5%: critical "
                 f"{best.ks_critical:.3f})" + ("" if best.acceptable else "; no family fits, so the numbers replay the recorded trace"))
    tail = fit.pooled.p99 / fit.pooled.median
    shape = (f"speeds are equal (slowest rank {fit.slowest_over_median:.2f}x the median)" if fit.homogeneous
             else f"the slowest rank is {fit.slowest_over_median:.1f}x the median")
    shape += f", p99 is {tail:.1f}x the median"
    shortlist = table.shortlist(max_staleness)
    top = shortlist[0] if shortlist else base
    choice, enough = base.spec, True
    if p == 1:
        lines.append("one learner: the straggler variants need several (predict P learners like this one with --learners P)")
    elif top is base or table.gain(top) < ENOUGH:
        others = [r for r in shortlist if r is not base] or sorted((r for r in table.rows if r is not base), key=table.gain, reverse=True)
        runner = others[0]
        lines.append(f"sync is enough: the best remedy, {runner.label}, is predicted only {table.gain(runner):.2f}x "
                     f"at equal gradients (below {ENOUGH:g}x): {shape}")
    else:
        choice, enough = top.spec, False
        idle = 1 - base.replayed.utilisation
        batch = (f"the same {p} gradients per update" if top.gradients_per_update == p else
                 f"{top.gradients_per_update} gradients per update vs {p}; {table.gain(top):.1f}x at equal gradients")
        lines.append(f"{top.label} is predicted {table.speedup(top):.1f}x faster per update than p_sync ({batch}), "
                     f"mean staleness {top.mean_staleness:.2f} (p99 {top.p99_staleness:.0f}), wasted work {top.wasted_fraction:.0%}")
        lines.append(f"why: {shape}; under p_sync the learners idle {idle:.0%} of the time waiting for the slowest")
        if top.mean_staleness > 0:
            fresh = next((r for r in shortlist if r.mean_staleness == 0 and r is not base and table.gain(r) >= ENOUGH), None)
            if fresh is not None:
                lines.append(f"without staleness: {fresh.label}, {table.speedup(fresh):.1f}x per update "
                             f"({table.gain(fresh):.1f}x at equal gradients), wasted work {fresh.wasted_fraction:.0%}")
    lines.append(_echo_line(echo))
    chosen = next((c for c in together if c.spec == choice), None)
    sync = next((c for c in together if c.spec.name == "sync"), None)
    echo_pays = chosen is not None and chosen.with_data.time_per_update >= ECHO_WORTH * chosen.with_echo.time_per_update
    if chosen is not None and sync is not None:
        gain = sync.with_data.time_per_update / chosen.with_echo.time_per_update
        alone = sync.with_data.time_per_update / chosen.with_data.time_per_update
        lines.append(f"with the recorded data times, {label(choice)} + echo auto is predicted {gain:.1f}x faster per update "
                     f"than p_sync ({alone:.1f}x without echo; {chosen.with_echo.echoed_fraction:.0%} of its gradients on "
                     "echoed batches)")
    if trained is not None:
        fastest = _fastest_to_target(trained)
        if fastest is not None and fastest.spec != choice:
            lines.append(f"the trained replay (one seed) reached the target first with {label(fastest.spec)}: "
                         f"{trained.speedup(fastest):.2f}x p_sync's time to the target; it is the choice")
            choice, enough = fastest.spec, False
        lines.append(_trained_line(trained, choice))
    data_csv = compute_csv.parent / DATA_FILE if compute_csv is not None and together else None
    return Recommendation(choice, enough, tuple(lines), try_command(choice, compute_csv, run_overrides, data_csv, echo_pays))


def _fastest_to_target(trained: ReplayTraining) -> Optional[TrainedReplay]:
    """The trained run that reached the target soonest, when it beat p_sync by at least ENOUGH."""
    reached = [r for r in trained.runs[1:] if (trained.speedup(r) or 0.0) >= ENOUGH]
    return min(reached, key=lambda r: r.time_to_target or math.inf, default=None)


def _echo_line(echo: EchoPrediction) -> str:
    f = echo.data_wait_fraction
    if echo.adds_little:
        return f"echo would add little to the recorded run: data wait is {f:.0%}"
    rank = echo.ranks[echo.data_wait_fractions.index(f)]
    return (f"rank {rank} waits for data {f:.0%} of its step: echo factor auto would reach about {echo.auto_factor:.1f} "
            f"(cap {echo.max_factor}) and step at most {echo.speedup_bound:.1f}x faster (Choi et al.: "
            "time(e) = max(t_upstream, e t_downstream); an echoed step is worth at most a fresh one)")


def _trained_line(trained: ReplayTraining, choice: VariantSpec) -> str:
    base = trained.baseline
    run = next((r for r in trained.runs if r.spec == choice), None)
    if base.time_to_target is None:
        return "trained replay: p_sync did not reach its own target (raise --replay-steps)"
    if run is None or run is base:
        return f"trained replay: p_sync reaches the target {trained.target:.4g} in {base.time_to_target:.3g} s"
    if run.time_to_target is None:
        return f"trained replay: {label(choice)} did not reach p_sync's target {trained.target:.4g} within p_sync's time"
    return (f"trained replay: {label(choice)} reaches the target {trained.target:.4g} in {run.time_to_target:.3g} s, "
            f"p_sync in {base.time_to_target:.3g} s ({trained.speedup(run):.2f}x)")


# -- replaying the run's own training --------------------------------------------------------------
def replay_training(run_dir: Path, specs: Sequence[VariantSpec], compute_csv: Path, table: Optional[PredictionTable] = None,
                    steps: Optional[int] = None, gap: float = 0.01, trust_config: bool = False) -> ReplayTraining:
    """Train the run's model (its saved config, without the loader's throttle) under each of ``specs``
    (p_sync first) on simulated learners replaying ``compute_csv``, each for p_sync's predicted time;
    the validation loss against the predicted time, and the time to p_sync's final loss x (1 + gap).
    With ``table.overhead`` the predicted time includes it as the table's times do: each variant's
    learners replay the recorded times plus its per-computation part (:meth:`Overhead.extra`), and
    its per-update part is added to the simulated clock at every update."""
    import tempfile

    from omegaconf import OmegaConf  # the app layer: only for --replay

    from lightning_echo.app.resume import saved_config
    from lightning_echo.app.trust import check_trusted

    cfg = saved_config(run_dir)
    if not trust_config:
        check_trusted(cfg, run_dir)
    OmegaConf.set_struct(cfg, False)
    cfg.loader = {"name": "none"}  # the learners' time is the recorded compute time alone
    configured = cfg.trainer.get("max_steps", -1)
    sync_steps = steps or (min(DEFAULT_REPLAY_STEPS, configured) if isinstance(configured, int) and configured > 0
                           else DEFAULT_REPLAY_STEPS)
    positive_int("--replay-steps", sync_steps)
    overhead = table.overhead if table is not None else None
    with tempfile.TemporaryDirectory() as folder:

        def train(spec: VariantSpec, max_steps: int, horizon: Optional[float]) -> TrainedReplay:
            per_gradient, per_update = overhead.extra(spec) if overhead is not None else (0.0, 0.0)
            times = _shifted_csv(compute_csv, per_gradient, Path(folder) / f"{len(runs)}.csv") if per_gradient else compute_csv
            return _train_one(cfg, spec, times, max_steps, horizon=horizon, per_update=per_update)

        runs: list[TrainedReplay] = []
        runs.append(train(specs[0], sync_steps, None))
        horizon = runs[0].points[-1][0]
        for spec in specs[1:]:
            predicted = table.row(spec.name, spec.k, spec.max_delay, spec.stop_stale).time_per_update if table else None
            updates = math.ceil(horizon / predicted) if predicted else sync_steps * spec.learners
            runs.append(train(spec, max(1, math.ceil(1.5 * updates) + 10), horizon))
    target = runs[0].final_loss * (1 + gap)
    runs = [TrainedReplay(r.spec, r.points, _time_to(r.points, target)) for r in runs]
    return ReplayTraining(tuple(runs), target, gap)


def _time_to(points: Sequence[tuple[float, int, float]], target: float) -> Optional[float]:
    """When the loss first reaches ``target``, interpolated linearly between validations."""
    for (t0, _, l0), (t1, _, l1) in zip(points, points[1:]):
        if l1 <= target:
            return t1 if l0 == l1 or l0 <= target else t0 + (t1 - t0) * (l0 - target) / (l0 - l1)
    return points[0][0] if points and points[0][2] <= target else None


def _shifted_csv(compute_csv: Path, extra: float, path: Path) -> Path:
    """``compute_csv``'s times (``learner,seconds``), each ``extra`` seconds longer, written to ``path``."""
    with compute_csv.open(newline="") as stream:
        rows = list(csv.reader(stream))
    _write_times_rows([(row[0], float(row[1]) + extra) for row in rows[1:] if row], path)
    return path


def _write_times_rows(rows: Sequence[tuple[Any, float]], path: Path) -> None:
    with path.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["learner", "seconds"])
        for learner, seconds in rows:
            writer.writerow([learner, repr(seconds)])


def _train_one(cfg: Any, spec: VariantSpec, compute_csv: Path, max_steps: int, horizon: Optional[float],
               per_update: float = 0.0) -> TrainedReplay:
    """One replayed training; its points' times are the simulated clock plus ``per_update`` per update."""
    from lightning_echo import lightning_internals
    from lightning_echo.app.builders import build_datamodule, build_model, quiet_lightning
    from lightning_echo.callbacks.progress import TrainingProgress
    from lightning_echo.lightning_namespace import pl
    from lightning_echo.stragglers import SimulatedLearnersStrategy

    class LossOnClock(pl.Callback):
        def __init__(self) -> None:
            self.points: list[tuple[float, int, float]] = []

        def on_validation_end(self, trainer: Any, module: Any) -> None:
            loss = trainer.callback_metrics.get(Loss.VAL)
            if not trainer.sanity_checking and loss is not None:
                self.points.append((trainer.strategy.clock_s + per_update * trainer.global_step, trainer.global_step,
                                    float(loss)))

        def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
            if horizon is not None and trainer.strategy.clock_s + per_update * trainer.global_step >= horizon:
                trainer.should_stop = True

    stale = cfg.get("stale") or {}
    rules = {key: stale.get(key) for key in ("lr_rule", "c", "rule_learners", "smoothness", "drop", "momentum_correction")
             if stale.get(key) is not None}
    quiet = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False,
             "accelerator": "cpu", "devices": 1}
    with quiet_lightning():
        lightning_internals.seed_everything_quietly(int(cfg.get("seed", 0)))
        datamodule = build_datamodule(cfg)
        model = build_model(cfg, datamodule.spec)
        start = _validation_loss(pl.Trainer(**quiet), model, datamodule)
        strategy = SimulatedLearnersStrategy(spec.name, learners=spec.learners, k=spec.k, max_delay=spec.max_delay,
                                             stop_stale=spec.stop_stale, delay={"trace": str(compute_csv)},
                                             seed=int(cfg.get("seed", 0)), **rules)
        recorder = LossOnClock()
        expected = max_steps if horizon is None else max_steps / 1.5
        trainer = pl.Trainer(strategy=strategy, max_steps=max_steps, max_epochs=-1, num_sanity_val_steps=0,
                             val_check_interval=max(1, int(expected // VALIDATIONS)), check_val_every_n_epoch=None,
                             callbacks=[TrainingProgress(), recorder], **quiet)
        trainer.fit(model, datamodule=datamodule)
        end = _validation_loss(pl.Trainer(**quiet), model, datamodule)
    points = [(0.0, 0, start), *recorder.points]
    if not points or points[-1][1] != trainer.global_step:
        points.append((strategy.clock_s + per_update * trainer.global_step, trainer.global_step, end))
    return TrainedReplay(spec, tuple(points), None)


def _validation_loss(trainer: Any, model: Any, datamodule: Any) -> float:
    results = trainer.validate(model, datamodule=datamodule, verbose=False)
    value = (results[0] if results else {}).get(Loss.VAL)
    if value is None:
        raise ConfigError("--replay", True, f"the run's model logs no {Loss.VAL}: the replay compares validation losses")
    return float(value)


# -- writing -----------------------------------------------------------------------------------
def _write_compute_times(fit: TraceFit, learners: int, path: Path) -> None:
    """The compute times the predictions replayed, one sequence per learner (the delay models' trace format)."""
    _write_times([fit.ranks[learner % fit.learners].times for learner in range(learners)], path)


def _write_times(per_learner: Sequence[Sequence[float]], path: Path) -> None:
    _write_times_rows([(learner, seconds) for learner, times in enumerate(per_learner) for seconds in times], path)


def write_advice(advice: Advice, folder: Path) -> Path:
    """``predictions.csv``, the figures and ``index.html`` into ``folder``; returns the page."""
    folder.mkdir(parents=True, exist_ok=True)
    grid = folder / GRID_FILE
    with grid.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["configuration", "variant", "k", "max_delay", "stop_stale", "time_per_update_s", "updates_per_s",
                         "speedup", "gradients_per_update", "gain", "mean_staleness", "p99_staleness", "wasted_fraction",
                         "replayed_time_per_update_s", "replay_standard_error_s", "time_method", "staleness_method",
                         "wasted_method", "compute_only_time_per_update_s", "overhead_method"])
        for row in advice.table.rows:
            s = row.spec
            writer.writerow([row.label, s.name, s.k, s.max_delay if s.max_delay is not None else "", s.stop_stale,
                             repr(row.time_per_update), repr(row.updates_per_s), repr(advice.table.speedup(row)), s.k,
                             repr(advice.table.gain(row)), repr(row.mean_staleness), repr(row.p99_staleness),
                             repr(row.wasted_fraction), repr(row.replayed.time_per_update), repr(row.replayed.standard_error),
                             row.methods["time"], row.methods["staleness"], row.methods["wasted"],
                             repr(row.compute_time_per_update), row.methods.get("overhead", "")])
    advice.files[GRID_FILE] = grid
    figures = {SPEEDUP_FIGURE: _speedup_figure(advice, folder / SPEEDUP_FIGURE)}
    if advice.replay is not None:
        figures[LOSS_FIGURE] = _loss_figure(advice.replay, folder / LOSS_FIGURE)
    advice.files.update(figures)
    page = folder / HTML_FILE
    page.write_text(_html(advice, figures), encoding="utf-8")
    advice.files[HTML_FILE] = page
    return page


def _pyplot() -> Any:
    import matplotlib  # lazily: choosing the Agg backend must not happen on importing the package

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _speedup_figure(advice: Advice, path: Path) -> Path:
    plt = _pyplot()
    table = advice.table
    figure, ax = plt.subplots(figsize=(6.4, 4.0))
    for name in ("k_sync", "k_async", "k_batch_sync", "k_batch_async", "rennala"):
        rows = sorted((r for r in table.rows if r.spec.name == name), key=lambda r: r.spec.k)
        if rows:
            ax.plot([r.spec.k for r in rows], [table.speedup(r) for r in rows], marker="o", markersize=3, label=name)
    for name, style in (("async", ":"), ("sync", "--")):
        row = next((r for r in table.rows if r.spec.name == name), None)
        if row is not None:
            ax.axhline(table.speedup(row), linestyle=style, color="0.4", linewidth=1, label=label(row.spec))
    from matplotlib.ticker import ScalarFormatter

    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ks = sorted({r.spec.k for r in table.rows})
    ax.set_xticks(ks)
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.set_xlabel("K (Rennala's B): gradients per update")
    ax.set_ylabel("predicted updates per second / p_sync's")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(f"predicted speed-up per update, P = {table.learners}", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _loss_figure(trained: ReplayTraining, path: Path) -> Path:
    from lightning_echo.report.figures import plain

    plt = _pyplot()
    figure, ax = plt.subplots(figsize=(6.4, 4.0))
    for run in trained.runs:
        ax.plot([p[0] for p in run.points], [p[2] for p in run.points], marker="o", markersize=2, linewidth=1.4,
                label=plain(label(run.spec)))
    ax.axhline(trained.target, color="0.3", linestyle="--", linewidth=1, label=plain(f"target {trained.target:.4g}"))
    ax.set_xlabel("predicted time [s] (simulated clock on the recorded compute times)")
    ax.set_ylabel(plain(trained.metric))
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("error against predicted time: the run's model on the recorded times", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


# -- tables -------------------------------------------------------------------------------------
def _fit_rows(fit: TraceFit) -> tuple[list[str], list[list[str]]]:
    header = ["rank", "steps", "median [s]", "p99 [s]", "speed", "best fit", "KS", "KS 5%", "BIC"]
    rows = []
    for rank, speed in zip(fit.ranks, fit.speeds):
        rows.append(_fit_row(str(rank.rank), rank, f"{speed:.2f}"))
    rows.append(_fit_row("pooled", fit.pooled, "1 (equal)" if fit.homogeneous else "normalised"))
    return header, rows


def _fit_row(name: str, rank: Any, speed: str) -> list[str]:
    best = rank.best
    return [name, str(len(rank.times)), f"{rank.median:.4g}", f"{rank.p99:.4g}", speed, best.describe(), f"{best.ks:.3f}",
            f"{best.ks_critical:.3f}", f"{best.bic:.1f}"]


def _short_method(text: str) -> str:
    return "closed" if text.startswith("closed form") else "exact" if text.startswith("exact") else "replay"


def _prediction_rows(advice: Advice, rows: Sequence[Prediction]) -> tuple[list[str], list[list[str]], dict[str, str]]:
    table = advice.table
    shortlisted = {r.spec for r in table.shortlist(advice.max_staleness)}
    legend: dict[str, str] = {}
    overhead = table.overhead is not None
    header = ["configuration", "s/update", *(["compute only"] if overhead else []), "updates/s", "x p_sync", "grads/update",
              "gain", "staleness mean/p99", "wasted", "how (time; staleness; wasted)", "shortlist"]
    out = []
    for row in rows:
        tags = []
        for key in ("time", "staleness", "wasted"):
            text = row.methods[key]
            legend.setdefault(text, f"{_short_method(text)}{sum(1 for t in legend if _short_method(t) == _short_method(text)) + 1}")
            tags.append(legend[text])
        why = "yes" if row.spec in shortlisted else _why_not(table, row, advice.max_staleness)
        out.append([row.label, f"{row.time_per_update:.4g}", *([f"{row.compute_time_per_update:.4g}"] if overhead else []),
                    f"{row.updates_per_s:.4g}", f"{table.speedup(row):.2f}", str(row.gradients_per_update),
                    f"{table.gain(row):.2f}", f"{row.mean_staleness:.2f} / {row.p99_staleness:.0f}",
                    f"{row.wasted_fraction:.0%}", "; ".join(tags), why])
    if overhead:
        legend.setdefault("s/update includes the overhead calibrated on the recorded run (below); compute only: without it",
                          "overhead")
    return header, out, legend


def _why_not(table: PredictionTable, row: Prediction, max_staleness: float) -> str:
    if row.spec.k < 0.5 * table.learners:
        return f"no: {row.spec.k} gradient{'s' if row.spec.k != 1 else ''} per update (< P/2: retune the step size)"
    return f"no: staleness {row.mean_staleness:.1f} > {max_staleness:g}"


def _combined_rows(advice: Advice) -> tuple[list[str], list[list[str]]]:
    header = ["configuration", "compute only", "with data", "with data + echo auto", "x p_sync (with data)",
              "echoed gradients", "data wait"]
    sync = next(c for c in advice.combined if c.spec.name == "sync")
    rows = []
    for c in advice.combined:
        rows.append([c.label, f"{c.compute_only:.4g}", f"{c.with_data.time_per_update:.4g}", f"{c.with_echo.time_per_update:.4g}",
                     f"{sync.with_data.time_per_update / c.with_data.time_per_update:.2f} -> "
                     f"{sync.with_data.time_per_update / c.with_echo.time_per_update:.2f}",
                     f"{c.with_echo.echoed_fraction:.0%}",
                     f"{c.with_data.data_wait_fraction:.0%} -> {c.with_echo.data_wait_fraction:.0%}"])
    return header, rows


def _replay_rows(trained: ReplayTraining) -> tuple[list[str], list[list[str]]]:
    header = ["configuration", "updates", "predicted time [s]", f"final {trained.metric}", "time to target [s]", "speed-up"]
    rows = []
    for run in trained.runs:
        speedup = trained.speedup(run)
        rows.append([label(run.spec), str(run.points[-1][1]), f"{run.points[-1][0]:.4g}", f"{run.final_loss:.4g}",
                     f"{run.time_to_target:.4g}" if run.time_to_target is not None else "not reached",
                     f"{speedup:.2f}x" if speedup is not None else "-"])
    return header, rows


def _text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    line = lambda cells: "  " + "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return [line(header), "  " + "  ".join("-" * w for w in widths), *(line(r) for r in rows)]


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 76em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: left; }
th { background: #f2f2f2; }
figure { display: inline-block; margin: 0.5em; }
img { max-width: 100%; }
"""


def _html(advice: Advice, figures: dict[str, Path]) -> str:
    """The page: everything from the trace (paths, labels) is escaped; figures are embedded."""
    title = f"lightning-echo advice: {advice.source}"
    table = advice.table
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{escape(title)}</title>",
             f"<style>{_STYLE}</style></head><body><h1>{escape(title)}</h1>",
             f"<p>{escape(advice.trace.kind)} run, {len(advice.trace.ranks)} recorded ranks; predicted for "
             f"P = {table.learners} learners. Times are the recorded compute times (forward and backward)"
             + (f" plus the overhead calibrated on the recorded run ({escape(table.overhead.describe())})"
                if table.overhead is not None else ", without communication") + ".</p>", "<h2>Recommendation</h2><ul>"]
    parts += [f"<li>{escape(line)}</li>" for line in advice.recommendation.lines]
    parts.append(f"</ul><p>Try it on simulated learners: <code>{escape(advice.recommendation.command)}</code></p>")
    parts += ["<h2>Compute times</h2>", _html_table(*_fit_rows(advice.fit))]
    all_fits = [[str(r.rank), f.family, f.describe(), f"{f.log_likelihood:.1f}", f"{f.aic:.1f}", f"{f.bic:.1f}",
                 f"{f.ks:.4f}", "yes" if f.acceptable else "no"] for r in (*advice.fit.ranks, advice.fit.pooled) for f in r.fits]
    parts.append("<details><summary>every family on every rank (rank -1: pooled)</summary>"
                 + _html_table(["rank", "family", "fit", "log-likelihood", "AIC", "BIC", "KS", "accepted at 5%"], all_fits)
                 + "</details>")
    parts += [f"<p>Note: {escape(n)}</p>" for n in (*advice.fit.notes, *table.notes)]
    header, rows, legend = _prediction_rows(advice, advice.best_per_variant())
    parts += ["<h2>Predictions: best of each variant</h2>", _html_table(header, rows),
              _html_table(["tag", "how"], [[tag, text] for text, tag in legend.items()])]
    header, rows, legend = _prediction_rows(advice, table.rows)
    parts += [f"<details><summary>all {len(table.rows)} configurations</summary>", _html_table(header, rows),
              _html_table(["tag", "how"], [[tag, text] for text, tag in legend.items()]), "</details>"]
    if advice.recorded_line():
        parts.append(f"<p>{escape(advice.recorded_line())}</p>")
    parts += ["<h2>Echo</h2>", f"<p>{escape(_echo_line(advice.echo))}</p>",
              _html_table(["rank", "data wait", "auto factor"],
                          [[str(r), f"{f:.1%}", f"{advice.echo.factor(f):.2f}"]
                           for r, f in zip(advice.echo.ranks, advice.echo.data_wait_fractions)])]
    if advice.combined:
        parts += ["<p>With each learner's recorded data times (time per update [s]):</p>", _html_table(*_combined_rows(advice))]
    if advice.replay is not None:
        parts += ["<h2>Trained on the recorded times</h2>",
                  f"<p>Target: p_sync's final {escape(advice.replay.metric)} x {1 + advice.replay.gap:g} = "
                  f"{advice.replay.target:.4g}.</p>", _html_table(*_replay_rows(advice.replay))]
    parts.append("<h2>Figures</h2>")
    for name, figure_path in figures.items():
        encoded = base64.b64encode(figure_path.read_bytes()).decode("ascii")
        parts.append(f"<figure><img alt='{escape(name)}' src='data:image/png;base64,{encoded}'>"
                     f"<figcaption>{escape(name)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)
