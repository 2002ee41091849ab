"""The demo's inference pool: its vLLM servers' demand through the day, with one burst.

A loopback HTTP server serves the pool's /metrics page in vLLM's exposition format, and the
demo reads it each step with the same scraper the service runs (adapters.signals.gpu_demand), so
the demand reaches decide() the way a real pool's does. From 14:00 to 15:00 local a burst asks
more than every server can carry: the pool takes back its paused servers, the GPUs draw more,
and under the site's import limit the miners give way (docs/hybrid.md).
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from zoneinfo import ZoneInfo

from adapters.signals.gpu_demand import DemandScraper, PoolSettings
from agent.domain.signals import GpuDemand
from agent.policy import Decision

__all__ = ["BURST_LOCAL", "DemoInference", "burst_note"]

BURST_LOCAL = (time(14, 0), time(15, 0))
_MODEL = "meta-llama/Llama-3.1-70B-Instruct"


def requests_at(local: datetime) -> tuple[float, float]:
    """(running, waiting) across the pool: a quiet 40 most of the day, 150 in the burst."""
    if BURST_LOCAL[0] <= local.time() < BURST_LOCAL[1]:
        return 110.0, 40.0
    return 34.0, 6.0


def page(running: float, waiting: float) -> str:
    return (
        "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
        "# TYPE vllm:num_requests_running gauge\n"
        f'vllm:num_requests_running{{engine="0",model_name="{_MODEL}"}} {running}\n'
        "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
        "# TYPE vllm:num_requests_waiting gauge\n"
        f'vllm:num_requests_waiting{{engine="0",model_name="{_MODEL}"}} {waiting}\n'
    )


class DemoInference:
    """The pool's metrics endpoint on 127.0.0.1:`port`, and its scraper (a context manager)."""

    def __init__(self, pool: str, port: int, zone: ZoneInfo) -> None:
        self._zone = zone
        self._text = page(0.0, 0.0)
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = owner._text.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                del args

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        url = f"http://127.0.0.1:{port}/metrics"
        self._scraper = DemandScraper(PoolSettings(pool, "vllm", (url,)))
        self._now = datetime.fromtimestamp(0, UTC)

    def __enter__(self) -> DemoInference:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:  # fmt: skip
        self._server.shutdown()
        self._server.server_close()

    async def read(self, now: datetime) -> GpuDemand | None:
        """Set the page to the demand at `now` and scrape it as the service would."""
        self._text = page(*requests_at(now.astimezone(self._zone)))
        self._now = now
        self._scraper.clock = lambda: self._now
        return await self._scraper.scrape()


def burst_note(before: Decision | None, after: Decision, pool: str, gpu_class: str,
               miners: tuple[str, ...]) -> str | None:  # fmt: skip
    """What a change in the pool's serving servers did to the miners, in one line."""
    now = next((p for p in after.pools if p.pool == pool), None)
    was = None if before is None else next((p for p in before.pools if p.pool == pool), None)
    if before is None or now is None or was is None or now.serving == was.serving:
        return None
    kw_after, kw_before = after.class_kw_by_name(), before.class_kw_by_name()
    miners_kw = sum(kw_after[m] - kw_before[m] for m in miners)
    gpu_kw = kw_after[gpu_class] - kw_before[gpu_class]
    return (
        f"inference on {was.serving}->{now.serving} servers: GPUs {gpu_kw:+.0f} kW, "
        f"miners {miners_kw:+.0f} kW"
    )
