"""Mishchenko et al. (2022)'s comparison on least squares, with Rennala SGD and Ringmaster ASGD.

Least squares (n = 10000, d = 400, batch 256), M = 40 workers whose compute times are spread evenly
over [1, 10] (+-10% jitter): F(x) - F* against gradients and against simulated time for minibatch
SGD, asynchronous SGD with a constant and with the delay-adaptive step, Rennala SGD and Ringmaster
ASGD, each at the best step size of a small grid; plus the histogram of asynchronous SGD's delays.

    python recipes/mishchenko_least_squares.py          # recipes/results/mishchenko_least_squares.{md,png,json}
    python recipes/mishchenko_least_squares.py --out /tmp/m --horizon-scale 0.05 --no-tune   # a quick smoke run
"""

from __future__ import annotations

import argparse
import functools
import math
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
import torch

from lightning_echo.data import LeastSquaresDataModule
from lightning_echo.data.modules.synthetic import least_squares_optimum
from lightning_echo.models import LinearRegression

from simulated_runs import (COLORS, Curve, Method, command_lines, fit, fmt, fmt_time, full_objective, pyplot,
                            recipe_arguments, replayed_staleness, runtime_line, save_curves, save_figure, start)

# -- Mishchenko et al. (2022) least squares ---------------------------------------------------------------
MISH_LEARNERS = 40
MISH_CONDITION = 10.0
MISH_TARGETS = (1e-2, 1e-3, 1e-4)
MISH_TARGET = 1e-4  # step sizes are tuned for the time to reach F - F* <= this
# Step sizes: the defaults are the grid's winners (``--no-tune`` uses them); the grid is what the tuning tries.
MISH_LRS = {"sync": 1.4, "async": 0.04, "async_adaptive": 0.04, "rennala": 1.4, "ringmaster": 0.05}
MISH_GRID = {"sync": (1.0, 1.4, 1.7), "async": (0.01, 0.02, 0.04, 0.08), "async_adaptive": (0.02, 0.04, 0.08),
             "rennala": (1.0, 1.4, 1.7), "ringmaster": (0.02, 0.05, 0.1)}


def mishchenko_methods(lrs: dict[str, float], learners: int, b: int, r: int) -> list[Method]:
    return [Method("sync", f"minibatch SGD (waits for all {learners})", "sync", lrs["sync"]),
            Method("async", "async SGD, constant step", "async", lrs["async"]),
            Method("async_adaptive", "async SGD, delay-adaptive γ·min(1, M/τ)", "async", lrs["async_adaptive"],
                   lr_rule="mishchenko"),
            Method("rennala", f"Rennala SGD (B = {b})", "rennala", lrs["rennala"], k=b),
            Method("ringmaster", f"Ringmaster ASGD (R = {r}, with stops)", "ringmaster", lrs["ringmaster"],
                   max_delay=r, stop_stale=True)]


def score(curve: Curve, horizon: float) -> float:
    """Mean of log10(F - F*) over the evaluations up to ``horizon`` (lower: faster descent, lower floor)."""
    if curve.diverged_at is not None:
        return math.inf
    logs = [math.log10(max(v, 1e-12)) for t, v in zip(curve.times, curve.values) if t <= horizon + 1e-9]
    return statistics.fmean(logs)


def tuning_key(curve: Curve, horizon: float) -> tuple[float, float]:
    """Time to F - F* <= MISH_TARGET (never reached: inf), ties broken by :func:`score`."""
    reached = curve.first_time(MISH_TARGET)
    return (reached if reached is not None else math.inf, score(curve, horizon))


# Targets for comparing whole curves: 1, 2 and 5 times each power of ten, from 1e-2 down.
TARGET_LADDER = tuple(float(f"{m}e-{e}") for e in range(3, 8) for m in (10, 5, 2))


