"""GPU inference demand from the inference servers' own Prometheus endpoints.

A pool is a set of servers of one kind behind one service level. Each scrape reads every
endpoint's `/metrics` text, parses it with prometheus-client's exposition parser, and sums the
demand series across endpoints and label sets (one per model):

- vLLM: waiting `vllm:num_requests_waiting`, running `vllm:num_requests_running`, and
  `vllm:kv_cache_usage_perc` (0-1; the fullest endpoint's);
- Triton: waiting `nv_inference_pending_request_count` (running is not exported), and the mean
  queue time: the increase of `nv_inference_queue_duration_us` over the increase of
  `nv_inference_request_success` between two scrapes;
- TGI: waiting `tgi_queue_size`, running `tgi_batch_current_size`.

An endpoint that does not answer, answers an HTTP error, or serves text without the pool's
series is left out and counted (`endpoints_up` of `endpoints_total`); with none up the scrape
yields no demand, and a consumer judges the last one's age against `stale_after_s`, as for
prices. Counters that go down (a server restarted) restart the queue-time window.

A page is evidence from a server that may be wrong or hostile: it is read with a total deadline
(`timeout_s`, however slowly it drips) and a size cap (MAX_PAGE_BYTES), and every number in it
must be finite, not negative, and within what one server can hold (MAX_REQUESTS_PER_ENDPOINT
requests, a KV cache between 0 and 1); an endpoint whose page fails any of it is left out.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import requests
from prometheus_client.parser import text_string_to_metric_families

from agent.domain.signals import GpuDemand
from agent.ports import utc_now

__all__ = ["DemandScraper", "PoolSettings", "parse_demand"]

log = logging.getLogger(__name__)

Server = Literal["vllm", "triton", "tgi"]
_WAITING = {"vllm": "vllm:num_requests_waiting", "triton": "nv_inference_pending_request_count",
            "tgi": "tgi_queue_size"}  # fmt: skip
_RUNNING = {"vllm": "vllm:num_requests_running", "tgi": "tgi_batch_current_size"}
_KV_CACHE = "vllm:kv_cache_usage_perc"
_QUEUE_US, _SUCCESS = "nv_inference_queue_duration_us", "nv_inference_request_success"
_TTFT_SUM, _TTFT_COUNT = (
    "vllm:time_to_first_token_seconds_sum",
    "vllm:time_to_first_token_seconds_count",
)
# A vLLM /metrics page is tens of KB, a large Triton one a few hundred: 4 MiB is far past any.
MAX_PAGE_BYTES = 4 * 1024 * 1024
# No one server holds more requests running and waiting (vLLM's max_num_seqs is ~256-1024; its
# waiting queue is bounded by memory): a larger figure is a fault or a lie, not demand.
MAX_REQUESTS_PER_ENDPOINT = 100_000.0


class PageError(ValueError):
    """A page that is too large, too slow, or holds numbers no server reports."""


@dataclass(frozen=True, slots=True)
class PoolSettings:
    name: str
    server: Server
    endpoints: tuple[str, ...]  # full URLs of the /metrics pages
    scrape_every_s: float = 5.0
    stale_after_s: float = 30.0
    timeout_s: float = 2.0


@dataclass(frozen=True, slots=True)
class _Sums:
    """What one endpoint's page says (sums over its label sets)."""

    waiting: float
    running: float | None
    kv_cache_usage: float | None
    queue_us: float | None
    successes: float | None
    ttft_sum_s: float | None = None
    ttft_count: float | None = None


def parse_demand(text: str, server: Server) -> _Sums | None:
    """The demand series of one /metrics page; None when the page lacks the waiting series."""
    sums: dict[str, float] = {}
    kv_cache: float | None = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name.removesuffix("_total")  # the parser names counter samples so
            if name != _KV_CACHE and name not in _WANTED[server]:
                continue
            _plausible(name, sample.value)
            if name == _KV_CACHE:
                kv_cache = max(kv_cache or 0.0, sample.value)
            elif name in (
                _WAITING[server],
                _RUNNING.get(server),
                _QUEUE_US,
                _SUCCESS,
                _TTFT_SUM,
                _TTFT_COUNT,
            ):
                sums[name] = sums.get(name, 0.0) + sample.value
    if _WAITING[server] not in sums:
        return None
    running_total = sums[_WAITING[server]] + sums.get(_RUNNING.get(server) or "", 0.0)
    if running_total > MAX_REQUESTS_PER_ENDPOINT:
        raise PageError(f"{running_total:g} requests on one server: more than any holds "
                        f"({MAX_REQUESTS_PER_ENDPOINT:g})")  # fmt: skip
    running_name = _RUNNING.get(server)
    return _Sums(
        waiting=sums[_WAITING[server]],
        running=sums.get(running_name) if running_name else None,
        kv_cache_usage=kv_cache if server == "vllm" else None,
        queue_us=sums.get(_QUEUE_US) if server == "triton" else None,
        successes=sums.get(_SUCCESS) if server == "triton" else None,
        ttft_sum_s=sums.get(_TTFT_SUM) if server == "vllm" else None,
        ttft_count=sums.get(_TTFT_COUNT) if server == "vllm" else None,
    )


