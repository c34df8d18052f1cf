"""``lightning-echo report DIR [DIR ...]``: the comparison report of finished runs."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Optional, Sequence

from lightning_echo.errors import ConfigError, LightningEchoError
from lightning_echo.metric_names import Loss
from lightning_echo.report.build import print_report, write_report
from lightning_echo.validation import writable_directory


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lightning-echo report",
        description="Compare finished runs (sweep directories, run directories, wandb offline runs): "
                    "an HTML page with figures and a speed-up table.",
    )
    p.add_argument("paths", nargs="+", type=Path, help="sweep or run directories")
    p.add_argument("--out", type=Path, default=None, help="where to write index.html and the PNGs "
                   "(default: <first path>/report)")
    p.add_argument("--metric", default=Loss.VAL, help=f"the loss to compare (default: {Loss.VAL})")
    p.add_argument("--target", type=float, default=None, help="target loss (default: within --target-gap "
                   "of the synchronous runs' final loss)")
    p.add_argument("--target-gap", type=float, default=0.01, help="relative gap for the default target (0.01)")
    p.add_argument("--title", default=None)
    p.add_argument("--wandb", action="store_true", help="also create a wandb Report of the runs' groups "
                   "(needs wandb credentials and network)")
    p.add_argument("--wandb-project", default="lightning_echo")
    p.add_argument("--wandb-entity", default=None, help="wandb entity (default: $WANDB_ENTITY)")
    return p


def report_main(argv: Sequence[str]) -> int:
    """Run the report command; returns the exit status (2 for bad input, printed as one line)."""
    args = parser().parse_args(list(argv))
    try:
        _check(args)
        out = args.out or (args.paths[0] / "report")
        report = write_report(args.paths, out, metric=args.metric, target_loss=args.target,
                              target_gap=args.target_gap, title=args.title)
        print_report(report)
        if args.wandb:
            print(f"wandb report: {_publish_to_wandb(report, args)}")
    except LightningEchoError as error:
        print(f"lightning-echo: error: {error}", file=sys.stderr)
        return 2
    return 0


def _check(args: argparse.Namespace) -> None:
    if args.target is not None and not (math.isfinite(args.target)):
        raise ConfigError("--target", args.target, "must be a finite number")
    if not (math.isfinite(args.target_gap) and args.target_gap >= 0):
        raise ConfigError("--target-gap", args.target_gap, "must be a finite number >= 0")
    # Before reading any run: a report that cannot be written is refused in one line.
    if args.out is not None:
        writable_directory("--out", str(args.out), args.out)
    elif args.paths[0].is_dir():
        writable_directory("--out", str(args.paths[0] / "report"), args.paths[0] / "report")


def _publish_to_wandb(report: object, args: argparse.Namespace) -> Optional[str]:
    from lightning_echo.report.wandb_bridge import publish_comparison  # wandb-workspaces is heavy: only for --wandb

    return publish_comparison(report, project=args.wandb_project, entity=args.wandb_entity)