def sci(value: float) -> str:
    """``value`` in the write-up's short scientific notation, three digits: 2.99e-5, 1e-4."""
    if value == 0 or not math.isfinite(value):
        return fmt(value)
    exponent = math.floor(math.log10(abs(value)))
    mantissa = round(value / 10.0 ** exponent, 2)
    if abs(mantissa) >= 10:  # 9.996 rounds up to the next power
        mantissa, exponent = mantissa / 10, exponent + 1
    return f"{mantissa:g}e{exponent}"


def _sooner(a: Optional[float], b: Optional[float]) -> bool:
    """Whether ``a`` comes strictly before ``b`` (None: never within the run)."""
    return a is not None and (b is None or a < b)


CLAIM = "the paper's claim is that it does"


def time_headline(sync: Optional[float], constant: Optional[float], adaptive: Optional[float]) -> str:
    """The headline on the claim, from the times to MISH_TARGET (None: not reached)."""
    wins = [name for name, t in (("constant", constant), ("delay-adaptive", adaptive)) if _sooner(t, sync)]
    if all(t is None for t in (sync, constant, adaptive)):
        return f"**In time, the claim cannot be checked here: no method reaches {sci(MISH_TARGET)}**"
    if len(wins) == 2:
        return "**In time, asynchronous SGD beats minibatch SGD** (the claim)"
    if wins:
        return f"**In time, asynchronous SGD beats minibatch SGD only with the {wins[0]} step** ({CLAIM})"
    return f"**In time, asynchronous SGD does not beat minibatch SGD here** ({CLAIM})"


def gradients_headline(sync: Optional[int], constant: Optional[int], adaptive: Optional[int]) -> str:
    """Which needs fewer gradients to MISH_TARGET, minibatch or asynchronous SGD (None: not reached)."""
    counts = f"{fmt_time(sync)} gradients to 1e-4 against {fmt_time(constant)} and {fmt_time(adaptive)}"
    if all(t is None for t in (sync, constant, adaptive)):
        return f"**Against gradients:** no method reaches {sci(MISH_TARGET)} within the run."
    if _sooner(sync, constant) and _sooner(sync, adaptive):
        return (f"**Against gradients minibatch SGD is ahead** ({counts}): its gradients are fresh and averaged "
                "into one large step near 2/L, while asynchronous SGD must keep γ small because of the delays.")
    return f"**Against gradients minibatch SGD is not ahead here** ({counts})."


def end_against_targets(sync: Curve, asyncs: list[Curve], horizon: float,
                        ladder: tuple[float, ...] = TARGET_LADDER) -> str:
    """Minibatch SGD's F - F* at ``horizon`` against the asynchronous runs', and which is sooner to each
    target of ``ladder`` that all of them reach."""
    end, ends = sync.value_at(horizon), [cv.value_at(horizon) for cv in asyncs]
    values = f"{sci(end)} against {' / '.join(sci(v) for v in ends)} at t = {horizon:g}"
    lower = end < min(ends)
    higher = end > max(ends)
    end_part = (f"minibatch SGD ends lower ({values})" if lower else
                f"asynchronous SGD ends lower ({values})" if higher else
                f"minibatch SGD ends between the asynchronous runs ({values})")
    reached = [t for t in ladder if all(cv.first_time(t) is not None for cv in [sync, *asyncs])]
    if not reached:
        return f"**End values.** With the step sizes chosen for the {sci(MISH_TARGET)} target, {end_part}."
    sooner = [t for t in reached if all(_sooner(cv.first_time(t), sync.first_time(t)) for cv in asyncs)]
    last = reached[-1]
    times = (f"{sci(last)} in {' and '.join(fmt_time(cv.first_time(last)) for cv in asyncs)} s against "
             f"{fmt_time(sync.first_time(last))} s")
    span = f"from {sci(reached[0])} down to {sci(last)}"
    subject = "" if higher else "asynchronous SGD "  # the end part already names it
    if sooner == reached:
        header = ("Minibatch SGD ends lower, asynchronous SGD gets there sooner." if lower else
                  "Asynchronous SGD gets there sooner.")
        targets = (f"{subject}reaches every target {span} sooner ({times}; targets 1, 2 and 5 × 10^-k)"
                   if len(reached) > 1 else f"{subject}reaches {sci(last)}, the only target all reach, sooner ({times})")
    else:
        header = "Neither is sooner to every target."
        late = ", ".join(sci(t) for t in reached if t not in sooner)
        targets = (f"{subject}is sooner to {len(sooner)} of the {len(reached)} targets {span} "
                   f"(1, 2 and 5 × 10^-k), not to {late}")
    joint = "while" if lower else "and"
    return f"**{header}** With the step sizes chosen for the {sci(MISH_TARGET)} target, {end_part} {joint} {targets}."


