"""How a simulated-learners run is labelled in reports: ``k_async K=2 of P=8``, ``async P=8, mishchenko``."""

from __future__ import annotations

from typing import Optional

from lightning_echo.core.schedule import variant_spec


def stale_label(variant: str, learners: int, k: Optional[int] = None, lr_rule: str = "constant",
                max_delay: Optional[int] = None, stop_stale: bool = False, processes: bool = False) -> str:
    """The report label of a straggler run (the fully synchronous case reads ``sync P=8``);
    ``processes``: its learners are real processes (a parameter server), not simulated.

    Example::

        assert stale_label("k_async", 8, k=2) == "k_async K=2 of P=8"
        assert stale_label("k_sync", 8, k=8) == "sync P=8 (simulated)"
        assert stale_label("async", 8, lr_rule="mishchenko") == "async P=8, mishchenko"
        assert stale_label("async", 4, processes=True) == "async P=4 (processes)"
    """
    ringmaster = variant == "ringmaster"
    spec = variant_spec(variant, learners, resolve_k(variant, learners, k), max_delay if ringmaster else None,
                        stop_stale if ringmaster else False)
    if spec.name in ("sync", "k_sync") and spec.k == spec.learners:
        label = f"sync P={spec.learners}" + ("" if processes else " (simulated)")
    elif spec.name in ("async", "ringmaster"):
        label = f"{spec.name} P={spec.learners}"
    elif spec.name == "rennala":
        label = f"rennala B={spec.k}, P={spec.learners}"
    else:
        label = f"{spec.name} K={spec.k} of P={spec.learners}"
    if spec.name == "ringmaster":
        label += f", R={spec.max_delay if spec.max_delay is not None else 'inf'}" + (" (stops)" if spec.stop_stale else "")
    return label + (f", {lr_rule}" if lr_rule != "constant" else "") + (" (processes)" if processes else "")


def resolve_k(variant: str, learners: int, k: Optional[int]) -> Optional[int]:
    """``stale.k`` as the schedule takes it: unset means half the learners for the K-variants and
    Rennala (at least 1); ``sync``, ``async`` and ``ringmaster`` fix K themselves (a ``stale.k``
    set for the other variants of a sweep is ignored there)."""
    if variant in ("sync", "async", "ringmaster"):
        return None
    return k if k is not None else max(1, learners // 2)


def is_synchronous(variant: str, learners: int, k: Optional[int] = None) -> bool:
    """True for the fully synchronous case (every update waits for all P learners' gradients)."""
    return variant == "sync" or (variant == "k_sync" and resolve_k(variant, learners, k) == learners)


def effective_k(variant: str, learners: int, k: Optional[int] = None) -> int:
    """The K every update of the variant averages (``sync``: P; ``async``, ``ringmaster``: 1)."""
    return variant_spec(variant, learners, resolve_k(variant, learners, k)).k
