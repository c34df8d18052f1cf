"""What the straggler algorithms' configs declare about a run (``conf/algorithm/stragglers/base.yaml``):
its report label, whether it is a comparison's synchronous baseline, and the K it averages. Each
is the :class:`~lightning_echo.stragglers.settings.StragglerSettings` method of the same name,
as a function Hydra can call."""

from __future__ import annotations

from typing import Optional

from lightning_echo.core.echo_factor import EchoFactor
from lightning_echo.echo.labels import echo_label
from lightning_echo.stragglers.settings import Backend, StragglerSettings


def straggler_label(settings: StragglerSettings, learners: int, backend: Backend = "simulated",
                    echo_factor: Optional[EchoFactor] = None) -> str:
    """The report label of a straggler run: ``k_async K=2 of P=8``, ``async P=8, mishchenko``;
    ``+ echo auto`` when its learners echo (``echo_factor`` set).

    Example::

        assert straggler_label(StragglerSettings("k_async", k=2), 8) == "k_async K=2 of P=8"
        assert straggler_label(StragglerSettings("k_sync", k=8), 8) == "sync P=8 (simulated)"
        assert straggler_label(StragglerSettings("async"), 4, backend="processes") == "async P=4 (processes)"
        assert straggler_label(StragglerSettings("async"), 4, echo_factor="auto") == "async P=4 + echo auto"
    """
    label = settings.label(learners, backend)
    return label if echo_factor is None else f"{label} + {echo_label(echo_factor)}"


def is_synchronous(settings: StragglerSettings, learners: int, echo_factor: Optional[EchoFactor] = None) -> bool:
    """True for the fully synchronous case (every update waits for all P learners' gradients) when
    its learners do not echo: a comparison's baseline."""
    return settings.is_synchronous(learners) and echo_factor is None


def effective_k(settings: StragglerSettings, learners: int) -> int:
    """The K every update of the variant averages (``sync``: P; ``async``, ``ringmaster``: 1)."""
    return settings.effective_k(learners)
