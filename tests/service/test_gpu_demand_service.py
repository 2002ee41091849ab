"""The running service reads its inference pools' demand: into the snapshot, onto /metrics
and into the status page's JSON, a pool whose endpoints stop answering shown as stale."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

from click.testing import CliRunner
from prometheus_client import generate_latest

from agent.app.runner import decision_message
from agent.app.status_page import status_view
from agent.cli import main as gridflex
from agent.config import parse_config
from agent.service.messages import TelemetryMessage
from tests.adapters.signals.metrics_http import PAGES, MetricsServer
from tests.helpers.hybrid_site import (
    HYBRID,
    SITE,
)
from tests.helpers.openadr_service import service_running, utc_now


def test_the_service_shows_each_pools_demand(tmp_path: Path, metrics: MetricsServer) -> None:
    page = (PAGES / "vllm.txt").read_text()
    metrics.pages.update({"/a/metrics": page, "/b/metrics": page})
    text = SITE.format(db=tmp_path / "db.sqlite3", a=metrics.url("/a/metrics"),
                       b=metrics.url("/b/metrics"))  # fmt: skip
    config = parse_config(text, env={})

    async def main() -> None:
        async with service_running(config) as run:
            for _ in range(50):
                if "chat" in run.service.snapshot.gpu_demand:
                    break
                await asyncio.sleep(0.1)
            demand = run.service.snapshot.gpu_demand["chat"]
            assert (demand.waiting, demand.running, demand.endpoints_up) == (16.0, 64.0, 2)
            exposed = generate_latest(run.service.metrics.registry).decode()
            assert 'gridflex_gpu_demand{pool="chat",what="waiting"} 16.0' in exposed
            assert 'gridflex_gpu_demand_endpoints_up{pool="chat"} 2.0' in exposed
            metrics.pages["/b/metrics"] = 503
            for _ in range(50):
                if run.service.snapshot.gpu_demand["chat"].endpoints_up == 1:
                    break
                await asyncio.sleep(0.1)
            assert run.service.snapshot.gpu_demand["chat"].waiting == 8.0
            later = utc_now() + timedelta(seconds=10)
            telemetry = TelemetryMessage.model_construct(at=later)
            pools = status_view(run.service, telemetry, None)["gpu_demand"]
            assert [(p["pool"], p["demand"]["endpoints_up"], p["demand"]["stale"])
                    for p in pools] == [("chat", 1, True)]  # fmt: skip

    asyncio.run(main())


def test_check_config_names_every_bad_gpu_demand_field(tmp_path: Path) -> None:
    text = SITE.format(db=tmp_path / "db.sqlite3", a="ftp://10.0.4.11/metrics",
                       b="http://10.0.4.12:8000/metrics")  # fmt: skip
    text = text.replace("scrape_every_s: 1", "scrape_every_s: 0").replace("vllm", "ollama")
    site_file = tmp_path / "site.yaml"
    site_file.write_text(text)
    result = CliRunner().invoke(gridflex, ["check-config", str(site_file)])
    assert result.exit_code == 2, result.output
    for field in ("gpu_demand.pools.chat.server", "gpu_demand.pools.chat.endpoints[0]",
                  "gpu_demand.pools.chat.scrape_every_s"):  # fmt: skip
        assert field in result.output, result.output
    assert "must be an http:// or https:// URL" in result.output


def test_the_service_sizes_a_pool_from_its_demand_and_lends_the_rest(
    tmp_path: Path, metrics: MetricsServer
) -> None:
    """Two endpoints of 40 requests each (running and waiting): 80 x 1.25 / 40 = 3 servers
    serve and 5 are lent at 30 $/MWh; a burst to 10x reclaims every one of them."""
    page = (PAGES / "vllm.txt").read_text()
    metrics.pages.update({"/a/metrics": page, "/b/metrics": page})
    text = HYBRID.format(db=tmp_path / "db.sqlite3", a=metrics.url("/a/metrics"),
                         b=metrics.url("/b/metrics"))  # fmt: skip
    config = parse_config(text, env={})

    async def main() -> None:
        async with service_running(config) as run:

            def pool() -> tuple[int, int, int]:
                last = run.service.shell.last
                status = None if last is None or not last.decision.pools else last.decision.pools[0]
                return (-1, -1, -1) if status is None else (status.serving, status.lent,
                                                            status.paused)  # fmt: skip

            for _ in range(50):
                if pool() == (3, 5, 0):
                    break
                await asyncio.sleep(0.1)
            assert pool() == (3, 5, 0)
            exposed = generate_latest(run.service.metrics.registry).decode()
            assert 'gridflex_pool_servers{pool="chat",use="lent"} 5.0' in exposed
            telemetry = TelemetryMessage.model_construct(at=utc_now())
            (shown,) = status_view(run.service, telemetry, None)["gpu_demand"]
            assert (shown["decided"]["serving"], shown["decided"]["lent"]) == (3, 5)
            report = run.service.shell.last
            assert report is not None
            (published,) = decision_message(report, None).pools  # <prefix>/decision's pools
            assert (published.pool, published.serving, published.lent) == ("chat", 3, 5)
            burst = page.replace("} 7.0", "} 300.0")
            metrics.pages.update({"/a/metrics": burst, "/b/metrics": burst})
            for _ in range(50):
                if pool() == (8, 0, 0):
                    break
                await asyncio.sleep(0.1)
            assert pool() == (8, 0, 0)
            reason = run.service.shell.last.decision.setpoint("gpu-0008").reason  # type: ignore[union-attr]
            assert "need 8 servers" not in reason  # demand asks more than there are
            assert "of 8" in reason

    asyncio.run(main())


def test_check_config_names_a_pool_engine_on_a_class_that_is_not_protected(
    tmp_path: Path,
) -> None:
    text = HYBRID.format(db=tmp_path / "db.sqlite3", a="http://10.0.4.11/metrics",
                         b="http://10.0.4.12:8000/metrics")  # fmt: skip
    site_file = tmp_path / "site.yaml"
    site_file.write_text(text.replace("load_class: gpu", "load_class: miners"))
    result = CliRunner().invoke(gridflex, ["check-config", str(site_file)])
    assert result.exit_code == 2, result.output
    assert "gpu_demand.pools.chat.engine.load_class" in result.output
    assert "protected class" in result.output
    site_file.write_text(text.replace("load_class: gpu", "load_class: gpus"))
    result = CliRunner().invoke(gridflex, ["check-config", str(site_file)])
    assert result.exit_code == 2, result.output
    assert "names no load class" in result.output
    site_file.write_text(text.replace("queue_time_target_s: 2", "queue_time_target_s: 2, "
                                      "ttft_target_s: 1"))  # fmt: skip
    result = CliRunner().invoke(gridflex, ["check-config", str(site_file)])
    assert result.exit_code == 2, result.output
    assert "queue_time_target_s or ttft_target_s" in result.output
