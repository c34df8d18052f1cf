"""Benchmark (issue 22): the advisor's predictions against real runs, end to end.

1. **Parameter server** (``backend=processes``: a server and P = 4 learner processes, gloo on CPU).
   Record a p_sync run with ``record.step_times=true`` and injected compute times from a
   heterogeneous, heavy-tailed model (lognormal, scale 20 ms, sigma 0.5; learner slowdowns
   ``SPEEDS``), advise on it with ``--replay`` (the Python API :func:`advise`, which is what
   ``lightning-echo advise RUN --replay --replay-variants N`` runs), then run p_sync and every
   shortlisted variant for real with the same command-line overrides (model, data, injected delays)
   and compare, per variant: the predicted updates per second (compute alone, and with the overhead
   model calibrated on the recorded run) against the measured ones (the server's updates over its
   wall-clock time, from 10% of the run to its end), and the ``--replay`` prediction of the time to
   the target loss (p_sync's replayed final validation loss x 1.01) against the measured time to
   that loss (the server's wall-clock time at its validations, interpolated linearly between them,
   as the replay does).
2. **DDP**: two ranks on CPU (``strategy="ddp"``, this script re-run by Lightning's launcher), rank 1
   slowed (a lognormal sleep 3x longer than rank 0's in its ``training_step``), with
   :class:`~lightning_echo.advisor.record.StepTimeRecorder`; advise on its trace; p_sync's predicted
   updates per second against the run's own (rank 0's optimizer steps over wall-clock time, from 10%
   of the run to its end). The overhead model is calibrated on that very trace, so a second run
   (rank 1 1.5x slower instead of 3x) checks it out of sample: its compute times with the first
   run's overhead against its own measured rate.

Validation runs on 1024 held-out rows in one batch every ~1/15 of a run, so its pauses stay near 1%
of the wall-clock time (the measured rates and times include them, as the recorded trace does).

    python bench/advisor_accuracy.py [--out DIR] [--steps 200] [--ddp-steps 150] [--skip-ddp]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
LEARNERS = 4
SPEEDS = (1, 1, 1.5, 3)  # the learners' slowdowns (stale.delay.speeds)
DELAY = ("stale.delay.distribution=lognormal", "stale.delay.scale=0.02", "stale.delay.sigma=0.5")
VALIDATION = ("+data.max_val_examples=1024", "+data.val_batch_size=1024", "trainer.check_val_every_n_epoch=null")
VALIDATIONS = 15  # per real run
DDP_SPEEDS = (1.0, 3.0)  # rank 1 sleeps 3x longer
DDP_OTHER_SPEEDS = (1.0, 1.5)  # the out-of-sample run
STEADY_FROM = 0.1  # rates are measured from this fraction of the run's updates to its end


def common_overrides() -> list[str]:
    return ["experiment=single", "backend=processes", *DELAY,
            "stale.delay.speeds=[" + ",".join(f"{s:g}" for s in SPEEDS) + "]", "trainer.enable_progress_bar=false",
            *VALIDATION]


def lightning_echo(overrides: Sequence[str], run_dir: Path) -> float:
    """Run the command line in a subprocess; returns its wall-clock seconds (the world's start included)."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "lightning_echo", *overrides, f"hydra.run.dir={run_dir}"],
                          cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise SystemExit(f"lightning-echo {' '.join(overrides)} failed")
    return time.perf_counter() - started


class ServerCurve:
    """A parameter server run's metrics: the wall-clock time of every update (ps/updates_per_s is the
    updates over the server's wall-clock time since its first START) and the validation losses."""

    def __init__(self, run_dir: Path) -> None:
        self.wall: dict[int, float] = {0: 0.0}
        self.elapsed: dict[int, float] = {0: 0.0}
        self.points: list[tuple[float, int, float]] = []  # (wall s, update, val/loss)
        last_step = 0
        with (run_dir / "csv" / "metrics.csv").open(newline="") as stream:
            for row in csv.DictReader(stream):
                if row.get("ps/updates_per_s"):
                    step = int(float(row["step"]))
                    rate = float(row["ps/updates_per_s"])
                    if step > 0 and rate > 0:
                        self.wall[step] = step / rate
                if row.get("time/elapsed_s") and row.get("progress/optimizer_steps"):
                    last_step = int(float(row["progress/optimizer_steps"]))
                    self.elapsed[last_step] = float(row["time/elapsed_s"])
                if row.get("val/loss"):
                    self.points.append((self.wall.get(last_step, math.nan), last_step, float(row["val/loss"])))
        self.updates = max(self.wall)

    def rate(self) -> float:
        """Updates per second of wall-clock time from STEADY_FROM of the run to its end."""
        first = min(s for s in self.wall if s >= STEADY_FROM * self.updates)
        return (self.updates - first) / (self.wall[self.updates] - self.wall[first])

    def validation_share(self) -> float:
        """The fraction of the server's wall-clock time outside the training loop's steps (validation)."""
        return 1 - self.elapsed.get(self.updates, math.nan) / self.wall[self.updates]


def time_to(points: Sequence[tuple[float, int, float]], target: float) -> Optional[float]:
    """When the loss first reaches ``target``, interpolated linearly between validations (as --replay does)."""
    from lightning_echo.advisor.advise import _time_to

    return _time_to(points, target)


def ratio(predicted: Optional[float], measured: Optional[float]) -> str:
    return f"{predicted / measured:.2f}" if predicted and measured else "-"


def number(value: Optional[float], digits: str = ".3g") -> str:
    return format(value, digits) if value is not None and math.isfinite(value) else "-"


# -- 1. the parameter server ------------------------------------------------------------------------
def parameter_server(out: Path, steps: int) -> list[dict[str, Any]]:
    from lightning_echo.advisor.advise import advise
    from lightning_echo.advisor.predict import command_overrides, label

    common = common_overrides()
    record_dir = out / "record"
    recorded = ["algorithm=p_sync", f"stale.learners={LEARNERS}", f"trainer.max_steps={steps}", "record.step_times=true",
                f"trainer.val_check_interval={max(1, steps // VALIDATIONS)}"]
    print("== 1. parameter server: record, advise, run the shortlist for real")
    print("record:  lightning-echo " + " ".join(common + recorded), flush=True)
    seconds = lightning_echo(common + recorded, record_dir)
    print(f"  ({seconds:.0f} s)")
    started = time.perf_counter()
    print(f"advise:  lightning-echo advise {record_dir} --replay --replay-variants 7   # every shortlisted variant",
          flush=True)
    advice = advise(record_dir, replay=True, replay_variants=7)
    print(f"  ({time.perf_counter() - started:.0f} s)\n")
    print(advice.text(), "\n", flush=True)
    trained = advice.replay
    assert trained is not None
    predicted_time = {run.spec: run.time_to_target for run in trained.runs}
    horizon = trained.baseline.points[-1][0]
    rows = []
    for row in [advice.table.baseline, *[r for r in advice.table.shortlist() if r.spec.name != "sync"]]:
        spec = row.spec
        if spec.name == "sync":
            updates = math.ceil(1.25 * steps)  # past the replay's target, p_sync's final loss x 1.01
        else:
            until = predicted_time.get(spec) or 0.5 * horizon
            updates = max(100, math.ceil(1.6 * until * row.updates_per_s))
        name = label(spec).replace(" ", "_").replace("=", "")
        overrides = [*command_overrides(spec), f"trainer.max_steps={updates}",
                     f"trainer.val_check_interval={max(1, updates // VALIDATIONS)}"]
        print(f"run:     lightning-echo {' '.join(common + overrides)}", flush=True)
        seconds = lightning_echo(common + overrides, out / name)
        curve = ServerCurve(out / name)
        measured_time = time_to(curve.points, trained.target)
        rows.append({"label": label(spec), "compute_only": 1 / row.compute_time_per_update, "predicted": row.updates_per_s,
                     "measured": curve.rate(), "predicted_time": predicted_time.get(spec), "measured_time": measured_time,
                     "updates": curve.updates, "wall": curve.wall[curve.updates], "validation": curve.validation_share(),
                     "final_loss": curve.points[-1][2]})
        print(f"  ({seconds:.0f} s: {curve.updates} updates in {curve.wall[curve.updates]:.1f} s, "
              f"{curve.rate():.2f} updates/s, time to {trained.target:.4g}: {number(measured_time)} s)", flush=True)
    overhead = advice.table.overhead
    print(f"\ntarget: the replay's p_sync final val/loss x 1.01 = {trained.target:.4f}; overhead model calibrated on the "
          "recorded run: " + (overhead.describe() if overhead is not None else "none"))
    header = (f"{'variant':<20}{'compute only':>13}{'predicted':>11}{'measured':>10}{'pred/meas':>11}{'(compute only)':>16}"
              f"{'pred. time':>12}{'meas. time':>12}{'pred/meas':>11}{'updates':>9}{'val. share':>12}")
    print("updates per second (predicted: with the overhead model) and time to target [s]:")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['label']:<20}{r['compute_only']:>13.2f}{r['predicted']:>11.2f}{r['measured']:>10.2f}"
              f"{ratio(r['predicted'], r['measured']):>11}{ratio(r['compute_only'], r['measured']):>16}"
              f"{number(r['predicted_time'], '.2f'):>12}{number(r['measured_time'], '.2f'):>12}"
              f"{ratio(r['predicted_time'], r['measured_time']):>11}{r['updates']:>9}{r['validation']:>12.1%}")
    rates = [r["predicted"] / r["measured"] for r in rows]
    times = [r["predicted_time"] / r["measured_time"] for r in rows if r["predicted_time"] and r["measured_time"]]
    print(f"updates/s within 10%: {sum(abs(x - 1) <= 0.10 for x in rates)} of {len(rates)} variants (pred/meas "
          f"{min(rates):.2f}-{max(rates):.2f}; compute only: "
          f"{min(r['compute_only'] / r['measured'] for r in rows):.2f}-{max(r['compute_only'] / r['measured'] for r in rows):.2f}); "
          f"time to target within 25%: {sum(abs(x - 1) <= 0.25 for x in times)} of {len(times)} "
          f"({min(times, default=math.nan):.2f}-{max(times, default=math.nan):.2f})")
    return rows


