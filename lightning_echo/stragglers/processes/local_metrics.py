"""torchmetrics objects that sync only within their own process while a parameter-server fit runs.

A torchmetrics ``Metric`` syncs its state through ``torch.distributed`` on the default group
whenever a process group exists (at ``compute()``, which Lightning calls for a metric logged as
an object), bypassing the strategy's ``reduce`` and ``barrier``. On a parameter server the
default group holds the server and every learner, which run different numbers of steps and
epochs and never meet in the same collective: the first sync would wait forever. The server
evaluates on the whole validation set and each learner's training metrics are its own (their
per-batch values travel to the server with the gradients), so every metric is complete within
its process: it must not sync.
"""

from __future__ import annotations

from typing import Any, Callable

Undo = Callable[[], None]


def _not_distributed() -> bool:
    """A ``distributed_available_fn`` for a metric that must not sync."""
    return False


def keep_metric_syncs_local(module: Any) -> Undo:
    """Make every torchmetrics ``Metric`` among ``module``'s submodules (``MetricCollection``
    members included) compute from its own process's state; returns the undo."""
    saved = []
    for metric in module.modules():
        if hasattr(metric, "distributed_available_fn"):  # torchmetrics >= 0.8: the hook every sync consults
            saved.append((metric, metric.distributed_available_fn))
            metric.distributed_available_fn = _not_distributed

    def undo() -> None:
        for metric, original in saved:
            metric.distributed_available_fn = original

    return undo
