"""How the ERCOT adapters call HTTP: a client-side rate limiter and one retry policy.

Both take an injectable clock and sleep so tests can prove the behaviour without waiting a minute.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import tenacity

__all__ = [
    "Clock",
    "PageProgress",
    "RetryableHTTPError",
    "Sleep",
    "SlidingWindowLimiter",
    "call_with_retries",
]

Clock = Callable[[], float]
Sleep = Callable[[float], None]
PageProgress = Callable[[int, int], None]  # (pages or documents done, how many in all)
T = TypeVar("T")


class SlidingWindowLimiter:
    """At most `max_requests` in any `window_s` seconds (ERCOT Public API: 30 per minute).

    A sliding window, not a fixed one: ERCOT counts the last 60 s, so 30 calls at 0:59 and 30 at
    1:01 of two fixed windows would still be refused with 429.
    """

    def __init__(
        self,
        max_requests: int = 30,
        window_s: float = 60.0,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = time.sleep,
    ) -> None:
        if max_requests < 1 or window_s <= 0:
            raise ValueError("a limiter needs max_requests >= 1 and window_s > 0")
        self.max_requests = max_requests
        self.window_s = window_s
        self._clock = clock
        self._sleep = sleep
        self._sent: deque[float] = deque()
        self.waited_s = 0.0

    def acquire(self) -> None:
        """Block until one more request fits in the window, then count it."""
        now = self._clock()
        while self._sent and now - self._sent[0] >= self.window_s:
            self._sent.popleft()
        if len(self._sent) >= self.max_requests:
            pause = self.window_s - (now - self._sent[0])
            if pause > 0:
                self.waited_s += pause
                self._sleep(pause)
            self._sent.popleft()
            now = self._clock()
        self._sent.append(now)

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one request: wait for room, then count it at the time its answer finished.

        The server sees a request somewhere between our send and its answer; stamping the end
        keeps ERCOT's own 60 s window (measured on its side) within the limit too. Stamping the
        send instead let ERCOT see 31 requests in 60 s in bench/prices_fetch.py.
        """
        self.acquire()
        try:
            yield
        finally:
            self._sent[-1] = self._clock()


class RetryableHTTPError(Exception):
    """A failure worth another try (429, 5xx, a cut connection, a truncated body)."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def _wait(base_s: float, max_s: float) -> Callable[[tenacity.RetryCallState], float]:
    def wait(state: tenacity.RetryCallState) -> float:
        outcome = state.outcome
        error = outcome.exception() if outcome is not None else None
        if isinstance(error, RetryableHTTPError) and error.retry_after_s is not None:
            return error.retry_after_s  # the server said when; honour it exactly
        backoff = base_s * 2 ** (state.attempt_number - 1)
        return float(min(max_s, backoff) * (0.5 + random.random() / 2))

    return wait


def call_with_retries(
    action: Callable[[], T],
    *,
    max_attempts: int = 6,
    base_backoff_s: float = 1.0,
    max_backoff_s: float = 60.0,
    sleep: Sleep = time.sleep,
) -> T:
    """Run `action`, retrying RetryableHTTPError with backoff; other errors pass through at once.

    The last RetryableHTTPError is re-raised when attempts run out; callers translate it.
    """
    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(RetryableHTTPError),
        wait=_wait(base_backoff_s, max_backoff_s),
        stop=tenacity.stop_after_attempt(max_attempts),
        sleep=sleep,
        reraise=True,
    )
    return retrying(action)