def curvature(x: torch.Tensor) -> tuple[float, float]:
    """Smallest and largest eigenvalue of the Hessian A^T A / n of F."""
    eig = torch.linalg.eigvalsh(x.double().T @ x.double() / len(x))
    return float(eig[0]), float(eig[-1])


def mishchenko(args: argparse.Namespace) -> None:
    learners = args.learners or MISH_LEARNERS
    m = args.batch_size or 256
    speeds = [round(1.0 + 9.0 * i / (learners - 1), 4) for i in range(learners)]
    delay = {"distribution": "uniform", "low": 0.9, "high": 1.1, "speeds": speeds}
    horizon = 250.0 * args.horizon_scale
    min_gradients = int(3000 * args.horizon_scale)
    data = LeastSquaresDataModule(batch_size=m, seed=args.seed, condition_number=args.condition_number)
    data.setup()
    x, y = data.splits.x_train, data.splits.y_train
    _, optimum = least_squares_optimum(x, y)
    loss = full_objective(x, y)

    def gap(module: pl.LightningModule) -> float:
        return loss(module) - optimum

    def make_model(dm: Any, rate: float) -> pl.LightningModule:
        return LinearRegression(dm.spec, optimizer=functools.partial(torch.optim.SGD, lr=rate))

    b = r = learners
    print(f"Mishchenko et al.: least squares, M={learners}, speeds 1..10, condition number {args.condition_number:g}, "
          f"horizon {horizon:g} s and {min_gradients} gradients", flush=True)
    started, cpu = time.perf_counter(), time.process_time()
    run = functools.partial(fit, datamodule=data, make_model=make_model, objective=gap, learners=learners, delay=delay,
                            horizon=horizon, points=args.points * 2, seed=args.seed, min_gradients=min_gradients,
                            diverge_above=1e3)
    tuning: dict[str, list[Curve]] = {}
    lrs = dict(MISH_LRS)
    if args.tune:
        for key, grid in MISH_GRID.items():
            for rate in grid:
                method = next(mm for mm in mishchenko_methods({**lrs, key: rate}, learners, b, r) if mm.key == key)
                tuning.setdefault(key, []).append(run(method))
            lrs[key] = min(tuning[key], key=lambda cv: tuning_key(cv, horizon)).method.lr
        curves = [next(cv for cv in tuning[key] if cv.method.lr == lrs[key]) for key in MISH_GRID]
    else:
        curves = [run(method) for method in mishchenko_methods(lrs, learners, b, r)]
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    asynchronous = next(cv for cv in curves if cv.method.key == "async")
    replay, per_learner = replayed_staleness("async", learners, delay, args.seed, asynchronous.total_updates)
    mu, smoothness = curvature(x)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    plot_mishchenko(curves, out / "mishchenko_least_squares.png", learners, m, horizon, min_gradients,
                    args.condition_number)
    save_curves(out / "mishchenko_least_squares.json", curves,
                {"optimum": optimum, "speeds": speeds, "hessian_eigenvalues": [mu, smoothness],
                 "replayed_staleness": dict(sorted(replay.items())),
                 "tuning": {k: [{"lr": cv.method.lr, "time_to_target": cv.first_time(MISH_TARGET),
                                 "score": score(cv, horizon)} for cv in v] for k, v in tuning.items()}})
    (out / "mishchenko_least_squares.md").write_text(report_mishchenko(
        curves, tuning, replay, per_learner, args, elapsed, cpu, learners, m, speeds, optimum, (mu, smoothness),
        horizon, min_gradients))
    print(f"wrote {out / 'mishchenko_least_squares.md'} ({elapsed:.0f} s)")