_WANTED = {
    server: {n for n in (_WAITING[server], _RUNNING.get(server), _QUEUE_US, _SUCCESS, _TTFT_SUM,
                         _TTFT_COUNT) if n is not None}
    for server in _WAITING
}  # fmt: skip


def _plausible(name: str, value: float) -> None:
    if not math.isfinite(value) or value < 0:
        raise PageError(f"{name} {value!r}: not a count")
    if name == _KV_CACHE and value > 1.0:
        raise PageError(f"{name} {value!r}: a usage is between 0 and 1")


Fetch = Callable[[str, float], str]


def _http_get(url: str, timeout_s: float) -> str:
    """The page, within `timeout_s` in all (not per read: a page that drips a byte at a time is
    cut off) and MAX_PAGE_BYTES."""
    deadline = time.monotonic() + timeout_s
    # identity: the bytes counted and cut off are the page's own, not a compressed stream's
    headers = {"Accept-Encoding": "identity"}
    with requests.get(url, timeout=timeout_s, stream=True, headers=headers) as response:
        response.raise_for_status()
        length = response.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > MAX_PAGE_BYTES:
            raise PageError(f"page of {int(length):,} bytes: more than {MAX_PAGE_BYTES:,}")
        body = bytearray()
        while chunk := response.raw.read1(65_536):  # what one read brings, never a full block
            body += chunk
            if len(body) > MAX_PAGE_BYTES:
                raise PageError(f"page over {MAX_PAGE_BYTES:,} bytes")
            if time.monotonic() > deadline:
                raise PageError(f"page not read within {timeout_s:g} s")
        return body.decode(response.encoding or "utf-8", errors="replace")


@dataclass
class DemandScraper:
    """Scrapes one pool; `scrape()` is one round, `run(sink)` scrapes until cancelled."""

    settings: PoolSettings
    fetch: Fetch = _http_get
    clock: Callable[[], datetime] = utc_now
    # (url, what): the last (sum, count) of a windowed mean's counters
    _counters: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)
    _down: set[str] = field(default_factory=set)

    async def scrape(self) -> GpuDemand | None:
        pages = await asyncio.gather(*(self._page(url) for url in self.settings.endpoints))
        up = {url: sums for url, sums in zip(self.settings.endpoints, pages, strict=True)
              if sums is not None}  # fmt: skip
        if not up:
            return None
        running = [s.running for s in up.values() if s.running is not None]
        kv = [s.kv_cache_usage for s in up.values() if s.kv_cache_usage is not None]
        return GpuDemand(
            pool=self.settings.name,
            observed_at_utc=self.clock(),
            waiting=sum(s.waiting for s in up.values()),
            running=sum(running) if running else None,
            kv_cache_usage=max(kv) if kv else None,
            queue_time_s=self._window_mean(up, "queue", lambda s: (s.queue_us, s.successes), 1e-6),
            ttft_s=self._window_mean(up, "ttft", lambda s: (s.ttft_sum_s, s.ttft_count), 1.0),
            endpoints_up=len(up),
            endpoints_total=len(self.settings.endpoints),
        )

    async def run(self, sink: Callable[[GpuDemand], None]) -> None:
        while True:
            demand = await self.scrape()
            if demand is not None:
                sink(demand)
            await asyncio.sleep(self.settings.scrape_every_s)

    async def _page(self, url: str) -> _Sums | None:
        try:
            text = await asyncio.to_thread(self.fetch, url, self.settings.timeout_s)
            sums = parse_demand(text, self.settings.server)
            why = None if sums is not None else f"no {_WAITING[self.settings.server]} series"
        except (requests.RequestException, ValueError) as exc:  # refused, HTTP error, not text
            sums, why = None, str(exc)
        self._mark(url, why)
        return sums

    def _mark(self, url: str, why: str | None) -> None:
        """Log each endpoint's change between answering and not, once."""
        if why is None and url in self._down:
            self._down.discard(url)
            log.info("GPU demand endpoint %s of pool %s answers again", url, self.settings.name)
        elif why is not None and url not in self._down:
            self._down.add(url)
            log.warning("GPU demand endpoint %s of pool %s left out: %s", url,
                        self.settings.name, why)  # fmt: skip

    def _window_mean(
        self, up: Mapping[str, _Sums], what: str,
        pair: Callable[[_Sums], tuple[float | None, float | None]], scale: float,
    ) -> float | None:  # fmt: skip
        """Mean of a (sum, count) counter pair over the requests since the last scrape, all
        endpoints (Triton's queue time, vLLM's time to first token), times `scale`."""
        total = count = 0.0
        for url, sums in up.items():
            value, n = pair(sums)
            if value is None or n is None:
                continue
            before = self._counters.get((url, what))
            self._counters[(url, what)] = (value, n)
            if before is None or value < before[0] or n < before[1]:
                continue  # the first scrape, or the server restarted: no window yet
            total += value - before[0]
            count += n - before[1]
        return total / count * scale if count > 0 else None
