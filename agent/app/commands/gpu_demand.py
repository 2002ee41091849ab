"""`gridflex gpu-demand`: what an inference pool's servers report as demand, from their
Prometheus endpoints (adapters.signals.gpu_demand), one JSON line per scrape.

A site engineer's check that the endpoints answer and carry the series gridflex reads, before
a pool's demand is relied on.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict
from typing import get_args

import click

from adapters.signals.gpu_demand import DemandScraper, PoolSettings, Server

__all__ = ["gpu_demand"]


@click.command("gpu-demand")
@click.argument("urls", nargs=-1, required=True)
@click.option("--server", type=click.Choice(get_args(Server)), required=True,
              help="The inference server the endpoints belong to.")  # fmt: skip
@click.option("--pool", default="pool", show_default=True, help="A name for the pool.")
@click.option("--count", type=click.IntRange(min=1), default=1, show_default=True,
              help="Scrapes to make (Triton's queue time needs two).")  # fmt: skip
@click.option("--every", "every_s", type=click.FloatRange(min=0.1), default=5.0,
              show_default=True, help="Seconds between scrapes.")  # fmt: skip
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0.1), default=2.0,
              show_default=True, help="One endpoint's timeout, seconds.")  # fmt: skip
def gpu_demand(  # noqa: PLR0917 - click passes each option by position
    urls: tuple[str, ...], server: Server, pool: str, count: int, every_s: float,
    timeout_s: float,
) -> None:  # fmt: skip
    """Scrape inference servers' /metrics pages and print the pool's demand as JSON lines."""
    scraper = DemandScraper(PoolSettings(pool, server, urls, timeout_s=timeout_s))
    answered = False
    for k in range(count):
        if k:
            time.sleep(every_s)
        demand = asyncio.run(scraper.scrape())
        if demand is None:
            click.echo(json.dumps({"pool": pool, "endpoints_up": 0,
                                   "endpoints_total": len(urls)}))  # fmt: skip
            continue
        answered = True
        line = asdict(demand) | {"observed_at_utc": demand.observed_at_utc.isoformat()}
        click.echo(json.dumps(line))
    if not answered:
        raise click.ClickException("no endpoint answered with the series of a " + server)
