"""PNG figures of a comparison: the metric against wall-clock time, fresh samples and optimizer
steps, one line (mean over seeds) and band (min to max) per configuration, the target dashed.

Text from run directories is drawn as is: a ``$`` never starts matplotlib's mathtext."""

from __future__ import annotations

from pathlib import Path

from lightning_echo.report.aggregate import AXES, Comparison, Configuration

FIGURE_FILES = {axis: f"{axis_name}.png" for axis, axis_name in
                (("time", "loss_vs_time"), ("fresh_samples", "loss_vs_fresh_samples"), ("steps", "loss_vs_steps"))}


def write_figures(comparison: Comparison, directory: Path) -> dict[str, Path]:
    """One PNG per x-axis in ``directory``; returns axis -> path."""
    import matplotlib  # lazily: choosing the Agg backend must not happen on importing the package

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for axis in AXES:
        axis_label = comparison.axis_label(axis)
        figure, ax = plt.subplots(figsize=(6.4, 4.0))
        for index, configuration in enumerate(comparison.configurations):
            data = configuration.bands.get(axis)
            if data is None or not data.x:
                continue
            color = colors[index % len(colors)]
            ax.plot(data.x, data.mean, color=color, label=plain(legend_label(configuration)), linewidth=1.6,
                    linestyle=":" if not configuration.counted else "-")
            if len(configuration.runs) > 1:
                ax.fill_between(data.x, data.low, data.high, color=color, alpha=0.2, linewidth=0)
        for target in comparison.targets:
            if target.value is not None:
                where = f" ({target.data})" if target.data else ""
                ax.axhline(target.value, color="0.3", linestyle="--", linewidth=1, label=plain(f"target {target.value:.4g}{where}"))
        ax.set_xlabel(axis_label)
        ax.set_ylabel(plain(comparison.metric))
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        ax.set_title(plain(f"{comparison.metric} against {axis_label.split(' [')[0]} (mean, min-max over seeds)"), fontsize=9)
        figure.tight_layout()
        path = directory / FIGURE_FILES[axis]
        figure.savefig(path, dpi=110)
        plt.close(figure)
        paths[axis] = path
    return paths


def legend_label(configuration: Configuration) -> str:
    """``echo x4 (3 runs, 1 diverged, 1 incomplete)``."""
    runs = configuration.runs
    diverged = sum(run.diverged for run in runs)
    incomplete = sum(run.status != "completed" and not run.diverged for run in runs)
    notes = [f"{len(runs)} run{'s' if len(runs) != 1 else ''}"]
    notes += [f"{diverged} diverged"] if diverged else []
    notes += [f"{incomplete} incomplete"] if incomplete else []
    return f"{configuration.label} ({', '.join(notes)})"


def plain(text: str) -> str:
    """``text`` for matplotlib as literal text: ``$`` escaped, so it never opens mathtext."""
    return text.replace("$", r"\$")
