"""Optimal training losses of the convex reference problems, solved to high precision in float64."""

from __future__ import annotations

from typing import Optional

import torch
from torch.nn import functional as F


def logistic_regression_optimum(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    bias: bool = True,
    l2: float = 0.0,
    max_iter: int = 2000,
    restarts: int = 5,
) -> tuple[torch.Tensor, Optional[torch.Tensor], float]:
    """Minimiser ``(weight, bias)`` and minimum of the mean cross-entropy of ``x @ weight.T + bias``
    plus ``l2/2 * ||weight||^2``.

    Full-batch L-BFGS with a strong-Wolfe line search in float64; ``weight`` has the shape of
    ``nn.Linear(num_features, num_classes).weight``. ``restarts`` reruns L-BFGS from its own
    result, which recovers from its occasional early stop on flat regions.
    """
    x64 = x.reshape(len(x), -1).double()
    weight = torch.zeros(num_classes, x64.shape[1], dtype=torch.float64, requires_grad=True)
    offset = torch.zeros(num_classes, dtype=torch.float64, requires_grad=bias)
    params = [weight, offset] if bias else [weight]
    solver = torch.optim.LBFGS(
        params,
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=1e-12,
        tolerance_change=1e-15,
        history_size=50,
        line_search_fn="strong_wolfe",
    )

    def objective() -> torch.Tensor:
        solver.zero_grad()
        loss = F.cross_entropy(x64 @ weight.T + offset, y)
        if l2:
            loss = loss + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        for _ in range(restarts):
            solver.step(objective)
        value = float(objective().item())
    return weight.detach().to(x.dtype), (offset.detach().to(x.dtype) if bias else None), value
