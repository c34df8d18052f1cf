"""The implicit momentum of asynchrony and the corrected explicit momentum (Mitliagkas et al. 2016)."""

from __future__ import annotations

import pytest

from lightning_echo.core.momentum import corrected_momentum, implicit_momentum
from lightning_echo.errors import ConfigError
from lightning_echo.stragglers import StragglerSettings


@pytest.mark.parametrize("learners, k, expected", [(8, 1, 0.875), (8, 2, 0.75), (4, 4, 0.0), (1, 1, 0.0)])
def test_implicit_momentum_is_one_minus_k_over_p(learners: int, k: int, expected: float) -> None:
    assert implicit_momentum(learners, k) == pytest.approx(expected)


def test_the_corrected_momentum_never_goes_below_zero() -> None:
    assert corrected_momentum(0.9, 0.875) == pytest.approx(0.025)
    assert corrected_momentum(0.5, 0.875) == 0.0
    with pytest.raises(ConfigError, match="implicit momentum=1.0"):
        corrected_momentum(0.9, 1.0)


@pytest.mark.parametrize("variant, k, offset", [("async", None, 0.875), ("k_async", 2, 0.75), ("ringmaster", None, 0.875),
                                                 ("k_batch_async", 4, 0.5), ("sync", None, 0.0), ("k_sync", 2, 0.0),
                                                 ("rennala", 2, 0.0)])
def test_only_variants_with_stale_gradients_are_corrected(variant: str, k, offset: float) -> None:
    settings = StragglerSettings(variant, k=k, momentum_correction="implicit")
    assert settings.resolve(8).momentum_offset == pytest.approx(offset)
    assert StragglerSettings(variant, k=k).resolve(8).momentum_offset == 0.0  # "none", the default


def test_an_unknown_correction_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError, match="stale.momentum_correction='sometimes' is not allowed") as raised:
        StragglerSettings("async", momentum_correction="sometimes")
    assert "\n" not in str(raised.value)
