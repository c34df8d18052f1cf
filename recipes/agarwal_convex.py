"""Agarwal et al. (2020) Figures 2-3: steps to reach 1% of the optimal training loss against the echo factor K.

Launches a Hydra multirun of ``lightning-echo`` over batch size B, echo factor K and a grid of
constant step sizes; each job's TargetLoss callback writes ``target.json``. For each (B, K) the
step size reaching the target in the fewest optimizer steps is kept (ties: ``TIE_RULE``), and the
figure shows, per batch size, optimizer steps K*T (blue), fresh samples B*T (red) and that step
size (yellow).

    python recipes/agarwal_convex.py                      # default grid, synthetic data
    python recipes/agarwal_convex.py --full               # more batch sizes, finer step sizes
    python recipes/agarwal_convex.py --dataset mnist --data-root /path/with/mnist_folder
    python recipes/agarwal_convex.py --methods sgd,prox,nesterov   # compare echoed optimizers at one B
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

from lightning_echo.records import DIVERGED_EXIT_CODE

FACTORS = (1, 2, 4, 8, 16)
# Per-run caps, so a step size that never reaches the target does not run for long.
CAPS = {"synthetic": {"trainer.max_steps": 12000, "echo.max_fresh_samples": 80000},
        "mnist": {"trainer.max_steps": 15000, "echo.max_fresh_samples": 4000000}}
ALGORITHMS = {"sgd": "echo_sgd", "prox": "echo_prox", "nesterov": "echo_nesterov"}
# Base step sizes per batch size. Echoed SGD tries each base step size both as is and divided by K
# (optimizer.rule=inverse_k), so the grid covers the noise-dominated regime, where the best step
# shrinks like 1/K, and the curvature-dominated one, where it stays put (Agarwal et al. Sec. 5).
GRIDS = {
    "synthetic": {"default": {64: (0.12, 0.25), 1024: (1.0, 2.0, 4.0)},
                  "full": {16: (0.015, 0.03, 0.06, 0.12, 0.25), 128: (0.12, 0.25, 0.5, 1.0, 2.0),
                           1024: (0.5, 1.0, 2.0, 4.0, 8.0)}},
    "mnist": {"default": {256: (0.1, 0.3), 4096: (1.0, 2.0)},
              "full": {64: (0.03, 0.1, 0.3), 256: (0.1, 0.3, 1.0), 1024: (0.3, 1.0, 2.0), 4096: (0.5, 1.0, 2.0, 4.0)}},
}
# The other methods' extra grid axis. Prox: the strength gamma of the pull to the pivot. Nesterov:
# smaller step sizes, since accelerated gradient with a constant step accumulates the batches'
# noise (Theorem 13's step size falls like 1/K^2).
METHOD_SWEEPS = {"sgd": ["optimizer.rule=constant,inverse_k"], "prox": ["optimizer.gamma=0.01,0.1,1"], "nesterov": []}
# Where 1/K step sizes do not win (MNIST at B=4096 is curvature-dominated up to K=16, see
# recipes/results/agarwal_mnist.md), echoed SGD tries constant step sizes only: a 1/K step there
# runs to the caps.
CONSTANT_ONLY = {("mnist", 4096)}
NESTEROV_LR_SCALES = (1.0, 1 / 8, 1 / 64)
TIE_RULE = ("Among the step sizes that reach the target in the fewest optimizer steps, the one with the lowest "
            "loss at that step is kept, then the smallest step size.")


@dataclass
class Job:
    """One finished run of the grid."""

    method: str
    batch_size: int
    factor: int
    lr: float
    reached: bool
    steps: Optional[int]
    fresh_samples: Optional[int]
    loss: Optional[float] = None  # the full training loss at the step that reached the target


def effective_lr(cfg: dict) -> float:
    """The constant step size a run used (EchoedSGD's inverse_k rule divides ``lr`` by K)."""
    lr = float(cfg["optimizer"]["lr"])
    return lr / float(cfg["echo"]["factor"]) if cfg["optimizer"].get("rule") == "inverse_k" else lr


def launch(dataset: str, method: str, batch_size: int, lrs: tuple[float, ...], out: Path, data_root: Optional[str]) -> None:
    """One Hydra multirun over K x step size (x the method's own axis) for one batch size and method."""
    if method == "nesterov":
        lrs = tuple(sorted({lr * scale for lr in lrs for scale in NESTEROV_LR_SCALES}))
    command = [
        "lightning-echo", "-m", f"experiment=agarwal_{dataset}", f"algorithm={ALGORITHMS[method]}",
        f"data.batch_size={batch_size}", "echo.factor=" + ",".join(map(str, FACTORS)),
        "optimizer.lr=" + ",".join(f"{lr:g}" for lr in lrs), f"paths.output_root={out}",
        "hydra.sweep.dir=" + str(out / f"{method}_B{batch_size}"), "trainer.accelerator=cpu",
    ] + [f"{key}={value}" for key, value in CAPS[dataset].items()]
    if method == "sgd" and (dataset, batch_size) in CONSTANT_ONLY:
        command.append("optimizer.rule=constant")
    else:
        command += METHOD_SWEEPS[method]
    if data_root is not None:
        command.append(f"data.root={data_root}")
    print("$ " + " ".join(command), flush=True)
    done = subprocess.run(command, check=False, stdout=subprocess.DEVNULL)
    # A sweep in which runs diverged exits with DIVERGED_EXIT_CODE: those runs only missed the target.
    if done.returncode not in (0, DIVERGED_EXIT_CODE):
        raise subprocess.CalledProcessError(done.returncode, command)


def collect(out: Path) -> list[Job]:
    """Every job under ``out`` that wrote target.json."""
    jobs = []
    for result_path in sorted(out.glob("*/*/target.json")):
        cfg = yaml.safe_load((result_path.parent / ".hydra" / "config.yaml").read_text())
        result = json.loads(result_path.read_text())
        method = next(k for k, v in ALGORITHMS.items() if v == cfg["algorithm"]["name"])
        jobs.append(Job(method, int(cfg["data"]["batch_size"]), int(cfg["echo"]["factor"]), effective_lr(cfg),
                        bool(result["reached"]), result["reached_step"], result["reached_fresh_samples"],
                        result.get("reached_loss")))
    return jobs


def preference(job: Job) -> tuple[float, float, float]:
    """Sort key of TIE_RULE: fewest steps, then lowest loss at that step (unknown: last), then smallest step size."""
    return (float(job.steps), job.loss if job.loss is not None else float("inf"), job.lr)  # type: ignore[arg-type]


def best_per_setting(jobs: list[Job]) -> dict[tuple[str, int, int], Job]:
    """For each (method, B, K) the job that reached the target first, by TIE_RULE among equally fast ones
    (whatever order the jobs come in)."""
    best: dict[tuple[str, int, int], Job] = {}
    for job in jobs:
        if not job.reached:
            continue
        key = (job.method, job.batch_size, job.factor)
        if key not in best or preference(job) < preference(best[key]):
            best[key] = job
    return best


def tied_step_sizes(jobs: list[Job], chosen: Job) -> list[float]:
    """The other step sizes of ``chosen``'s (method, B, K) that reached the target in as many steps."""
    return sorted({job.lr for job in jobs if job.reached and job.steps == chosen.steps and job.lr != chosen.lr
                   and (job.method, job.batch_size, job.factor) == (chosen.method, chosen.batch_size, chosen.factor)})


def table(jobs: list[Job], best: dict[tuple[str, int, int], Job]) -> str:
    """Markdown table of the chosen runs (and settings that reached nothing); step sizes that tied with
    the chosen one in steps are named next to it."""
    lines = ["| method | B | K | best step size | optimizer steps K*T | fresh samples B*T | step size at grid edge |",
             "|---|---|---|---|---|---|---|"]
    grid: dict[tuple[str, int], list[float]] = {}
    for job in jobs:
        grid.setdefault((job.method, job.batch_size), []).append(job.lr)
    for method, batch_size, factor in sorted({(j.method, j.batch_size, j.factor) for j in jobs}):
        job = best.get((method, batch_size, factor))
        if job is None:
            lines.append(f"| {method} | {batch_size} | {factor} | none reached | - | - | - |")
            continue
        lrs = grid[(method, batch_size)]
        edge = "yes" if job.lr in (min(lrs), max(lrs)) else ""
        ties = tied_step_sizes(jobs, job)
        chosen = f"{job.lr:g}" + (f" (tied in steps: {', '.join(f'{lr:g}' for lr in ties)})" if ties else "")
        lines.append(f"| {method} | {batch_size} | {factor} | {chosen} | {job.steps} | {job.fresh_samples} | {edge} |")
    return "\n".join(lines)


def plot(best: dict[tuple[str, int, int], Job], path: Path, title: str) -> None:
    """Figures 2-3 style: per (method, B) a panel of steps, fresh samples and step size against K."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(m, b) for m, b, _ in best}, key=lambda panel: (list(ALGORITHMS).index(panel[0]), panel[1]))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.8), squeeze=False)
    for axis, (method, batch_size) in zip(axes[0], panels):
        chosen = sorted((k, j) for (m, b, k), j in best.items() if (m, b) == (method, batch_size))
        factors = [k for k, _ in chosen]
        axis.plot(factors, [j.steps for _, j in chosen], "o-", color="tab:blue", label="optimizer steps K·T")
        axis.plot(factors, [j.fresh_samples for _, j in chosen], "s-", color="tab:red", label="fresh samples B·T")
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xticks(FACTORS, [str(k) for k in FACTORS])
        axis.set_xlabel("echo factor K")
        axis.set_title(f"echoed {method}, B = {batch_size}")
        step_axis = axis.twinx()
        step_axis.plot(factors, [j.lr for _, j in chosen], "^--", color="goldenrod", label="best step size")
        step_axis.set_yscale("log")
        step_axis.set_ylabel("step size", color="goldenrod")
        handles = axis.get_legend_handles_labels()[0] + step_axis.get_legend_handles_labels()[0]
        axis.legend(handles, [h.get_label() for h in handles], fontsize=7, loc="best")
    axes[0][0].set_ylabel("to within 1% of the optimal loss")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=("synthetic", "mnist"), default="synthetic")
    parser.add_argument("--data-root", default=None, help="directory holding mnist/ (data.root)")
    parser.add_argument("--full", action="store_true", help="more batch sizes and a finer step-size grid")
    parser.add_argument("--methods", default="sgd", help="comma-separated echoed optimizers: sgd,prox,nesterov")
    parser.add_argument("--out", type=Path, default=Path("agarwal_convex_runs"))
    parser.add_argument("--no-run", action="store_true", help="only re-read the runs already under --out")
    args = parser.parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(ALGORITHMS))
    if unknown:
        sys.exit(f"--methods: unknown {unknown}; choose from {sorted(ALGORITHMS)}")
    grids = GRIDS[args.dataset]["full" if args.full else "default"]
    if len(methods) > 1:  # compare optimizers at the same budget at one (the largest) batch size
        grids = {max(grids): grids[max(grids)]}
    out = args.out.resolve()
    started = time.perf_counter()
    if not args.no_run:
        for method in methods:
            for batch_size, lrs in grids.items():
                launch(args.dataset, method, batch_size, lrs, out, args.data_root)
    elapsed = time.perf_counter() - started
    jobs = collect(out)
    best = best_per_setting(jobs)
    print(table(jobs, best))
    print(TIE_RULE)
    figure = out / f"agarwal_{args.dataset}.png"
    plot(best, figure, f"Agarwal et al. Sec. 5 on {args.dataset}: steps to within 1% of the optimal training loss")
    print(f"figure: {figure}")
    print(f"measured runtime: {elapsed:.0f} s for {len(jobs)} runs")


if __name__ == "__main__":
    main()
