"""The prepared device run: the ``cuda``-marked tests and three measurements, in one command.

    python bench/gpu_run.py OUT_DIR            # on a CUDA machine: within about 8 minutes on one H100
    python bench/gpu_run.py OUT_DIR --dry      # on the CPU, tiny sizes, seconds (CI runs this)

Writes ``OUT_DIR/gpu_run.md`` (every table, as printed) and ``OUT_DIR/gpu_run.json``.

1. A data-bound image job: a small CNN (torchvision's ResNet-18 when installed and not ``--dry``)
   on generated CIFAR-sized images, with CPU augmentation (random crop of a padded image, flip,
   colour jitter) in two DataLoader workers, so the device waits for data. For no echo and
   ``DataEchoing`` factor 2, 4 and ``auto`` (batch echoing after augmentation): steps per second,
   the fraction of training time spent waiting for data and its complement (busy), and the time to
   a fixed validation accuracy. Echoing before augmentation needs the library's own loader and is
   not measured here.
2. Host-to-device bytes per optimizer step, with and without echoing (the bytes the batch-transfer
   hook moves), and ``DataEchoing(factor=1)``'s overhead on a device-bound job (steps per second
   with the callback over without, the same job side by side, best of three).
3. The parameter server's device path with CUDA parameters: per update, the learner's
   forward/backward, the device-to-host copy of its gradient into the message buffer and the
   host-to-device copy of the parameters out of a START, at 1e6 and 1e7 parameters (the gloo
   transport between processes is ``bench/ps_throughput.py``'s part 3).

No number here is a device number unless the header names a CUDA device.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import pytorch_lightning as pl
import torch
from common import quiet
from torch.utils.data import DataLoader, Dataset

from lightning_echo.callbacks import TrainingProgress
from lightning_echo.echo import DataEchoing
from lightning_echo.stragglers.processes.exchange import FlatExchange

REPOSITORY = Path(__file__).resolve().parents[1]


class GeneratedImages(Dataset):
    """CIFAR-sized images of ``classes`` classes (a fixed pattern per class plus noise), augmented
    on the CPU at each read: pad-and-crop, horizontal flip, brightness and contrast jitter."""

    def __init__(self, size: int, classes: int = 10, seed: int = 0, augment: bool = True, work: int = 1) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.patterns = torch.randn(classes, 3, 32, 32, generator=torch.Generator().manual_seed(1234))
        self.labels = torch.randint(0, classes, (size,), generator=generator)
        self.noise_seed, self.augment, self.work = seed, augment, work

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.noise_seed * 1_000_003 + index)
        label = self.labels[index]
        image = self.patterns[label] + 1.5 * torch.randn(3, 32, 32, generator=generator)
        if self.augment:
            for _ in range(self.work):  # the CPU cost of a real augmentation pipeline
                padded = torch.nn.functional.pad(image, (4, 4, 4, 4), mode="reflect")
                top, left = torch.randint(0, 9, (2,), generator=generator).tolist()
                image = padded[:, top:top + 32, left:left + 32]
                if torch.rand((), generator=generator) < 0.5:
                    image = image.flip(-1)
                image = (image - image.mean()) * (0.8 + 0.4 * torch.rand((), generator=generator)) + image.mean()
        return image, label


def small_cnn(classes: int = 10) -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.BatchNorm2d(32), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.BatchNorm2d(64), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(64, classes))


def image_model(dry: bool) -> tuple[torch.nn.Module, str]:
    if not dry:
        try:
            import torchvision

            net = torchvision.models.resnet18(num_classes=10)
            net.conv1 = torch.nn.Conv2d(3, 64, 3, padding=1, bias=False)  # CIFAR-sized inputs
            net.maxpool = torch.nn.Identity()
            return net, "torchvision resnet18 (CIFAR stem)"
        except ImportError:
            pass
    return small_cnn(), "a 2-layer CNN"


class Classifier(pl.LightningModule):
    """Cross-entropy on images; counts the bytes each transfer moves to the device."""

    def __init__(self, net: torch.nn.Module, lr: float = 0.05) -> None:
        super().__init__()
        self.net, self.lr = net, lr
        self.transferred_bytes = 0

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        if self.trainer is not None and self.trainer.training:
            self.transferred_bytes += sum(t.numel() * t.element_size() for t in batch if isinstance(t, torch.Tensor))
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def accuracy(model: Classifier, loader: DataLoader, device: torch.device) -> float:
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += int((model.net(x.to(device)).argmax(1) == y.to(device)).sum())
            total += len(y)
    model.train()
    return correct / total


class TimeToAccuracy(pl.Callback):
    """Checks the validation accuracy every ``every`` steps; stops at ``target``."""

    def __init__(self, loader: DataLoader, target: float, every: int) -> None:
        self.loader, self.target, self.every = loader, target, every
        self.reached_s: Optional[float] = None
        self.best = 0.0
        self._start = 0.0
        self._excluded = 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if trainer.global_step % self.every:
            return
        began = time.perf_counter()
        self.best = max(self.best, accuracy(pl_module, self.loader, pl_module.device))  # type: ignore[arg-type]
        self._excluded += time.perf_counter() - began
        if self.best >= self.target and self.reached_s is None:
            self.reached_s = began - self._start - (self._excluded - (time.perf_counter() - began))
            trainer.should_stop = True


def trainer_for(device: str, callbacks: list[pl.Callback], **kwargs: Any) -> pl.Trainer:
    return pl.Trainer(accelerator="gpu" if device == "cuda" else "cpu", devices=1, callbacks=callbacks, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0, limit_val_batches=0, **kwargs)


def data_bound_job(device: str, dry: bool) -> dict[str, Any]:
    """Part 1 (see the module docstring)."""
    size, batch, max_steps, work = (256, 16, 24, 1) if dry else (20_000, 128, 3_000, 3)
    target, every, seconds = (0.2, 8, 30.0) if dry else (0.80, 50, 60.0)
    validation = DataLoader(GeneratedImages(512 if dry else 2_000, seed=99, augment=False), batch_size=256)
    rows = []
    for label, echo in [("no echo", None), ("echo x2", 2), ("echo x4", 4), ("echo auto", "auto")]:
        torch.manual_seed(0)
        net, net_name = image_model(dry)
        model = Classifier(net)
        progress, timer = TrainingProgress(), TimeToAccuracy(validation, target, every)
        callbacks: list[pl.Callback] = [progress, timer]
        if echo is not None:
            callbacks.append(DataEchoing(factor=echo, max_factor=4))
        loader = DataLoader(GeneratedImages(size, work=work), batch_size=batch, shuffle=True, num_workers=2,
                            persistent_workers=True, pin_memory=device == "cuda", drop_last=True)
        trainer = trainer_for(device, callbacks, max_steps=max_steps, max_time={"seconds": seconds})
        trainer.fit(model, loader)
        elapsed = max(progress.elapsed_s, 1e-9)
        wait = progress.ledger.data_wait_s / elapsed
        rows.append({"config": label, "model": net_name, "steps": trainer.global_step,
                     "steps_per_s": trainer.global_step / elapsed, "data_wait_fraction": wait, "busy_fraction": 1 - wait,
                     "fresh_batches": progress.fresh_batches, "best_accuracy": timer.best,
                     "time_to_target_s": timer.reached_s, "target_accuracy": target})
    return {"rows": rows}


def transfer_and_overhead(device: str, dry: bool) -> dict[str, Any]:
    """Part 2 (see the module docstring)."""
    batch = 16 if dry else 256
    bytes_rows = []
    for label, echo in [("no echo", None), ("echo x2", 2), ("echo x4", 4)]:
        model = Classifier(small_cnn())
        callbacks: list[pl.Callback] = [DataEchoing(factor=echo)] if echo else []
        trainer = trainer_for(device, callbacks, max_steps=16 if dry else 200)
        trainer.fit(model, DataLoader(GeneratedImages(64 * batch, augment=False), batch_size=batch))
        bytes_rows.append({"config": label, "steps": trainer.global_step,
                           "h2d_bytes_per_step": model.transferred_bytes / max(1, trainer.global_step)})
    # device-bound: the batch is tiny to move, the model large to compute; the same job side by side
    width, steps = (64, 20) if dry else (4096, 300)
    data = torch.utils.data.TensorDataset(torch.randn(steps * 32, width), torch.randint(0, 10, (steps * 32,)))

    def steps_per_s(with_callback: bool) -> float:
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.ReLU(), torch.nn.Linear(width, width),
                                  torch.nn.ReLU(), torch.nn.Linear(width, 10))
        trainer = trainer_for(device, [DataEchoing(factor=1)] if with_callback else [], max_steps=steps)
        began = time.perf_counter()
        trainer.fit(Classifier(net), DataLoader(data, batch_size=32))
        if device == "cuda":
            torch.cuda.synchronize()
        return trainer.global_step / (time.perf_counter() - began)

    pairs = [(steps_per_s(False), steps_per_s(True)) for _ in range(3)]
    plain, echoed = max(p for p, _ in pairs), max(e for _, e in pairs)
    return {"bytes": bytes_rows, "factor_one": {"plain_steps_per_s": plain, "echo_steps_per_s": echoed,
                                                "ratio": echoed / plain}}


def timed(function: Callable[[], Any], device: str, repeats: int) -> float:
    """Median seconds of ``function`` over ``repeats`` calls (device work included)."""
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        began = time.perf_counter()
        function()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - began)
    return sorted(times)[len(times) // 2]


def parameter_server_device_path(device: str, dry: bool) -> dict[str, Any]:
    """Part 3 (see the module docstring)."""
    rows = []
    for parameters in ((10_000, 100_000) if dry else (1_000_000, 10_000_000)):
        width = int(math.sqrt(parameters))
        layer = torch.nn.Linear(width, width, bias=False).to(device)
        params = list(layer.parameters())
        exchange = FlatExchange(params)
        flat = torch.empty(exchange.numel, pin_memory=device == "cuda")  # the message buffer, in host memory
        x = torch.randn(64, width, device=device)

        def compute() -> None:
            layer.zero_grad(set_to_none=False)
            layer(x).square().mean().backward()

        compute()
        repeats = 5 if dry else 20
        rows.append({
            "parameters": exchange.parameter_numel,
            "compute_ms": 1e3 * timed(compute, device, repeats),
            "gradient_to_host_ms": 1e3 * timed(lambda: exchange.pack_gradient([p.grad for p in params], 0.0, 64.0, flat),
                                               device, repeats),
            "parameters_to_device_ms": 1e3 * timed(lambda: exchange.unpack_parameters(flat, params), device, repeats),
        })
    return {"rows": rows}


def run_marked_tests(out: Path) -> dict[str, Any]:
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "tests/test_device_paths.py"],
                            cwd=REPOSITORY, capture_output=True, text=True)
    (out / "cuda_tests.txt").write_text(result.stdout + result.stderr)
    return {"exit_code": result.returncode, "summary": (result.stdout.strip().splitlines() or [""])[-1]}


def tables(report: dict[str, Any]) -> str:
    lines = [f"# Device run: {report['device_name']} (torch {report['torch']}){' -- DRY RUN on CPU, tiny sizes' if report['dry'] else ''}", ""]
    if report.get("tests"):
        lines += [f"cuda-marked tests: {report['tests']['summary']} (exit {report['tests']['exit_code']})", ""]
    lines += ["## 1. Data-bound image job", "",
              "| config | steps | steps/s | data wait | busy | best acc | time to target |", "|---|---|---|---|---|---|---|"]
    for row in report["data_bound"]["rows"]:
        reached = "-" if row["time_to_target_s"] is None else f"{row['time_to_target_s']:.1f} s"
        lines.append(f"| {row['config']} | {row['steps']} | {row['steps_per_s']:.1f} | {row['data_wait_fraction']:.0%} | "
                     f"{row['busy_fraction']:.0%} | {row['best_accuracy']:.3f} | {reached} |")
    lines += ["", f"model: {report['data_bound']['rows'][0]['model']}; target accuracy "
              f"{report['data_bound']['rows'][0]['target_accuracy']}", "",
              "## 2. Host-to-device bytes per step; factor-1 overhead", "", "| config | steps | H2D bytes/step |", "|---|---|---|"]
    for row in report["transfers"]["bytes"]:
        lines.append(f"| {row['config']} | {row['steps']} | {row['h2d_bytes_per_step']:.0f} |")
    one = report["transfers"]["factor_one"]
    lines += ["", f"DataEchoing(factor=1) on a device-bound job: {one['echo_steps_per_s']:.1f} steps/s against "
              f"{one['plain_steps_per_s']:.1f} without (ratio {one['ratio']:.3f}, best of 3 each)", "",
              "## 3. Parameter server, device path per update", "",
              "| parameters | compute ms | gradient to host ms | parameters to device ms |", "|---|---|---|---|"]
    for row in report["parameter_server"]["rows"]:
        lines.append(f"| {row['parameters']:.0e} | {row['compute_ms']:.2f} | {row['gradient_to_host_ms']:.2f} | "
                     f"{row['parameters_to_device_ms']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for gpu_run.md, gpu_run.json and the tests' output")
    parser.add_argument("--dry", action="store_true", help="on the CPU with tiny sizes (what CI runs)")
    args = parser.parse_args(argv)
    quiet()
    cuda = torch.cuda.is_available() and not args.dry
    device = "cuda" if cuda else "cpu"
    if not cuda and not args.dry:
        print("gpu_run: no CUDA device here; run with --dry for the CPU dry run", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    report: dict[str, Any] = {"device_name": torch.cuda.get_device_name(0) if cuda else "CPU", "torch": torch.__version__,
                              "dry": args.dry}
    report["tests"] = run_marked_tests(args.out) if cuda else None
    report["data_bound"] = data_bound_job(device, args.dry)
    report["transfers"] = transfer_and_overhead(device, args.dry)
    report["parameter_server"] = parameter_server_device_path(device, args.dry)
    report["elapsed_s"] = time.perf_counter() - began
    text = tables(report) + f"\n({report['elapsed_s']:.0f} s in all)\n"
    print(text)
    (args.out / "gpu_run.md").write_text(text)
    (args.out / "gpu_run.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
