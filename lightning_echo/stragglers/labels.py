"""What the straggler algorithms' configs declare about a run (``conf/algorithm/stragglers/base.yaml``):
its report label, whether it is a comparison's synchronous baseline, and the K it averages. Each
is the :class:`~lightning_echo.stragglers.settings.StragglerSettings` method of the same name,
as a function Hydra can call."""

from __future__ import annotations

from lightning_echo.stragglers.settings import Backend, StragglerSettings


def straggler_label(settings: StragglerSettings, learners: int, backend: Backend = "simulated") -> str:
    """The report label of a straggler run: ``k_async K=2 of P=8``, ``async P=8, mishchenko``.

    Example::

        assert straggler_label(StragglerSettings("k_async", k=2), 8) == "k_async K=2 of P=8"
        assert straggler_label(StragglerSettings("k_sync", k=8), 8) == "sync P=8 (simulated)"
        assert straggler_label(StragglerSettings("async"), 4, backend="processes") == "async P=4 (processes)"
    """
    return settings.label(learners, backend)


def is_synchronous(settings: StragglerSettings, learners: int) -> bool:
    """True for the fully synchronous case (every update waits for all P learners' gradients)."""
    return settings.is_synchronous(learners)


def effective_k(settings: StragglerSettings, learners: int) -> int:
    """The K every update of the variant averages (``sync``: P; ``async``, ``ringmaster``: 1)."""
    return settings.effective_k(learners)
