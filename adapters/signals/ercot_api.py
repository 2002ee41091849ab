"""ERCOT Public API client (api.ercot.com/api/public-reports): token, limits, retries, paging.

Facts it relies on (ERCOT developer portal, gridstatus): every call carries
`Ocp-Apim-Subscription-Key` and `Authorization: Bearer <id_token>`; the token comes from a
password-grant POST to ERCOT's Azure B2C login, lasts one hour and cannot be refreshed; ERCOT
refuses more than 30 requests a minute with 429; responses carry `fields` (column names) and
`data` (rows as arrays), paged with `page`/`size` up to `_meta.totalPages`.

Every requests/HTTP failure is translated here into agent.errors SignalError subclasses.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import pandas as pd
import requests

from adapters.signals.ercot_normalize import NormalizedPrices, normalize_ercot_prices
from adapters.signals.ercot_products import PRODUCTS, ErcotProduct
from adapters.signals.http_policy import (
    Clock,
    PageProgress,
    RetryableHTTPError,
    Sleep,
    SlidingWindowLimiter,
    call_with_retries,
)
from adapters.signals.price_errors import (
    MissingCredentialsError,
    NoPriceDataError,
    UnknownSettlementPointError,
)
from agent.errors import SignalAuthError, SignalFormatError, SignalUnavailableError

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "LOGIN_URL",
    "PUBLIC_API_URL",
    "ErcotApiClient",
    "ErcotApiCredentials",
    "PageProgress",
]

PUBLIC_API_URL = "https://api.ercot.com/api/public-reports"
_B2C_TENANT = "https://ercotb2c.b2clogin.com/ercotb2c.onmicrosoft.com"
LOGIN_URL = f"{_B2C_TENANT}/B2C_1_PUBAPI-ROPC-FLOW/oauth2/v2.0/token"
# ERCOT's public client id for the ROPC flow (developer.ercot.com, registration and auth page).
CLIENT_ID = "fec253ea-0d06-4272-a5e6-b478baeecd70"
# Rows per page. The API accepts large pages; a full month of one hub at 15 minutes is ~3,000 rows.
DEFAULT_PAGE_SIZE = 50_000
# Log in again this long before the hour runs out, so no call goes out with a dying token.
TOKEN_MARGIN_S = 300.0


@dataclass(frozen=True, slots=True)
class ErcotApiCredentials:
    username: str
    password: str = field(repr=False)
    subscription_key: str = field(repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ErcotApiCredentials:
        env = os.environ if env is None else env
        names = ("ERCOT_API_USERNAME", "ERCOT_API_PASSWORD", "ERCOT_API_SUBSCRIPTION_KEY")
        missing = [name for name in names if not env.get(name)]
        if missing:
            raise MissingCredentialsError(
                f"ERCOT Public API credentials missing from the environment: {', '.join(missing)} "
                "(register at apiexplorer.ercot.com, or use --source ercot-mis)"
            )
        return cls(*(env[name] for name in names))


@dataclass(slots=True)
class _Token:
    id_token: str
    expires_at: float


class _TokenRejectedError(RetryableHTTPError):
    """401 from the API: log in again once, then retry."""


class ErcotApiClient:
    """Historical ERCOT prices from the Public API; implements agent.ports.PriceHistory."""

    def __init__(
        self,
        credentials: ErcotApiCredentials,
        *,
        base_url: str = PUBLIC_API_URL,
        auth_url: str = LOGIN_URL,
        page_size: int = DEFAULT_PAGE_SIZE,
        limiter: SlidingWindowLimiter | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = time.sleep,
        max_attempts: int = 6,
        base_backoff_s: float = 1.0,
        timeout_s: float = 60.0,
        session: requests.Session | None = None,
    ) -> None:
        self._credentials = credentials
        self.base_url = base_url.rstrip("/")
        self.auth_url = auth_url
        self.page_size = page_size
        self.limiter = limiter or SlidingWindowLimiter(clock=clock, sleep=sleep)
        self._clock = clock
        self._sleep = sleep
        self._max_attempts = max_attempts
        self._base_backoff_s = base_backoff_s
        self._timeout_s = timeout_s
        self._session = session or requests.Session()
        self._token: _Token | None = None
        self._rejections_in_a_row = 0
        self.requests_made = 0  # API calls (the limiter's currency), retries included
        self.logins = 0

    # -- PriceHistory ------------------------------------------------------------------------

    def fetch(
        self, market: str, settlement_point: str, start_day: date, end_day: date
    ) -> pd.DataFrame:
        return self.fetch_normalized(market, settlement_point, start_day, end_day).frame

    def fetch_normalized(
        self,
        market: str,
        settlement_point: str,
        start_day: date,
        end_day: date,
        on_page: PageProgress | None = None,
    ) -> NormalizedPrices:
        """Prices of operating days start_day..end_day (inclusive), normalized, gaps reported."""
        product = _product(market)
        params = {**product.date_params(start_day, end_day), "settlementPoint": settlement_point}
        raw = self.fetch_rows(product, params, on_page)
        if raw.empty:
            self._explain_empty(product, settlement_point, start_day, end_day)
        return normalize_ercot_prices(raw, product.market, first_day=start_day, last_day=end_day)

    # -- raw report rows ---------------------------------------------------------------------

    def fetch_rows(
        self,
        product: ErcotProduct,
        params: Mapping[str, str],
        on_page: PageProgress | None = None,
    ) -> pd.DataFrame:
        """Every page of one query, rows mapped to columns by the response's `fields` list."""
        frames: list[pd.DataFrame] = []
        page, total_pages = 1, 1
        while page <= total_pages:
            body = self._get(product.api_path, {**params, "page": page, "size": self.page_size})
            columns, rows, total_pages = _parse_report(body, page)
            frames.append(pd.DataFrame(rows, columns=columns, dtype=object))
            if on_page is not None:
                on_page(page, max(total_pages, 1))
            page += 1
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def _explain_empty(
        self, product: ErcotProduct, settlement_point: str, start_day: date, end_day: date
    ) -> None:
        # The API answers an unknown settlement point with an empty page, not an error; one
        # unfiltered, one-row probe tells "no such point" from "no data for those days".
        probe = self._get(product.api_path, {**product.date_params(start_day, end_day), "size": 1})
        _, rows, _ = _parse_report(probe, 1)
        span = f"{start_day.isoformat()}..{end_day.isoformat()}"
        if rows:
            raise UnknownSettlementPointError(
                f"ERCOT has {product.market} prices for {span} but none for settlement point "
                f"{settlement_point!r}: check the name (hubs HB_*, load zones LZ_*, resource nodes)"
            )
        raise NoPriceDataError(
            f"ERCOT returned no {product.market} prices for {span} ({product.emil_id}); the "
            "Public API holds filterable history from 2023-12-11 on"
        )

    # -- HTTP ------------------------------------------------------------------------------

    def _get(self, path: str, params: Mapping[str, Any]) -> dict[str, Any]:
        def attempt() -> dict[str, Any]:
            headers = {
                "Authorization": f"Bearer {self._id_token()}",
                "Ocp-Apim-Subscription-Key": self._credentials.subscription_key,
                "Accept": "application/json",
            }
            self.requests_made += 1
            try:
                with self.limiter.slot():
                    response = self._session.get(
                        self.base_url + path,
                        params=params,
                        headers=headers,
                        timeout=self._timeout_s,
                    )
                body = response.content
            except requests.RequestException as error:  # refused, reset, timeout, cut body
                raise RetryableHTTPError(f"{path}: {type(error).__name__}: {error}") from error
            return self._read_api_response(path, response, body)

        try:
            return call_with_retries(
                attempt,
                max_attempts=self._max_attempts,
                base_backoff_s=self._base_backoff_s,
                sleep=self._sleep,
            )
        except _TokenRejectedError as error:
            raise SignalAuthError(f"ERCOT API refused the token: {error}") from error
        except RetryableHTTPError as error:
            raise SignalUnavailableError(
                f"ERCOT API unavailable after {self._max_attempts} attempts: {error}"
            ) from error

    def _read_api_response(
        self, path: str, response: requests.Response, body: bytes
    ) -> dict[str, Any]:
        status = response.status_code
        if status == 401:
            self._token = None  # the hour may have run out early; log in again once
            self._rejections_in_a_row += 1
            if self._rejections_in_a_row >= 2:
                raise SignalAuthError(f"ERCOT API refused fresh credentials (401): {_text(body)}")
            raise _TokenRejectedError(f"401 {_text(body)}")
        self._rejections_in_a_row = 0
        if status == 403:
            raise SignalAuthError(
                f"ERCOT API forbids {path} (403, wrong subscription key or a location outside "
                f"the USA): {_text(body)}"
            )
        if status == 429:
            raise RetryableHTTPError("429 Too Many Requests", _retry_after(response))
        if status >= 500:
            raise RetryableHTTPError(f"{status} {_text(body)}", _retry_after(response))
        if status != 200:
            raise SignalFormatError(f"ERCOT API answered {status} for {path}: {_text(body)}")
        try:
            parsed = json.loads(body)
        except ValueError as error:  # a body cut short arrives as broken JSON: try again
            raise RetryableHTTPError(f"{path}: unreadable JSON body ({error})") from error
        if not isinstance(parsed, dict):
            raise SignalFormatError(f"{path}: expected a JSON object, got {type(parsed).__name__}")
        return parsed

    def _id_token(self) -> str:
        now = self._clock()
        if self._token is None or now >= self._token.expires_at - TOKEN_MARGIN_S:
            self._token = self._login(now)
        return self._token.id_token

    def _login(self, now: float) -> _Token:
        form = {
            "username": self._credentials.username,
            "password": self._credentials.password,
            "grant_type": "password",
            "scope": f"openid {CLIENT_ID} offline_access",
            "client_id": CLIENT_ID,
            "response_type": "id_token",
        }

        def attempt() -> requests.Response:
            try:
                response = self._session.post(self.auth_url, data=form, timeout=self._timeout_s)
            except requests.RequestException as error:
                raise RetryableHTTPError(f"login: {type(error).__name__}: {error}") from error
            if response.status_code == 429 or response.status_code >= 500:
                raise RetryableHTTPError(f"login: {response.status_code}", _retry_after(response))
            return response

        try:
            response = call_with_retries(
                attempt,
                max_attempts=self._max_attempts,
                base_backoff_s=self._base_backoff_s,
                sleep=self._sleep,
            )
        except RetryableHTTPError as error:
            raise SignalUnavailableError(f"ERCOT login unavailable: {error}") from error
        self.logins += 1
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code != 200 or not body.get("id_token"):
            reason = body.get("error_description") or body.get("error") or _text(response.content)
            raise SignalAuthError(
                f"ERCOT login refused the credentials ({response.status_code}): {reason}"
            )
        lifetime_s = float(body.get("expires_in") or 3600)
        return _Token(str(body["id_token"]), now + lifetime_s)