# -- 2. DDP ----------------------------------------------------------------------------------------
def ddp_run(run_dir: Path, steps: int, speeds: Sequence[float]) -> float:
    """One DDP run (a subprocess, which Lightning's launcher repeats for rank 1); its measured updates/s."""
    command = [sys.executable, str(Path(__file__).resolve()), "--ddp-child", str(run_dir), "--ddp-steps", str(steps),
               "--ddp-speeds", *(f"{s:g}" for s in speeds)]
    print(f"record:  python bench/advisor_accuracy.py --ddp-child {run_dir} --ddp-steps {steps} --ddp-speeds "
          + " ".join(f"{s:g}" for s in speeds), flush=True)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise SystemExit("the DDP run failed")
    print(f"  ({time.perf_counter() - started:.0f} s)")
    return float(json.loads((run_dir / "measured.json").read_text())["rate"])


def ddp(out: Path, steps: int) -> dict[str, Any]:
    from lightning_echo.advisor.advise import advise
    from lightning_echo.advisor.fit import fit_step_trace
    from lightning_echo.advisor.predict import predict
    from lightning_echo.advisor.trace import read_step_trace
    from lightning_echo.core.schedule import variant_spec

    print("\n== 2. DDP: two ranks on CPU, each training_step sleeps lognormal(20 ms, sigma 0.5) x its rank's slowdown; "
          "StepTimeRecorder")
    run_dir = out / "ddp"
    measured = ddp_run(run_dir, steps, DDP_SPEEDS)
    print(f"advise:  lightning-echo advise {run_dir}", flush=True)
    advice = advise(run_dir, write=False)
    compute_only = advice.table.baseline.compute_time_per_update
    with_overhead = advice.table.baseline.time_per_update
    print(advice.recorded_line(), flush=True)
    other_dir = out / "ddp_other"
    other = ddp_run(other_dir, steps, DDP_OTHER_SPEEDS)
    other_fit = fit_step_trace(read_step_trace(other_dir))
    sync = [variant_spec("sync", other_fit.learners)]
    other_compute = predict(other_fit, specs=sync).baseline.time_per_update
    other_predicted = predict(other_fit, specs=sync, overhead=advice.table.overhead).baseline.time_per_update
    header = f"{'slowdowns':<11}{'':<48}{'updates/s':>10}{'pred/meas':>11}"
    print(header)
    print("-" * len(header))
    a, b = "/".join(f"{s:g}" for s in DDP_SPEEDS), "/".join(f"{s:g}" for s in DDP_OTHER_SPEEDS)
    for speeds, what, value, reference, note in (
            (a, "measured (steps / wall clock)", measured, None, ""),
            (a, "p_sync predicted from compute alone", 1 / compute_only, measured, ""),
            (a, "p_sync predicted with the overhead model", 1 / with_overhead, measured, "  (calibrated on this run's trace)"),
            (b, "measured (steps / wall clock)", other, None, ""),
            (b, "p_sync predicted from compute alone", 1 / other_compute, other, ""),
            (b, "p_sync predicted with the first run's overhead", 1 / other_predicted, other, "  (out of sample)")):
        print(f"{speeds:<11}{what:<48}{value:>10.2f}{ratio(value, reference) if reference else '':>11}{note}")
    return {"measured": measured, "compute_only": 1 / compute_only, "predicted": 1 / with_overhead}