def plot_mishchenko(curves: list[Curve], path: Path, learners: int, m: int, horizon: float, min_gradients: int,
                    condition: float) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(18, 5))
    for curve in curves:
        color = COLORS[curve.method.key]
        label = f"{curve.method.label}, γ = {curve.method.lr:g}"
        axes[0].plot(curve.gradients, curve.values, color=color, label=label)
        axes[1].plot(curve.times, curve.values, color=color, label=label)
    axes[0].set_xlabel(f"gradients applied (mini-batches of {m}; discarded or stopped work not counted)")
    axes[0].set_xlim(0, min_gradients)
    axes[1].set_xlabel("simulated time (worker i needs s_i ∈ [1, 10] s per gradient)")
    axes[1].set_xlim(0, horizon)
    for axis in axes[:2]:
        axis.set_yscale("log")
        axis.set_ylabel("F(x) - F*")
        axis.axhline(MISH_TARGET, color="k", lw=0.8, ls=":")
        axis.grid(alpha=0.3, which="both")
    axes[0].set_title("against the number of gradients", fontsize=10)
    axes[1].set_title("against simulated wall-clock time", fontsize=10)
    axes[1].legend(fontsize=8)
    asynchronous = next(cv for cv in curves if cv.method.key == "async")
    taus = sorted(asynchronous.staleness)
    axes[2].bar(taus, [asynchronous.staleness[t] for t in taus], width=1.0, color=COLORS["async"])
    axes[2].axvline(learners, color="k", ls="--", lw=1, label=f"M = {learners}")
    axes[2].axvline(asynchronous.mean_staleness(), color="tab:gray", ls=":", lw=1.5,
                    label=f"mean = {asynchronous.mean_staleness():.1f}")
    axes[2].set_xlabel("delay τ of a gradient (server updates since its worker read x)")
    axes[2].set_ylabel("gradients")
    axes[2].set_title(f"asynchronous SGD: histogram of its {asynchronous.total_gradients} delays", fontsize=10)
    axes[2].legend(fontsize=8)
    save_figure(fig, path, f"Mishchenko et al. (2022) setting on SimulatedLearnersStrategy: least squares n = 10000, d = 400 "
                f"(condition number {condition:g}), batch {m}, M = {learners} workers of uneven speed")