def _product(market: str) -> ErcotProduct:
    try:
        return PRODUCTS[market]
    except KeyError:
        raise ValueError(f"unknown market {market!r}; expected rt15, sced5 or dam") from None


def _parse_report(body: Mapping[str, Any], page: int) -> tuple[list[str], list[list[Any]], int]:
    fields, data, meta = body.get("fields"), body.get("data"), body.get("_meta")
    if not isinstance(fields, list) or not isinstance(data, list) or not isinstance(meta, dict):
        raise SignalFormatError(f"page {page}: response lacks `fields`, `data` or `_meta`")
    columns = [str(f.get("name")) for f in fields if isinstance(f, dict)]
    if len(columns) != len(fields):
        raise SignalFormatError(f"page {page}: a `fields` entry has no name")
    for number, row in enumerate(data, start=1):
        if not isinstance(row, list) or len(row) != len(columns):
            raise SignalFormatError(
                f"page {page} row {number} is malformed: {row!r} does not match fields {columns}"
            )
    try:
        total_pages = int(meta.get("totalPages", 1))
    except (TypeError, ValueError) as error:
        raise SignalFormatError(f"page {page}: `_meta.totalPages` is not a number") from error
    return columns, data, total_pages


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


def _text(body: bytes, limit: int = 200) -> str:
    return body[:limit].decode("utf-8", errors="replace").strip()
