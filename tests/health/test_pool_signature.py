"""``open_pool`` takes ``HealthyPool``'s parameters (written once, on the class)."""

from __future__ import annotations

import inspect

import pytest

from health.pool import DEFAULT_DRAIN_TIMEOUT, HealthyPool, open_pool


def test_open_pool_shows_the_pool_parameters() -> None:
    shown = inspect.signature(open_pool)
    assert list(shown.parameters) == list(inspect.signature(HealthyPool).parameters)
    assert shown.parameters["service"].kind is inspect.Parameter.KEYWORD_ONLY
    assert shown.parameters["drain_timeout"].default == DEFAULT_DRAIN_TIMEOUT


async def test_open_pool_rejects_an_unknown_parameter() -> None:
    with pytest.raises(TypeError, match="not_an_option"):
        async with open_pool(["a:1"], not_an_option=1):  # type: ignore[call-arg]
            pass
