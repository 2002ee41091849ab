"""A loopback HTTP server that speaks ERCOT's formats: B2C token, Public API reports, MIS docs.

It serves real prices (the shipped 2024 files) relabelled the way ERCOT publishes them, and can be
told to misbehave: 429 with Retry-After, 500, a body cut short, a malformed row, a revoked token.
Used by the tests and by bench/prices_fetch.py.
"""

from __future__ import annotations

import functools
import io
import json
import math
import threading
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pandas as pd

ROOT = Path(__file__).resolve().parents[3]
RT_FILE = ROOT / "agent" / "data" / "ercot_rt_spp_15min_hb_hubavg_2024.csv.gz"
DAM_FILE = ROOT / "agent" / "data" / "ercot_dam_spp_hourly_hb_hubavg_2024.csv.gz"
FIELDS_FILE = ROOT / "tests" / "fixtures" / "ercot_api" / "ercot_public_api_response_fields.json"

USERNAME, PASSWORD, SUBSCRIPTION_KEY = "site@example.com", "correct horse", "sub-key-123"

ENDPOINTS = {
    "/np6-905-cd/spp_node_zone_hub": ("rt15", "NP6-905-CD", 12301),
    "/np4-190-cd/dam_stlmnt_pnt_prices": ("dam", "NP4-190-CD", 12331),
}


@functools.cache
def _shipped(market: str) -> pd.DataFrame:
    return pd.read_csv(RT_FILE if market == "rt15" else DAM_FILE, dtype={"dst_flag": str})


def api_rows(market: str, days: tuple[date, date] | None = None) -> pd.DataFrame:
    """The shipped real prices in the Public API's own columns and value types."""
    source = _shipped(market)
    if days is not None:
        wanted = pd.to_datetime(source["delivery_date"]).dt.date
        source = source[(wanted >= days[0]) & (wanted <= days[1])]
    rows = {"deliveryDate": source["delivery_date"]}
    if market == "rt15":
        rows["deliveryHour"] = source["delivery_hour"].astype(int)
        rows["deliveryInterval"] = source["delivery_interval"].astype(int)
    else:
        rows["hourEnding"] = source["hour_ending"].map(lambda h: f"{int(h):02d}:00")
    rows["settlementPoint"] = source["settlement_point"]
    if market == "rt15":
        rows["settlementPointType"] = pd.Series("HU", index=source.index)
    rows["settlementPointPrice"] = source["price_usd_per_mwh"].astype(float)
    rows["DSTFlag"] = source["dst_flag"] == "Y"
    return pd.DataFrame(rows).reset_index(drop=True)


def _field_types(endpoint: str) -> dict[str, str]:
    catalog: dict[str, dict[str, str]] = json.loads(FIELDS_FILE.read_text())
    return catalog[endpoint.strip("/")]


