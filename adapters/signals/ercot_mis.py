"""ERCOT MIS downloads, no account needed: the report's document list, then one zipped CSV each.

`misapp/servlets/IceDocListJsonWS?reportTypeId=<id>` lists recent documents (RT SPP: one per
15-minute interval, kept 7 days; DAM SPP: one per operating day, kept 31 days);
`misdownload/servlets/mirDownload?doclookupId=<DocID>` returns a zip holding one CSV. ERCOT lists
each document twice (`..._csv.zip` and `..._xml.zip`); only the CSV rendering is read.
"""

from __future__ import annotations

import io
import json
import time
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import pandas as pd
import requests

from adapters.signals.ercot_normalize import ERCOT_TZ, NormalizedPrices, normalize_ercot_prices
from adapters.signals.ercot_products import PRODUCTS, ErcotProduct
from adapters.signals.http_policy import (
    Clock,
    PageProgress,
    RetryableHTTPError,
    Sleep,
    SlidingWindowLimiter,
    call_with_retries,
)
from adapters.signals.price_errors import NoPriceDataError, UnknownSettlementPointError
from agent.errors import SignalFormatError, SignalUnavailableError

__all__ = ["MIS_URL", "ErcotMisClient", "MisDocument"]

MIS_URL = "https://www.ercot.com"
_DOC_LIST = "/misapp/servlets/IceDocListJsonWS"
_DOWNLOAD = "/misdownload/servlets/mirDownload"
_CACHE_LIMIT = 2_000  # documents; a week of RT SPP is 672, so a live poller never re-downloads


@dataclass(frozen=True, slots=True)
class MisDocument:
    doc_id: str
    published_at: datetime  # timezone-aware, as ERCOT stamps it
    constructed_name: str

    @property
    def is_csv(self) -> bool:
        return "_csv" in self.constructed_name or self.constructed_name.endswith(".csv.zip")


class ErcotMisClient:
    """Recent ERCOT prices from MIS documents; implements agent.ports.PriceHistory."""

    def __init__(
        self,
        *,
        base_url: str = MIS_URL,
        limiter: SlidingWindowLimiter | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = time.sleep,
        max_attempts: int = 5,
        base_backoff_s: float = 1.0,
        timeout_s: float = 60.0,
        session: requests.Session | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        # MIS publishes no limit; we keep to the Public API's 30 a minute to stay welcome.
        self.limiter = limiter or SlidingWindowLimiter(clock=clock, sleep=sleep)
        self._sleep = sleep
        self._max_attempts = max_attempts
        self._base_backoff_s = base_backoff_s
        self._timeout_s = timeout_s
        self._session = session or requests.Session()
        self._csv_cache: dict[str, pd.DataFrame] = {}
        self.requests_made = 0

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
        product = PRODUCTS.get(market)
        if product is None:
            raise ValueError(f"unknown market {market!r}; expected rt15, sced5 or dam")
        # A day's prices are published from the day before (DAM) to just after midnight (RT).
        first, last = start_day - timedelta(days=1), end_day + timedelta(days=1)
        docs = [
            d
            for d in self.list_documents(product)
            if d.is_csv and first <= d.published_at.astimezone(ERCOT_TZ).date() <= last
        ]
        if not docs:
            raise NoPriceDataError(
                f"MIS lists no {product.emil_id} documents for {start_day}..{end_day}; MIS keeps "
                f"only {product.mis_kept_days} days, use --source ercot-api for older days"
            )
        tables = []
        for number, doc in enumerate(docs, start=1):
            tables.append(self.download_csv(doc))
            if on_page is not None:
                on_page(number, len(docs))
        raw = pd.concat(tables, ignore_index=True)
        point_column = next(c for c in ("SettlementPointName", "SettlementPoint") if c in raw)
        mine = raw[raw[point_column].astype(str).str.strip() == settlement_point]
        if mine.empty:
            raise UnknownSettlementPointError(
                f"MIS {product.emil_id} documents hold no settlement point {settlement_point!r}"
            )
        return normalize_ercot_prices(
            mine.reset_index(drop=True), product.market, first_day=start_day, last_day=end_day
        )

    def list_documents(self, product: ErcotProduct) -> list[MisDocument]:
        body = self._get(_DOC_LIST, {"reportTypeId": str(product.mis_report_type_id)})
        try:
            listing = _json(body)["ListDocsByRptTypeRes"]["DocumentList"]
            documents = [entry["Document"] for entry in listing]
            return [
                MisDocument(
                    str(d["DocID"]),
                    datetime.fromisoformat(str(d["PublishDate"])),
                    str(d["ConstructedName"]),
                )
                for d in documents
            ]
        except (KeyError, TypeError, ValueError) as error:  # ValueError covers bad JSON
            raise SignalFormatError(
                f"MIS document list not in ERCOT's format: {error!r}"
            ) from error

    def download_csv(self, doc: MisDocument) -> pd.DataFrame:
        cached = self._csv_cache.get(doc.doc_id)
        if cached is not None:
            return cached
        body = self._get(_DOWNLOAD, {"doclookupId": doc.doc_id})
        try:
            with zipfile.ZipFile(io.BytesIO(body)) as archive:
                name = next(n for n in archive.namelist() if n.lower().endswith(".csv"))
                table = pd.read_csv(archive.open(name), dtype=str)
        except (zipfile.BadZipFile, StopIteration, ValueError) as error:
            raise SignalFormatError(
                f"MIS document {doc.doc_id} ({doc.constructed_name}) is not a zipped CSV: {error!r}"
            ) from error
        if len(self._csv_cache) >= _CACHE_LIMIT:
            self._csv_cache.pop(next(iter(self._csv_cache)))
        self._csv_cache[doc.doc_id] = table
        return table

    def _get(self, path: str, params: Mapping[str, str]) -> bytes:
        def attempt() -> bytes:
            self.requests_made += 1
            try:
                with self.limiter.slot():
                    response = self._session.get(
                        self.base_url + path, params=params, timeout=self._timeout_s
                    )
                body = response.content
            except requests.RequestException as error:
                raise RetryableHTTPError(f"{path}: {type(error).__name__}: {error}") from error
            if response.status_code == 429 or response.status_code >= 500:
                raise RetryableHTTPError(f"{path}: HTTP {response.status_code}")
            if response.status_code != 200:
                raise SignalUnavailableError(f"MIS answered {response.status_code} for {path}")
            return body

        try:
            return call_with_retries(
                attempt,
                max_attempts=self._max_attempts,
                base_backoff_s=self._base_backoff_s,
                sleep=self._sleep,
            )
        except RetryableHTTPError as error:
            raise SignalUnavailableError(
                f"ERCOT MIS unavailable after {self._max_attempts} attempts: {error}"
            ) from error


def _json(body: bytes) -> Any:
    return json.loads(body)
