"""How an echoed run is labelled in reports: ``echo x4``, ``echo auto``, ``echo x2 (example echoing)``."""

from __future__ import annotations

from lightning_echo.core.echo_factor import AUTO, EchoFactor


def echo_label(factor: EchoFactor, kind: str = "batch", name: str = "echo") -> str:
    """The report label of an echoed run.

    Example::

        assert echo_label(4) == "echo x4" and echo_label("auto") == "echo auto"
        assert echo_label(2, kind="example") == "echo x2 (example echoing)"
    """
    label = f"{name} auto" if factor == AUTO else f"{name} x{factor:g}" if isinstance(factor, float) else f"{name} x{factor}"
    return label + (f" ({kind} echoing)" if kind != "batch" else "")
