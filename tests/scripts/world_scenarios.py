"""What every world script shares: run the named scenarios in order on this rank, record each
one's outcome (or the error it raised) and what it left running, as ``OUT/<scenario>.rank<r>.json``.

A world script is run as ``python script.py OUT_DIR SCENARIO...`` (tests/process_worlds.py);
Lightning's launcher re-runs it for the other ranks, so each rank runs the same scenarios.
"""

from __future__ import annotations

import json
import multiprocessing
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

Scenario = Callable[[Path], dict[str, Any]]


def scenarios_of(namespace: Mapping[str, Any]) -> dict[str, Scenario]:
    """The ``scenario_<name>`` functions of a script's globals, by name."""
    return {name[len("scenario_"):]: fn for name, fn in namespace.items() if name.startswith("scenario_")}


def other_threads() -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t is not threading.main_thread())


def children() -> list[str]:
    return [child.name for child in multiprocessing.active_children()]  # also reaps the ended ones


def left_after(probe: Callable[[], list[str]], grace_s: float = 5.0) -> list[str]:
    """What ``probe`` still finds after up to ``grace_s`` seconds: a DataLoader's shutdown ends its
    queue feeder threads and reaps its workers a moment after ``fit`` returns, not before."""
    deadline = time.monotonic() + grace_s
    while (found := probe()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def run_scenarios(scenarios: Mapping[str, Scenario], rank: int, grace_s: float = 0.0) -> None:
    """Run the scenarios named on the command line; write each outcome with the threads (and child
    processes) still alive after it, waiting up to ``grace_s`` for them to end."""
    torch.set_num_threads(1)
    out, names = Path(sys.argv[1]), sys.argv[2:]
    for name in names:
        try:
            outcome = {"rank": rank, **scenarios[name](out)}
        except Exception as error:
            traceback.print_exc()
            outcome = {"rank": rank, "error_type": type(error).__name__, "error": str(error),
                       "traceback": traceback.format_exc()}
        outcome["threads_after_fit"] = left_after(other_threads, grace_s)
        outcome["children_after_fit"] = left_after(children, grace_s)
        (out / f"{name}.rank{rank}.json").write_text(json.dumps(outcome))
