"""``lightning-echo advise RUN_DIR|TRACE``: what each straggler remedy and echoing would gain on a recorded run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from lightning_echo.advisor.predict import DEFAULT_GRADIENTS, DEFAULT_MAX_FACTOR, MAX_STALENESS, REPLAY_VARIANTS
from lightning_echo.errors import LightningEchoError

PROG = "lightning-echo advise"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Fit a recorded run's compute times, predict updates per second, staleness and wasted work of "
                    "every straggler variant over K / B / R and what echoing would add; print a table and a "
                    "recommendation, write an HTML page.",
    )
    p.add_argument("path", type=Path, help="a run directory (with step_times.csv), step_times.csv, or a compute-time "
                   "trace (learner,seconds or seconds)")
    p.add_argument("--out", type=Path, default=None, help="where to write index.html, predictions.csv and the figures "
                   "(default: <run dir>/advice)")
    p.add_argument("--replay", action="store_true", help="also train the run's own model (from .hydra/config.yaml) on "
                   "simulated learners replaying the recorded times, for p_sync and the shortlisted variants (slower)")
    p.add_argument("--learners", type=int, default=None, help="predict for P learners (default: the recorded ranks; "
                   "more learners replay the ranks in turn)")
    p.add_argument("--max-k", type=int, default=None, help="the largest K (B) to consider")
    p.add_argument("--max-staleness", type=float, default=MAX_STALENESS,
                   help=f"the largest mean staleness a recommended variant may have (default {MAX_STALENESS:g})")
    p.add_argument("--source", choices=("trace", "fit"), default="trace",
                   help="replay the recorded times (default) or the fitted model")
    p.add_argument("--gradients", type=int, default=DEFAULT_GRADIENTS,
                   help=f"gradients per replayed configuration (default {DEFAULT_GRADIENTS})")
    p.add_argument("--max-factor", type=int, default=DEFAULT_MAX_FACTOR,
                   help=f"echo factor auto's cap (default {DEFAULT_MAX_FACTOR})")
    p.add_argument("--replay-steps", type=int, default=None, help="p_sync updates of a --replay (default: the run's "
                   "max_steps, at most 400)")
    p.add_argument("--target-gap", type=float, default=0.01, help="--replay's target: p_sync's final loss x (1 + gap)")
    p.add_argument("--no-overhead", action="store_false", dest="overhead",
                   help="predict from the compute times alone (default: add the overhead calibrated on the recorded "
                   "run where its trace tells its real time per update: one device, DDP, a parameter server's p_sync)")
    p.add_argument("--replay-variants", type=int, default=REPLAY_VARIANTS,
                   help=f"shortlisted variants that --replay trains besides p_sync (default {REPLAY_VARIANTS})")
    p.add_argument("--trust-config", action="store_true", dest="trust_config",
                   help="--replay builds also what the saved config names beyond the packaged configs' callables")
    return p


def advise_main(argv: Sequence[str]) -> int:
    """Run the advise command; returns the exit status (2 for bad input, printed as one line)."""
    from lightning_echo.advisor.advise import advise  # matplotlib and the app only when the command runs

    args = parser().parse_args(list(argv))
    try:
        advice = advise(args.path, out=args.out, learners=args.learners, max_k=args.max_k, replay=args.replay,
                        source=args.source, gradients=args.gradients, max_staleness=args.max_staleness,
                        max_factor=args.max_factor, replay_steps=args.replay_steps, target_gap=args.target_gap,
                        trust_config=args.trust_config, overhead=args.overhead, replay_variants=args.replay_variants)
    except LightningEchoError as error:
        print(f"lightning-echo: error: {error}", file=sys.stderr)
        return 2
    print(advice.text(), flush=True)
    return 0
