"""The Public API client against a loopback server speaking ERCOT's real formats and failures."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date

import pandas as pd
import pytest

from adapters.signals.ercot_api import ErcotApiClient, ErcotApiCredentials
from adapters.signals.http_policy import SlidingWindowLimiter
from adapters.signals.price_errors import (
    MissingCredentialsError,
    NoPriceDataError,
    UnknownSettlementPointError,
)
from agent.errors import SignalAuthError, SignalFormatError, SignalUnavailableError
from tests.adapters.signals.fake_ercot import (
    PASSWORD,
    SUBSCRIPTION_KEY,
    USERNAME,
    FakeErcot,
    api_rows,
    serve,
)
from tests.helpers.peers import free_port

DAYS = (date(2024, 11, 2), date(2024, 11, 4))
GOOD = ErcotApiCredentials(USERNAME, PASSWORD, SUBSCRIPTION_KEY)


class FakeTime:
    """A clock that only moves when the client sleeps (or the test says so)."""

    def __init__(self) -> None:
        self.now = 1_000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def fake() -> Iterator[FakeErcot]:
    with serve(FakeErcot(data={"rt15": api_rows("rt15", DAYS), "dam": api_rows("dam", DAYS)})) as f:
        yield f


def _client(
    fake: FakeErcot, time: FakeTime, credentials: ErcotApiCredentials = GOOD, **kw: object
) -> ErcotApiClient:
    return ErcotApiClient(
        credentials,
        base_url=fake.url,
        auth_url=fake.auth_url,
        clock=time.clock,
        sleep=time.sleep,
        **kw,  # type: ignore[arg-type]
    )


def _expected(day: date) -> pd.DataFrame:
    return api_rows("rt15", (day, day))


def test_pages_are_fetched_until_total_pages_with_one_login(fake: FakeErcot) -> None:
    time = FakeTime()
    pages: list[tuple[int, int]] = []
    client = _client(fake, time, page_size=40)
    day = date(2024, 11, 3)
    result = client.fetch_normalized(
        "rt15", "HB_HUBAVG", day, day, on_page=lambda d, t: pages.append((d, t))
    )
    assert len(result.frame) == 100  # the fall-back day
    assert pages == [(1, 3), (2, 3), (3, 3)]
    assert fake.logins == 1
    assert [q["page"] for _, _, q in fake.api_requests] == ["1", "2", "3"]
    assert (
        result.frame["price_usd_per_mwh"].tolist()
        == _expected(date(2024, 11, 3))["settlementPointPrice"].tolist()
    )


def test_rows_are_mapped_by_the_fields_list_not_by_position(fake: FakeErcot) -> None:
    time = FakeTime()
    usual = _client(fake, time).fetch("rt15", "HB_HUBAVG", *DAYS)
    fake.reversed_fields = True
    reordered = _client(fake, time).fetch("rt15", "HB_HUBAVG", *DAYS)
    pd.testing.assert_frame_equal(usual, reordered)


def test_a_new_token_is_fetched_before_the_hour_runs_out(fake: FakeErcot) -> None:
    time = FakeTime()
    client = _client(fake, time)
    client.fetch("dam", "HB_HUBAVG", *DAYS)
    time.now += 3600 - 299  # inside the 5-minute margin before expiry
    client.fetch("dam", "HB_HUBAVG", *DAYS)
    assert fake.logins == 2


def test_a_revoked_token_leads_to_one_new_login_and_the_call_succeeds(fake: FakeErcot) -> None:
    time = FakeTime()
    fake.faults = ["revoke"]
    frame = _client(fake, time).fetch("dam", "HB_HUBAVG", *DAYS)
    assert len(frame) == 73  # 24 + 25 (fall-back) + 24 hours
    assert fake.logins == 2


def test_429_honours_retry_after_and_then_succeeds(fake: FakeErcot) -> None:
    time = FakeTime()
    fake.faults = ["429"]
    frame = _client(fake, time).fetch("dam", "HB_HUBAVG", *DAYS)
    assert len(frame) == 73  # 24 + 25 (fall-back) + 24 hours
    assert time.sleeps == [1.0]  # the server's Retry-After, exactly


def test_500s_and_a_truncated_body_are_retried_with_backoff(fake: FakeErcot) -> None:
    time = FakeTime()
    fake.faults = ["500", "truncated", "500"]
    client = _client(fake, time, base_backoff_s=2.0)
    frame = client.fetch("dam", "HB_HUBAVG", *DAYS)
    assert len(frame) == 73  # 24 + 25 (fall-back) + 24 hours
    assert len(time.sleeps) == 3
    assert 1.0 <= time.sleeps[0] <= 2.0  # growing, jittered
    assert 2.0 <= time.sleeps[1] <= 4.0
    assert client.requests_made == 4


def test_an_api_that_keeps_failing_becomes_signal_unavailable(fake: FakeErcot) -> None:
    time = FakeTime()
    fake.faults = ["500"] * 3
    with pytest.raises(SignalUnavailableError, match=r"after 3 attempts.*500"):
        _client(fake, time, max_attempts=3).fetch("dam", "HB_HUBAVG", *DAYS)


def test_an_unreachable_host_becomes_signal_unavailable() -> None:
    time = FakeTime()
    url = f"http://127.0.0.1:{free_port()}"
    client = ErcotApiClient(
        GOOD, base_url=url, auth_url=url + "/token", clock=time.clock, sleep=time.sleep,
        max_attempts=2,
    )  # fmt: skip
    with pytest.raises(SignalUnavailableError, match="login"):
        client.fetch("dam", "HB_HUBAVG", *DAYS)


def test_a_malformed_row_is_rejected_naming_page_and_row(fake: FakeErcot) -> None:
    time = FakeTime()
    fake.faults = ["malformed_row"]
    with pytest.raises(SignalFormatError, match=r"page 1 row 37 is malformed"):
        _client(fake, time).fetch("dam", "HB_HUBAVG", *DAYS)


def test_wrong_password_is_an_auth_error_with_ercots_reason(fake: FakeErcot) -> None:
    bad = ErcotApiCredentials(USERNAME, "wrong", SUBSCRIPTION_KEY)
    with pytest.raises(SignalAuthError, match="AADB2C90225"):
        _client(fake, FakeTime(), bad).fetch("dam", "HB_HUBAVG", *DAYS)


def test_wrong_subscription_key_is_an_auth_error(fake: FakeErcot) -> None:
    bad = ErcotApiCredentials(USERNAME, PASSWORD, "nope")
    with pytest.raises(SignalAuthError, match="invalid subscription key"):
        _client(fake, FakeTime(), bad).fetch("dam", "HB_HUBAVG", *DAYS)
    assert fake.logins == 2  # one fresh login was tried before giving up


def test_missing_environment_credentials_are_named() -> None:
    with pytest.raises(MissingCredentialsError, match="ERCOT_API_PASSWORD"):
        ErcotApiCredentials.from_env({"ERCOT_API_USERNAME": "u", "ERCOT_API_SUBSCRIPTION_KEY": "k"})
    creds = ErcotApiCredentials.from_env(
        {"ERCOT_API_USERNAME": "u", "ERCOT_API_PASSWORD": "p", "ERCOT_API_SUBSCRIPTION_KEY": "k"}
    )
    assert "p" not in repr(creds).replace("password", "").replace("ErcotApi", "")


def test_unknown_settlement_point_and_empty_days_are_told_apart(fake: FakeErcot) -> None:
    client = _client(fake, FakeTime())
    with pytest.raises(UnknownSettlementPointError, match="HB_NOWHERE"):
        client.fetch("rt15", "HB_NOWHERE", *DAYS)
    with pytest.raises(NoPriceDataError, match="no rt15 prices for 2022-01-01"):
        client.fetch("rt15", "HB_HUBAVG", date(2022, 1, 1), date(2022, 1, 2))


def test_the_limiter_holds_the_request_rate_on_the_wire(fake: FakeErcot) -> None:
    # 4 per 0.4 s of real time stands in for ERCOT's 30 per 60 s
    limiter = SlidingWindowLimiter(max_requests=4, window_s=0.4)
    client = ErcotApiClient(
        GOOD, base_url=fake.url, auth_url=fake.auth_url, page_size=10, limiter=limiter
    )
    client.fetch("dam", "HB_HUBAVG", date(2024, 11, 3), date(2024, 11, 3))  # 3 pages
    client.fetch("dam", "HB_HUBAVG", date(2024, 11, 2), date(2024, 11, 4))  # 8 pages
    seen = [t for t, _, _ in fake.api_requests]
    assert len(seen) == 11
    for first, fifth in zip(seen, seen[4:], strict=False):
        assert fifth - first >= 0.39
