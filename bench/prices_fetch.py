"""Fetch a full month of real-time prices through the fake ERCOT API at ERCOT's real limit.

Prints one JSON line: per page size, API requests made, seconds taken, and the most requests the
server saw in any 60 s window (must stay <= 30); plus an unthrottled raw baseline in the same run.
Run from the repository root: `.venv/bin/python bench/prices_fetch.py`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.signals.ercot_api import DEFAULT_PAGE_SIZE, ErcotApiClient, ErcotApiCredentials
from adapters.signals.http_policy import SlidingWindowLimiter
from tests.adapters.signals.fake_ercot import (
    PASSWORD,
    SUBSCRIPTION_KEY,
    USERNAME,
    FakeErcot,
    api_rows,
    serve,
)

MONTH = (date(2024, 3, 1), date(2024, 3, 31))  # includes the spring-forward day
# --quick (make test): three days around the spring-forward day, under the per-minute limit
QUICK_SPAN = (date(2024, 3, 9), date(2024, 3, 11))
SMALL_PAGE = 50  # forces 60 pages: twice ERCOT's per-minute allowance
CREDENTIALS = ErcotApiCredentials(USERNAME, PASSWORD, SUBSCRIPTION_KEY)


def _max_in_window(stamps: list[float], window_s: float = 60.0) -> int:
    best, first = 0, 0
    for last, stamp in enumerate(stamps):
        while stamp - stamps[first] >= window_s:
            first += 1
        best = max(best, last - first + 1)
    return best


def _run(
    fake: FakeErcot, page_size: int, limiter: SlidingWindowLimiter, span: tuple[date, date]
) -> dict[str, object]:
    fake.api_requests.clear()
    client = ErcotApiClient(
        CREDENTIALS,
        base_url=fake.url,
        auth_url=fake.auth_url,
        page_size=page_size,
        limiter=limiter,
    )
    started = time.monotonic()
    frame = client.fetch("rt15", "HB_HUBAVG", *span)
    seconds = time.monotonic() - started
    stamps = [t for t, _, _ in fake.api_requests]
    return {
        "page_size": page_size,
        "rows": len(frame),
        "requests": client.requests_made,
        "seconds": round(seconds, 2),
        "max_requests_in_any_60s": _max_in_window(stamps),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="three days, for make test")
    quick = parser.parse_args().quick
    span = QUICK_SPAN if quick else MONTH
    with serve(FakeErcot(data={"rt15": api_rows("rt15")})) as fake:
        sizes = (DEFAULT_PAGE_SIZE, SMALL_PAGE)
        real = [_run(fake, size, SlidingWindowLimiter(), span) for size in sizes]
        unthrottled = SlidingWindowLimiter(max_requests=1_000_000, window_s=60.0)
        baseline = _run(fake, SMALL_PAGE, unthrottled, span)
    print(
        json.dumps(
            {
                "bench": "prices_fetch",
                "quick": quick,
                "span": [span[0].isoformat(), span[1].isoformat()],
                "limit_requests_per_minute": 30,
                "limited": real,
                "baseline_unthrottled": baseline,
            }
        )
    )


if __name__ == "__main__":
    main()