def ddp_child(run_dir: Path, steps: int, speeds: Sequence[float]) -> None:
    """One rank of the DDP run (Lightning's launcher starts rank 1 as this same command)."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_echo.advisor.record import StepTimeRecorder
    from lightning_echo.core.delays import DelayDistribution
    from lightning_echo.data.modules.synthetic import make_classification
    from lightning_echo.lightning_namespace import pl

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import quiet

    quiet()
    features, classes = 64, 8
    x, y = make_classification(16384, features, classes, noise=0.5, condition_number=10.0, generator_seed=0)

    class Slowed(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.linear = torch.nn.Linear(features, classes)
            self.sleeps: list[float] = []

        def on_train_start(self) -> None:
            rank = self.trainer.global_rank
            draws = DelayDistribution("lognormal", scale=0.02, sigma=0.5).sample(torch.Generator().manual_seed(rank), steps + 8)
            self.sleeps = [float(t) * speeds[rank] for t in draws]

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            time.sleep(self.sleeps[batch_idx % len(self.sleeps)])
            inputs, labels = batch
            return torch.nn.functional.cross_entropy(self.linear(inputs), labels)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    class Clock(pl.Callback):
        def __init__(self) -> None:
            self.ends: list[float] = []

        def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
            self.ends.append(time.perf_counter())

    clock = Clock()
    trainer = pl.Trainer(strategy="ddp", devices=2, accelerator="cpu", max_steps=steps, max_epochs=-1,
                         callbacks=[StepTimeRecorder(dirpath=run_dir), clock], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(Slowed(), train_dataloaders=DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True))
    if trainer.global_rank == 0:
        first = int(STEADY_FROM * len(clock.ends))
        rate = (len(clock.ends) - 1 - first) / (clock.ends[-1] - clock.ends[first])
        (run_dir / "measured.json").write_text(json.dumps({"rate": rate, "steps": len(clock.ends)}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="where the runs go (default: a new temporary folder)")
    parser.add_argument("--steps", type=int, default=200, help="updates of the recorded p_sync run")
    parser.add_argument("--ddp-steps", type=int, default=150, help="steps of the DDP run")
    parser.add_argument("--skip-ddp", action="store_true")
    parser.add_argument("--skip-ps", action="store_true")
    parser.add_argument("--ddp-child", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--ddp-speeds", type=float, nargs=2, default=DDP_SPEEDS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ddp_child is not None:
        ddp_child(args.ddp_child, args.ddp_steps, args.ddp_speeds)
        return
    sys.path.insert(0, str(ROOT))
    import torch

    import lightning_echo
    from common import quiet

    quiet()  # the replay's Lightning banners and warnings

    out = args.out or Path(tempfile.mkdtemp(prefix="advisor_accuracy_"))
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    print(f"load average at the start: {os.getloadavg()[0]:.1f} ({os.cpu_count()} cores); torch {torch.__version__}; "
          f"lightning_echo {getattr(lightning_echo, '__version__', '?')}; runs in {out}\n", flush=True)
    if not args.skip_ps:
        parameter_server(out, args.steps)
    if not args.skip_ddp:
        ddp(out, args.ddp_steps)
    print(f"\n({time.perf_counter() - started:.0f} s in all; load average at the end: {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
