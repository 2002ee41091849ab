"""`gridflex prices fetch`: download ERCOT prices into the canonical CSV for study and backtests."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TimeElapsedColumn

from adapters.signals.canonical_file import write_canonical_prices
from adapters.signals.ercot_api import (
    DEFAULT_PAGE_SIZE,
    LOGIN_URL,
    PUBLIC_API_URL,
    ErcotApiClient,
    ErcotApiCredentials,
)
from adapters.signals.ercot_mis import MIS_URL, ErcotMisClient
from adapters.signals.ercot_normalize import MARKETS, NormalizedPrices
from adapters.signals.http_policy import SlidingWindowLimiter
from adapters.signals.price_errors import UnknownSettlementPointError
from agent.errors import SignalAuthError, SignalError

__all__ = ["prices"]

# ERCOT names: hubs HB_*, load zones LZ_*, resource nodes such as AMISTAD_ALL or 7RNCHSLR_EGEN.
_SETTLEMENT_POINT = re.compile(r"^[A-Z0-9][A-Z0-9_.\-]{0,63}$")


class _UsageOrCredentialError(click.ClickException):
    """Something to fix before a retry can help: exit code 2, like click's usage errors."""

    exit_code = 2


@click.group()
def prices() -> None:
    """ERCOT market prices for study and backtests."""


@prices.command("fetch")
@click.option(
    "--source",
    type=click.Choice(["ercot-api", "ercot-mis"]),
    default="ercot-api",
    show_default=True,
    help="Public API (account; history from 2023-12-11) or MIS (no account; recent days).",
)
@click.option("--market", type=click.Choice(MARKETS), default="rt15", show_default=True)
@click.option("--settlement-point", default="HB_HUBAVG", show_default=True)
@click.option("--start", "start", type=click.DateTime(["%Y-%m-%d"]), required=True,
              help="First operating day (America/Chicago), inclusive.")  # fmt: skip
@click.option("--end", "end", type=click.DateTime(["%Y-%m-%d"]), required=True,
              help="Last operating day, inclusive.")  # fmt: skip
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
    help="CSV in the canonical columns (.gz compresses, .parquet writes parquet).",
)  # fmt: skip
@click.option("--base-url", default=None, help="Override ERCOT's API (or MIS) host, e.g. a proxy.")
@click.option("--auth-url", default=None, help="Override ERCOT's login (token) URL.")
@click.option("--page-size", type=click.IntRange(1, 1_000_000), default=DEFAULT_PAGE_SIZE,
              show_default=True, help="Rows per API page.")  # fmt: skip
@click.option("--max-requests-per-minute", type=click.IntRange(1), default=30, show_default=True,
              help="Client-side limit; ERCOT's Public API allows 30.")  # fmt: skip
def fetch(
    *,
    source: str,
    market: str,
    settlement_point: str,
    start: datetime,
    end: datetime,
    out: Path,
    base_url: str | None,
    auth_url: str | None,
    page_size: int,
    max_requests_per_minute: int,
) -> None:
    """Fetch prices for operating days START..END and write them to OUT.

    The API needs ERCOT_API_USERNAME, ERCOT_API_PASSWORD and ERCOT_API_SUBSCRIPTION_KEY.
    """
    point = settlement_point.strip().upper()
    if not _SETTLEMENT_POINT.match(point):
        raise click.BadParameter(f"{settlement_point!r} is not an ERCOT settlement point name")
    first_day, last_day = start.date(), end.date()
    if first_day > last_day:
        raise click.BadParameter("--start is after --end", param_hint="--start/--end")
    limiter = SlidingWindowLimiter(max_requests=max_requests_per_minute, window_s=60.0)
    console = Console(stderr=True)
    request = _Request(source, market, point, first_day, last_day, base_url, auth_url, page_size)
    try:
        result = _download(request, limiter, console)
    except (SignalAuthError, UnknownSettlementPointError) as error:
        raise _UsageOrCredentialError(str(error)) from error
    except SignalError as error:
        raise click.ClickException(str(error)) from error
    for note in result.warnings:
        console.print(f"[yellow]warning:[/yellow] {note}", highlight=False)
    write_canonical_prices(result.frame, out)
    frame = result.frame
    click.echo(
        f"wrote {len(frame)} {market} intervals for {point}, "
        f"{frame['interval_start_utc'].min():%Y-%m-%dT%H:%MZ} .. "
        f"{frame['interval_end_utc'].max():%Y-%m-%dT%H:%MZ}, to {out}"
    )


@dataclass(frozen=True, slots=True)
class _Request:
    source: str
    market: str
    point: str
    first_day: date
    last_day: date
    base_url: str | None
    auth_url: str | None
    page_size: int


def _download(
    request: _Request, limiter: SlidingWindowLimiter, console: Console
) -> NormalizedPrices:
    days = (request.first_day, request.last_day)
    columns = (BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        bar: list[TaskID] = []

        def on_page(done: int, total: int) -> None:
            if total <= 1:
                return  # one page: nothing to watch
            if not bar:
                bar.append(progress.add_task("download", total=total))
            progress.update(bar[0], completed=done, total=total)

        if request.source == "ercot-mis":
            mis = ErcotMisClient(base_url=request.base_url or MIS_URL, limiter=limiter)
            return mis.fetch_normalized(request.market, request.point, *days, on_page=on_page)
        api = ErcotApiClient(
            ErcotApiCredentials.from_env(),
            base_url=request.base_url or PUBLIC_API_URL,
            auth_url=request.auth_url or LOGIN_URL,
            page_size=request.page_size,
            limiter=limiter,
        )
        return api.fetch_normalized(request.market, request.point, *days, on_page=on_page)
