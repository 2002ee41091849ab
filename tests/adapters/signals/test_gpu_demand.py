"""GPU demand scraped over HTTP from endpoints serving metric pages in each inference server's
exposition format (tests/adapters/signals/metrics/), on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import pytest
from click.testing import CliRunner

from adapters.signals.gpu_demand import DemandScraper, PoolSettings
from agent.cli import main as gridflex
from tests.adapters.signals.metrics_http import PAGES, MetricsServer
from tests.helpers.peers import free_port


def triton(success: tuple[int, int], queue_us: tuple[int, int]) -> str:
    text = (PAGES / "triton.txt").read_text()
    for key, value in zip(("{success_a}", "{success_b}", "{queue_a}", "{queue_b}"),
                          (*success, *queue_us), strict=True):  # fmt: skip
        text = text.replace(key, str(value))
    return text


def test_vllm_demand_sums_endpoints_and_models_and_keeps_the_fullest_cache(
    metrics: MetricsServer,
) -> None:
    page = (PAGES / "vllm.txt").read_text()
    metrics.pages.update({"/a/metrics": page, "/b/metrics": page.replace("0.83", "0.91")})
    pool = PoolSettings("chat", "vllm", (metrics.url("/a/metrics"), metrics.url("/b/metrics")))
    demand = asyncio.run(DemandScraper(pool).scrape())
    assert demand is not None
    assert (demand.waiting, demand.running) == (16.0, 64.0)  # (7 + 1) x 2, (24 + 8) x 2
    assert demand.kv_cache_usage == pytest.approx(0.91)
    assert demand.queue_time_s is None
    assert (demand.endpoints_up, demand.endpoints_total) == (2, 2)


def test_triton_queue_time_is_the_mean_over_the_scrape_interval(metrics: MetricsServer) -> None:
    metrics.pages["/metrics"] = triton((1000, 500), (2_000_000, 100_000))
    scraper = DemandScraper(PoolSettings("vision", "triton", (metrics.url("/metrics"),)))

    async def main() -> None:
        first = await scraper.scrape()
        assert first is not None
        assert (first.waiting, first.running, first.queue_time_s) == (5.0, None, None)
        # 300 more requests, 45 s more queueing between them: 0.15 s each
        metrics.pages["/metrics"] = triton((1200, 600), (2_000_000 + 40_000_000, 5_100_000))
        second = await scraper.scrape()
        assert second is not None
        assert second.queue_time_s == pytest.approx(45.0 / 300)
        metrics.pages["/metrics"] = triton((10, 5), (1_000, 100))  # the server restarted
        third = await scraper.scrape()
        assert third is not None
        assert third.queue_time_s is None

    asyncio.run(main())


def test_tgi_demand_is_its_queue_and_batch(metrics: MetricsServer) -> None:
    metrics.pages["/metrics"] = (PAGES / "tgi.txt").read_text()
    pool = PoolSettings("code", "tgi", (metrics.url("/metrics"),))
    demand = asyncio.run(DemandScraper(pool).scrape())
    assert demand is not None
    assert (demand.waiting, demand.running, demand.kv_cache_usage) == (12.0, 32.0, None)


def test_endpoints_that_fail_are_left_out_and_counted_and_none_up_is_no_demand(
    metrics: MetricsServer, caplog: pytest.LogCaptureFixture
) -> None:
    metrics.pages.update({
        "/ok/metrics": (PAGES / "tgi.txt").read_text(),
        "/error/metrics": 500,
        "/other/metrics": "# TYPE node_load1 gauge\nnode_load1 0.5\n",  # not an inference server
        "/garbage/metrics": "tgi_queue_size twelve\n",
    })  # fmt: skip
    refused = f"http://127.0.0.1:{free_port()}/metrics"
    urls = (*(metrics.url(f"/{p}/metrics") for p in ("ok", "error", "other", "garbage")), refused)
    scraper = DemandScraper(PoolSettings("code", "tgi", urls, timeout_s=1.0))

    async def main() -> None:
        demand = await scraper.scrape()
        assert demand is not None
        assert (demand.waiting, demand.endpoints_up, demand.endpoints_total) == (12.0, 1, 5)
        await scraper.scrape()  # still down: not logged again
        left_out = [r for r in caplog.records if "left out" in r.getMessage()]
        assert len(left_out) == 4
        metrics.pages["/ok/metrics"] = 503
        assert await scraper.scrape() is None

    asyncio.run(main())


def test_a_demand_goes_stale_like_a_price(metrics: MetricsServer) -> None:
    metrics.pages["/metrics"] = (PAGES / "tgi.txt").read_text()
    pool = PoolSettings("code", "tgi", (metrics.url("/metrics"),))
    demand = asyncio.run(DemandScraper(pool).scrape())
    assert demand is not None
    assert not demand.is_stale(demand.observed_at_utc + timedelta(seconds=30), 30.0)
    assert demand.is_stale(demand.observed_at_utc + timedelta(seconds=31), 30.0)


def test_gridflex_gpu_demand_prints_a_json_line_per_scrape(metrics: MetricsServer) -> None:
    metrics.pages["/metrics"] = triton((1000, 500), (2_000_000, 100_000))
    url = metrics.url("/metrics")
    result = CliRunner().invoke(gridflex, ["gpu-demand", "--server", "triton", "--count", "2",
                                           "--every", "0.1", url])  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert [(d["waiting"], d["endpoints_up"]) for d in lines] == [(5.0, 1), (5.0, 1)]
    down = CliRunner().invoke(gridflex, ["gpu-demand", "--server", "vllm", url])
    assert down.exit_code == 1
    assert "no endpoint answered with the series of a vllm" in down.output


def test_vllm_time_to_first_token_is_the_mean_over_the_scrape_interval(
    metrics: MetricsServer,
) -> None:
    page = (PAGES / "vllm.txt").read_text()
    metrics.pages["/metrics"] = page
    scraper = DemandScraper(PoolSettings("chat", "vllm", (metrics.url("/metrics"),)))

    async def main() -> None:
        first = await scraper.scrape()
        assert first is not None
        assert first.ttft_s is None  # one scrape is no window
        # 50 more first tokens, 40 s more waiting for them between the scrapes: 0.8 s each
        labels = '{engine="0",model_name="meta-llama/Llama-3.1-70B-Instruct"}'
        metrics.pages["/metrics"] = page.replace(
            f"_sum{labels} 1234.5", f"_sum{labels} 1274.5"
        ).replace(f"_count{labels} 9950.0", f"_count{labels} 10000.0")
        second = await scraper.scrape()
        assert second is not None
        assert second.ttft_s == pytest.approx(40.0 / 50)
        assert second.queue_time_s is None

    asyncio.run(main())
