"""The rate limiter and retry policy, on an injected clock (no minute-long waits)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.signals.http_policy import (
    RetryableHTTPError,
    SlidingWindowLimiter,
    call_with_retries,
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_the_default_is_ercots_30_requests_per_minute() -> None:
    clock = Clock()
    limiter = SlidingWindowLimiter(clock=clock, sleep=clock.sleep)
    assert (limiter.max_requests, limiter.window_s) == (30, 60.0)
    for _ in range(30):
        limiter.acquire()
        clock.now += 0.5
    assert clock.sleeps == []
    limiter.acquire()  # the 31st, 15 s after the first: wait until the first leaves the window
    assert clock.sleeps == [pytest.approx(45.0)]


@given(st.lists(st.floats(min_value=0.0, max_value=5.0), min_size=1, max_size=120))
def test_no_window_ever_holds_more_than_the_limit(gaps_s: list[float]) -> None:
    clock = Clock()
    limiter = SlidingWindowLimiter(max_requests=5, window_s=10.0, clock=clock, sleep=clock.sleep)
    sent: list[float] = []
    for gap in gaps_s:
        clock.now += gap
        limiter.acquire()
        sent.append(clock.now)
    for i in range(len(sent) - 5):
        assert sent[i + 5] - sent[i] >= 10.0 - 1e-9


def test_retry_after_is_honoured_and_attempts_are_bounded() -> None:
    clock = Clock()
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise RetryableHTTPError("429", retry_after_s=7.0)
        return "ok"

    assert call_with_retries(flaky, sleep=clock.sleep) == "ok"
    assert clock.sleeps == [7.0, 7.0]

    def down() -> str:
        raise RetryableHTTPError("503")

    with pytest.raises(RetryableHTTPError, match="503"):
        call_with_retries(down, max_attempts=4, sleep=clock.sleep)
    assert len(clock.sleeps) == 2 + 3


def test_errors_that_are_not_retryable_pass_at_once() -> None:
    clock = Clock()

    def broken() -> str:
        raise ValueError("bad")

    with pytest.raises(ValueError, match="bad"):
        call_with_retries(broken, sleep=clock.sleep)
    assert clock.sleeps == []
