"""Benchmark 1b: instruction count of DataEchoing(factor=1) per training step (needs valgrind).

Wall-clock overhead below a few percent cannot be resolved on a noisy shared machine, but
instruction counts are repeatable. Each configuration is run under callgrind twice, with
``--short`` and ``--long`` training steps; the difference is the instruction count of
``long - short`` steps (imports and setup cancel out). Prints instructions per step and their
ratio. Takes about 15 minutes on 2 cores (two runs at a time).

    python bench/echo_overhead_instructions.py [--short 20] [--long 120] [--model logreg|mlp]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent

WORKLOAD = """
import sys
sys.path.insert(0, {here!r})
from functools import partial
import torch
from torch.utils.data import DataLoader
from common import quiet, timed_fit
from lightning_echo.data import SyntheticDataModule
from lightning_echo.echo import DataEchoing
from lightning_echo.models import MLP, LogisticRegression
quiet()
steps, echo, model_name = int(sys.argv[1]), sys.argv[2] == "echo", sys.argv[3]
data = SyntheticDataModule(n_examples=16384, n_features=64, n_classes=10, batch_size=256)
optimizer = partial(torch.optim.SGD, lr=0.05)
model = LogisticRegression(data.spec, optimizer) if model_name == "logreg" else MLP(data.spec, optimizer, hidden_sizes=[512, 512])
torch.manual_seed(0)
loader = DataLoader(data.train_dataset, batch_size=256, shuffle=True)
timed_fit(model, loader, steps, [DataEchoing(factor=1)] if echo else [])
"""


def instructions(script: Path, steps: int, config: str, model: str) -> int:
    """Total instructions (callgrind's "Collected") of one run of the workload."""
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/out",
             sys.executable, str(script), str(steps), config, model],
            capture_output=True, text=True, check=True,
        )
    match = re.search(r"Collected : (\d+)", result.stderr)
    assert match, result.stderr[-2000:]
    return int(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--short", type=int, default=20)
    parser.add_argument("--long", type=int, default=120)
    parser.add_argument("--model", choices=("logreg", "mlp"), default="logreg")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "workload.py"
        script.write_text(WORKLOAD.format(here=str(HERE)))
        jobs = [(steps, config) for config in ("plain", "echo") for steps in (args.short, args.long)]
        with ThreadPoolExecutor(max_workers=2) as pool:
            counts = dict(zip(jobs, pool.map(lambda job: instructions(script, job[0], job[1], args.model), jobs)))
    steps = args.long - args.short
    per_step = {c: (counts[(args.long, c)] - counts[(args.short, c)]) / steps for c in ("plain", "echo")}
    print(f"model {args.model}, batch 256: instructions per training step (callgrind, {steps} steps)")
    print(f"  no callback:          {per_step['plain']:14,.0f}")
    print(f"  DataEchoing(factor=1): {per_step['echo']:14,.0f}")
    print(f"  ratio (plain / echo, a throughput ratio if time follows instructions): {per_step['plain'] / per_step['echo']:.4f}")


if __name__ == "__main__":
    main()
