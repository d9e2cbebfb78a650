"""ciap_lib.constants: the one duration rule every generation entry point uses."""
import math

import pytest

from ciap_lib.constants import MAX_DURATION, MIN_DURATION, check_duration


def test_check_duration_accepts_the_bounds_and_returns_floats():
    assert check_duration(5) == 5.0 and isinstance(check_duration(5), float)
    assert check_duration(MIN_DURATION) == MIN_DURATION and check_duration(MAX_DURATION) == MAX_DURATION
    assert check_duration("7.5") == 7.5


@pytest.mark.parametrize("bad", [MIN_DURATION - 0.01, MAX_DURATION + 0.01, 20, 0, -5, math.nan, math.inf, "x", None,
                                 True])
def test_check_duration_rejects_with_the_name_and_the_range(bad):
    with pytest.raises(ValueError) as ei:
        check_duration(bad, "generation.duration")
    msg = str(ei.value)
    assert msg.startswith("generation.duration: ") and repr(bad) in msg