@dataclass
class FakeErcot:
    """State of the fake: data, issued tokens, scripted faults, and every API request seen."""

    data: dict[str, pd.DataFrame]
    token_lifetime_s: int = 3600
    reversed_fields: bool = False  # serve columns in another order than ERCOT's usual one
    faults: list[str] = field(default_factory=list)
    tokens: set[str] = field(default_factory=set)
    api_requests: list[tuple[float, str, dict[str, str]]] = field(default_factory=list)
    mis_downloads: list[str] = field(default_factory=list)
    logins: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    @property
    def auth_url(self) -> str:
        return self.url + "/b2c/token"

    def next_fault(self) -> str | None:
        with self.lock:
            return self.faults.pop(0) if self.faults else None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as two writes: no 40 ms stalls
    fake: FakeErcot

    def log_message(self, format: str, *args: Any) -> None:
        return

    # -- plumbing ---------------------------------------------------------------------------

    def _send(
        self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, payload: Any, extra: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json", extra)

    # -- B2C token ----------------------------------------------------------------------------

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
        if urlparse(self.path).path != "/b2c/token":
            self._json(404, {"error": "not found"})
            return
        if form.get("grant_type") != "password" or (form.get("username"), form.get("password")) != (
            USERNAME,
            PASSWORD,
        ):
            self._json(
                400,
                {
                    "error": "invalid_grant",
                    "error_description": "AADB2C90225: The username or password provided in "
                    "the request are invalid.",
                },
            )
            return
        with self.fake.lock:
            self.fake.logins += 1
            token = f"id-token-{self.fake.logins}"
            self.fake.tokens.add(token)
        self._json(
            200,
            {
                "access_token": f"access-{token}",
                "token_type": "Bearer",
                "expires_in": str(self.fake.token_lifetime_s),
                "id_token": token,
            },
        )

    # -- GET: Public API and MIS ------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: PLR0911 - one early answer per scripted fault
        url = urlparse(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path.startswith("/misapp/") or url.path.startswith("/misdownload/"):
            self._mis(url.path, query)
            return
        with self.fake.lock:
            self.fake.api_requests.append((time.monotonic(), url.path, query))
        if self.headers.get("Ocp-Apim-Subscription-Key") != SUBSCRIPTION_KEY:
            self._json(
                401,
                {"statusCode": 401, "message": "Access denied due to invalid subscription key."},
            )
            return
        token = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
        if token not in self.fake.tokens:
            self._json(
                401,
                {"statusCode": 401, "message": "Unauthorized. Access token is missing or invalid."},
            )
            return
        if url.path not in ENDPOINTS:
            self._json(404, {"statusCode": 404, "message": "Resource not found"})
            return
        fault = self.fake.next_fault()
        if fault == "429":
            self._json(
                429,
                {"statusCode": 429, "message": "Rate limit is exceeded. Try again in 1 seconds."},
                {"Retry-After": "1"},
            )
            return
        if fault == "500":
            self._json(500, {"statusCode": 500, "message": "Internal server error"})
            return
        if fault == "revoke":
            with self.fake.lock:
                self.fake.tokens.clear()
            self._json(
                401,
                {"statusCode": 401, "message": "Unauthorized. Access token is missing or invalid."},
            )
            return
        body = self._report(url.path, query, malformed=fault == "malformed_row")
        if fault == "truncated":  # promise the whole body, send half, hang up
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self._send(200, body, "application/json")

    def _report(self, path: str, query: dict[str, str], *, malformed: bool) -> bytes:
        market, emil, _ = ENDPOINTS[path]
        rows = self.fake.data[market]
        first, last = query.get("deliveryDateFrom"), query.get("deliveryDateTo")
        if first:
            rows = rows[rows["deliveryDate"] >= first]
        if last:
            rows = rows[rows["deliveryDate"] <= last]
        if "settlementPoint" in query:
            rows = rows[rows["settlementPoint"] == query["settlementPoint"]]
        types = _field_types(path)
        names = [n for n in types if n in rows.columns]
        if self.fake.reversed_fields:
            names.reverse()
        size = int(query.get("size", "1000"))
        page = int(query.get("page", "1"))
        total_pages = math.ceil(len(rows) / size)
        chunk = rows.iloc[(page - 1) * size : page * size][names]
        data: list[list[Any]] = [list(r) for r in chunk.itertuples(index=False, name=None)]
        data = [[v.item() if hasattr(v, "item") else v for v in row] for row in data]
        if malformed and data:
            data[len(data) // 2] = data[len(data) // 2][:-1]  # one value short
        return json.dumps(
            {
                "_meta": {
                    "totalRecords": len(rows),
                    "pageSize": size,
                    "totalPages": total_pages,
                    "currentPage": page,
                    "query": {"parameterCount": len(query), "parameters": query},
                },
                "report": {
                    "reportEMIL": emil,
                    "reportName": path.rsplit("/", 1)[-1],
                    "reportDisplayName": "Settlement Point Prices",
                    "reportId": emil,
                    "downloadLimit": 1000,
                },
                "fields": [
                    {
                        "name": n,
                        "label": n,
                        "dataType": types[n],
                        "searchable": True,
                        "sortable": True,
                        "hasRange": False,
                        "cardinality": 0,
                    }
                    for n in names
                ],
                "data": data,
                "_links": {"self": {"href": path}},
            }
        ).encode()

    # -- MIS --------------------------------------------------------------------------------

    def _mis(self, path: str, query: dict[str, str]) -> None:
        if path == "/misapp/servlets/IceDocListJsonWS":
            docs = _mis_documents(self.fake, int(query.get("reportTypeId", "0")))
            listing = [{"Document": {k: v for k, v in d.items() if k != "csv"}} for d in docs]
            self._json(200, {"ListDocsByRptTypeRes": {"DocumentList": listing}})
            return
        if path == "/misdownload/servlets/mirDownload":
            doc_id = query.get("doclookupId", "")
            with self.fake.lock:
                self.fake.mis_downloads.append(doc_id)
            if self.fake.next_fault() == "500":
                self._json(500, {"message": "error"})
                return
            for doc in _mis_documents(self.fake, int(doc_id[:5])):
                if doc["DocID"] == doc_id:
                    self._send(200, _zip(doc["ConstructedName"], doc["csv"]), "application/zip")
                    return
        self._send(404, b"Document not found", "text/plain")


_MIS_CACHE: dict[tuple[int, int], list[dict[str, Any]]] = {}


def _mis_documents(fake: FakeErcot, report_type: int) -> list[dict[str, Any]]:
    """ERCOT's MIS document list: one zipped CSV per interval (RT) or per operating day (DAM)."""
    key = (id(fake), report_type)
    if key in _MIS_CACHE:
        return _MIS_CACHE[key]
    market = {12301: "rt15", 12331: "dam"}.get(report_type)
    docs: list[dict[str, Any]] = []
    if market is not None and market in fake.data:
        docs = _build_docs(fake.data[market], market, report_type)
    _MIS_CACHE[key] = docs
    return docs


def _build_docs(rows: pd.DataFrame, market: str, report_type: int) -> list[dict[str, Any]]:
    # columns in the order of ERCOT's CSVs (NP6-905-CD / NP4-190-CD)
    mis = pd.DataFrame(
        {"DeliveryDate": pd.to_datetime(rows["deliveryDate"]).dt.strftime("%m/%d/%Y")}
    )
    if market == "rt15":
        mis["DeliveryHour"] = rows["deliveryHour"]
        mis["DeliveryInterval"] = rows["deliveryInterval"]
        mis["SettlementPointName"] = rows["settlementPoint"]
        mis["SettlementPointType"] = rows["settlementPointType"]
        keys = ["DeliveryDate", "DeliveryHour", "DeliveryInterval", "DSTFlag"]
    else:
        mis["HourEnding"] = rows["hourEnding"]
        mis["SettlementPoint"] = rows["settlementPoint"]
        keys = ["DeliveryDate"]
    mis["SettlementPointPrice"] = rows["settlementPointPrice"]
    mis["DSTFlag"] = rows["DSTFlag"].map({True: "Y", False: "N"})
    groups = mis.groupby(keys, sort=False)
    docs: list[dict[str, Any]] = []
    for number, (_, part) in enumerate(groups, start=1):
        day = datetime.strptime(part["DeliveryDate"].iloc[0], "%m/%d/%Y")  # noqa: DTZ007 - local
        if market == "rt15":
            hour, interval = (
                int(part["DeliveryHour"].iloc[0]),
                int(part["DeliveryInterval"].iloc[0]),
            )
            stamp = day + timedelta(hours=hour - 1, minutes=15 * interval)
            published = stamp + timedelta(minutes=1)
            name = f"SPPHLZNP6905_{stamp:%Y%m%d_%H%M}"
        else:
            published = day - timedelta(hours=10, minutes=30)  # 13:30 the day before
            name = f"DAMSPNP4190_{day:%Y%m%d}"
        text = part.to_csv(index=False)
        for extension in ("csv", "xml"):  # ERCOT lists both renderings; only csv is readable
            docs.append(  # noqa: PERF401 - clearer as a loop
                {
                    "DocID": f"{report_type}{number:08d}{extension == 'xml':d}",
                    "PublishDate": f"{published:%Y-%m-%dT%H:%M:%S}-06:00",
                    "ConstructedName": f"cdr.{report_type:08d}.0000000000000000."
                    f"{published:%Y%m%d.%H%M%S}.{name}_{extension}.zip",
                    "FriendlyName": f"{name}_{extension}",
                    "ReportTypeID": report_type,
                    "Extension": "zip",
                    "ContentSize": len(text),
                    "csv": text,
                }
            )
    return docs


def _zip(name: str, text: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name.removesuffix(".zip").replace("_csv", ".csv"), text)
    return buffer.getvalue()


@contextmanager
def serve(fake: FakeErcot) -> Iterator[FakeErcot]:
    """Run the fake on a free 127.0.0.1 port for the duration of the block."""
    handler = type("Handler", (_Handler,), {"fake": fake})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
