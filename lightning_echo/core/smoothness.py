"""Estimate the smoothness constant beta of a loss: top Hessian eigenvalue by power iteration."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from lightning_echo.validation import positive_float, positive_int


def estimate_smoothness(
    loss_fn: Callable[[], torch.Tensor],
    params: Sequence[torch.Tensor],
    iterations: int = 30,
    tolerance: float = 1e-4,
    seed: int = 0,
) -> float:
    """Largest Hessian eigenvalue (in magnitude) of ``loss_fn()`` w.r.t. ``params``.

    Power iteration on Hessian-vector products (double backward); for a convex loss this is
    the local smoothness ``beta`` the theory step sizes need. ``loss_fn`` recomputes the
    loss on a fixed batch each call. Stops after ``iterations`` or when the estimate changes
    by less than ``tolerance`` (relative).
    """
    positive_int("iterations", iterations)
    positive_float("tolerance", tolerance)
    params = [p for p in params if p.requires_grad]
    generator = torch.Generator().manual_seed(seed)
    vector = [torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device) for p in params]
    estimate = 0.0
    for _ in range(iterations):
        norm = torch.sqrt(sum((v * v).sum() for v in vector))
        vector = [v / norm for v in vector]
        loss = loss_fn()
        grads = torch.autograd.grad(loss, params, create_graph=True)
        products = torch.autograd.grad(grads, params, grad_outputs=vector)
        new_estimate = float(sum((h * v).sum() for h, v in zip(products, vector)))
        vector = [h.detach() for h in products]
        if estimate and abs(new_estimate - estimate) <= tolerance * abs(estimate):
            return abs(new_estimate)
        estimate = new_estimate
    return abs(estimate)