def report_mishchenko(curves: list[Curve], tuning: dict[str, list[Curve]], replay: Counter,
                      per_learner: dict[int, list[int]], args: argparse.Namespace, elapsed: float, cpu: float,
                      learners: int, m: int, speeds: list[float], optimum: float, hessian: tuple[float, float],
                      horizon: float, min_gradients: int) -> str:
    by = {cv.method.key: cv for cv in curves}
    asyn, adaptive, sync, rennala, ringmaster = (by[k] for k in ("async", "async_adaptive", "sync", "rennala",
                                                                 "ringmaster"))
    mu, smoothness = hessian
    s_max = max(speeds)
    improvement = statistics.fmean(s_max / s for s in speeds)
    predicted_delay = sum(s_max / s for s in speeds)
    rows = []
    for cv in curves:
        wasted = cv.discarded + cv.cancelled
        rows.append(f"| {cv.method.label} | {cv.method.lr:g} | {cv.total_updates} | {cv.total_gradients} | {wasted} | "
                    f"{cv.total_gradients / cv.times[-1]:.2f} | {cv.mean_staleness():.1f} | {cv.staleness_max} | "
                    + " | ".join(f"{fmt_time(cv.first_time(t))} / {fmt_time(cv.first_gradients(t))}" for t in MISH_TARGETS)
                    + f" | {fmt(cv.value_at(horizon), 3)} |")
    tuning_rows = []
    for key, runs in tuning.items():
        chosen = by[key].method.lr
        cells = []
        for cv in runs:
            reached = cv.first_time(MISH_TARGET)
            text = f"{cv.method.lr:g}: {fmt_time(reached) if reached is not None else 'not reached'} ({score(cv, horizon):.2f})"
            cells.append(f"**{text}**" if cv.method.lr == chosen else text)
        edge = " (edge of the grid)" if chosen in (min(MISH_GRID[key]), max(MISH_GRID[key])) else ""
        tuning_rows.append(f"| {runs[0].method.label} | {', '.join(cells)}{edge} |")
    beyond = sum(n for t, n in asyn.staleness.items() if t > learners) / max(1, sum(asyn.staleness.values()))
    same = dict(replay) == dict(asyn.staleness)

    def ratio(slow: Curve, fast: Curve, target: float) -> str:
        a, b = slow.first_time(target), fast.first_time(target)
        return f"{a / b:.2f}" if a and b else "-"

    def when(cv: Curve, target: float = MISH_TARGET) -> str:
        t = cv.first_time(target)
        return f"{t:.0f} s" if t is not None else "not reached"

    def tuned(key: str, rate: float) -> Optional[Curve]:
        return next((cv for cv in tuning.get(key, []) if cv.method.lr == rate), None)

    gradients = [cv.first_gradients(MISH_TARGET) for cv in (sync, asyn, adaptive)]
    gradients_first = _sooner(gradients[0], gradients[1]) and _sooner(gradients[0], gradients[2])
    time_wins = all(_sooner(cv.first_time(MISH_TARGET), sync.first_time(MISH_TARGET)) for cv in (asyn, adaptive))
    large = max(MISH_GRID["async_adaptive"])
    const_large, adapt_large = tuned("async", large), tuned("async_adaptive", large)
    large_note = ""
    if const_large is not None and adapt_large is not None:
        large_note = (f" At γ = {large:g}, the grid's largest, the constant step reaches 1e-3 in "
                      f"{when(const_large, 1e-3)} and 1e-4 {'in ' + when(const_large) if const_large.first_time(MISH_TARGET) else 'never'}"
                      f", the delay-adaptive one 1e-3 in {when(adapt_large, 1e-3)}"
                      + (f": shrinking the {100 * beyond:.0f}% of gradients older than M keeps a large γ usable."
                         if _sooner(adapt_large.first_time(1e-3), const_large.first_time(1e-3)) else
                         ": at this γ shrinking the old gradients does not make it sooner."))
    lines = [
        "# Mishchenko et al. (2022): asynchronous SGD against minibatch SGD on least squares, workers of uneven speed",
        "",
        "With Rennala SGD (Tyurin and Richtárik 2023) and Ringmaster ASGD (Maranjyan et al. 2025) for comparison.",
        "",
        "Command (from the repository root, in the project's environment):",
        "",
        *command_lines(),
        "",
        runtime_line(elapsed, cpu, curves if not tuning else [cv for runs in tuning.values() for cv in runs]),
        "",
        "![figure](mishchenko_least_squares.png)",
        "",
        "## Setup",
        "",
        (f"- **Problem:** `LeastSquaresDataModule(n_examples=10000, n_features=400, noise=0.1, "
         f"condition_number={args.condition_number:g}, batch_size={m})`, model `LinearRegression` (no bias), "
         f"F(x) = mean((a·x - b)²)/2 over the 10000 rows; F* = {optimum:.6f} from `least_squares_optimum` "
         f"(float64). The Hessian A^T A/n has eigenvalues from μ = {mu:.4f} to L = {smoothness:.4f} "
         f"(κ = {smoothness / mu:.1f}; gradient descent is stable for γ < 2/L = {2 / smoothness:.2f}). "
         "F - F* is evaluated on all rows."),
        (f"- **Workers:** M = {learners}; worker i needs s_i · U(0.9, 1.1) simulated seconds per gradient, with "
         f"s_i spread evenly over [1, 10] (`delay={{'distribution': 'uniform', 'low': 0.9, 'high': 1.1, "
         f"'speeds': [1.0, 1.2308, ..., 10.0]}}`), seed {args.seed}. In the slides' notation, asynchronous SGD "
         f"gets (1/M) Σ s_max/s_i = {improvement:.2f} times the gradients of minibatch SGD in the same time, and "
         f"its longest delay should be about Σ s_max/s_i = {predicted_delay:.0f} updates."),
        ("- **Methods** (`SimulatedLearnersStrategy` variants): minibatch SGD = `sync` (averages all M gradients "
         "per update); asynchronous SGD = `async` with `lr_rule=\"constant\"`, and with `lr_rule=\"mishchenko\"` "
         f"(γ_k = γ·min(1, M/τ_k), M = {learners}); Rennala SGD = `rennala` with B = {learners} (only gradients "
         f"computed at the current x count; B = M gives it minibatch SGD's batch, so the two differ only in time); "
         f"Ringmaster ASGD = `ringmaster` with R = {learners} and `stop_stale=True` (gradients with delay >= R "
         "are dropped and computations that reach R are stopped)."),
        (f"- **Step sizes:** each method's γ is the one of a small grid (table below) that reaches "
         f"F - F* <= {MISH_TARGET:g} soonest in simulated time (ties: the lower mean log10(F - F*) up to "
         f"t = {horizon:g} s). " + ("The curves are the grid's winners." if tuning else
                                     "This run used the stored winners (`--no-tune`)")),
        (f"- **Length:** each run lasts until {horizon:g} simulated seconds *and* {min_gradients} applied gradients, "
         f"so both panels are complete for every method; F - F* is evaluated every {horizon / (2 * args.points):g} "
         "simulated seconds. Times to a target below are at that resolution."),
        "",
        "## Results",
        "",
        "Time (simulated s) / gradients applied to reach F - F* <= 1e-2, 1e-3, 1e-4 (`-`: not reached).",
        "",
        "| method | γ | updates | gradients applied | discarded or stopped | applied gradients per s | mean delay | "
        "max delay | to 1e-2 | to 1e-3 | to 1e-4 | F - F* at t = %g |" % horizon,
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    if tuning:
        lines += ["", (f"Step-size grid: time to F - F* <= {MISH_TARGET:g} (mean log10(F - F*) up to t = {horizon:g}); "
                       "chosen in bold."), "", "| method | γ: time (score) |", "|---|---|", *tuning_rows]
    lines += [
        "",
        "## Delays of asynchronous SGD",
        "",
        (f"- {asyn.total_gradients} gradients; mean delay {asyn.mean_staleness():.1f} (about M - 1 = "
         f"{learners - 1}: with M computations always in flight and one update per arrival, a gradient waits on "
         f"average for the other M - 1), largest {asyn.staleness_max} (the slides' estimate Σ s_max/s_i = "
         f"{predicted_delay:.0f}); {100 * beyond:.0f}% of the gradients are older than M = {learners} updates, "
         "the ones the delay-adaptive rule shrinks."),
        ("- Per worker (from the replay): " + "; ".join(
            f"s = {speeds[i]:.3g}: {len(per_learner[i])} gradients, delays {min(per_learner[i])} to "
            f"{max(per_learner[i])} (mean {statistics.fmean(per_learner[i]):.0f})"
            for i in (0, learners // 4, learners // 2, 3 * learners // 4, learners - 1) if per_learner[i])
         + ". Fast workers return many gradients with short delays, slow ones few with long delays: the left "
         "and right parts of the histogram."),
        (f"- Cross-check: the histogram was collected from the strategy's per-update `stale/staleness_mean` during "
         f"training (one gradient per update, so exact); replaying the same schedule with "
         f"`lightning_echo.core.schedule.ScheduleSimulation` alone (same compute times, seed {args.seed}) gives "
         + ("exactly the same counts." if same else "**different counts**: see the json.")),
        "",
        "## What it shows",
        "",
        (f"- {time_headline(*(cv.first_time(MISH_TARGET) for cv in (sync, asyn, adaptive)))}: "
         f"to F - F* <= 1e-4 minibatch SGD needs "
         f"{when(sync)}, asynchronous SGD {when(asyn)} with the constant step and {when(adaptive)} with the "
         f"delay-adaptive one (ratios {ratio(sync, asyn, MISH_TARGET)} and {ratio(sync, adaptive, MISH_TARGET)}; "
         f"to 1e-3: {ratio(sync, asyn, 1e-3)} and {ratio(sync, adaptive, 1e-3)}). Minibatch SGD waits for the "
         f"slowest worker (s_max = 10) every update, so it applies {sync.total_gradients / sync.times[-1]:.2f} "
         f"gradients per second against {asyn.total_gradients / asyn.times[-1]:.2f} (the slides' ratio "
         f"{improvement:.2f}; measured {asyn.total_gradients / asyn.times[-1] / (sync.total_gradients / sync.times[-1]):.2f})."),
        ("- " + gradients_headline(*gradients)
         + (" Its win in time is the throughput ratio minus that cost per gradient." if gradients_first and time_wins
            else "")),
        "- " + end_against_targets(sync, [asyn, adaptive], horizon),
        (f"- **Delay-adaptive against constant step:** best γ {adaptive.method.lr:g} and {asyn.method.lr:g}; to "
         f"1e-3 in {when(adaptive, 1e-3)} against {when(asyn, 1e-3)}." + large_note),
        (f"- **Rennala and Ringmaster** reach 1e-4 in {when(rennala)} and {when(ringmaster)}. Both leave out "
         "the slowest workers: Rennala discards every gradient computed at an old x "
         f"({rennala.discarded} discarded against {rennala.total_gradients} applied), Ringmaster stops computations "
         f"whose delay reaches R ({ringmaster.cancelled} stopped; max delay {ringmaster.staleness_max}). Rennala "
         "with B = M takes exactly minibatch SGD's steps (same gradients in the same order, see the left panel), "
         f"only {sync.times[-1] / sync.total_updates / (rennala.times[-1] / rennala.total_updates):.2f} times "
         "sooner."),
        "",
        "## Where the numbers differ from the paper, and why",
        "",
        ("- **The workers' delays.** We do not have the paper's exact delay model (the slides give only "
         "s_m seconds per gradient); we use fixed slowdowns spread over [1, 10] with ±10% uniform jitter, which "
         "is the slides' model with just enough randomness to avoid ties. Another delay model changes the "
         "histogram and the size of the time advantage."),
        (f"- **Condition number {args.condition_number:g}.** The library's generated least squares with condition "
         "number 1 (Gaussian rows, n/d = 25, κ = 2.2) is solved to the noise floor within a few updates by every "
         "method, so the curves would show only the floors; a feature covariance with eigenvalues spread over a "
         f"factor {args.condition_number:g} (κ = {smoothness / mu:.1f} for the sample) keeps the methods apart for "
         "a few hundred simulated seconds. The paper's matrix is not specified in the slides we have."),
        ("- **Step sizes:** small grids (3-4 values), one seed, tuned for one target; the paper tunes more finely "
         "and its conclusions are about rates. Chosen values at the edge of a grid are marked in the table; "
         "minibatch SGD's and Rennala's top value 1.7 is close to 2/(L + μ), the best constant step of gradient "
         "descent on a quadratic."),
        ("- **Batches:** each gradient is one mini-batch of 256 of the shuffled data, and 10000 = 39 × 256 + 16, "
         "so one mini-batch in 40 has 16 rows; the paper presumably samples 256 rows with replacement."),
        ("- **What the x-axis counts:** gradients applied by the server. Rennala's discarded and Ringmaster's "
         "stopped work (column \"discarded or stopped\") is computed but not counted; counting it would move "
         "those two curves right in the left panel, not in the time panel."),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = recipe_arguments(__doc__.splitlines()[0])
    parser.add_argument("--learners", type=int, default=None, help="override M")
    parser.add_argument("--condition-number", type=float, default=MISH_CONDITION,
                        help="condition number of the features' covariance")
    parser.add_argument("--no-tune", dest="tune", action="store_false",
                        help="use the stored step sizes instead of running the grid")
    args = parser.parse_args()
    start(args)
    mishchenko(args)


if __name__ == "__main__":
    main()
