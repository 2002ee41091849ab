"""`gridflex fleet`: the hub's side of a fleet on NATS JetStream (docs/fleet.md).

  init    the hub's streams: the commands it sends, and the inbound stream sourcing what each
          site publishes (run again with every site to add one)
  send    a limit or a release to one site, as a signed fleet command with a sequence number
          and an expiry; waits for the site's ack and prints it
  shed    a portfolio shed: split over the sites cheapest flexible MWh first, sent, watched,
          and a failed site's share (a short site's miss) moved to the others
  ceiling the same for a ceiling on the fleet's summed load (agent/app/fleet_hub.py)
  status  each site's last telemetry and the age of it, as the hub holds them (a site cut off
          shows its last word and how old it is), then each portfolio obligation's state
  serve   the fleet page: the same, read-only, over HTTP (agent/app/fleet_page.py)

The key is read from an environment variable (never a flag: flags are seen in `ps`); the
sequence number defaults to the time in milliseconds, which only grows for one issuer.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import click

__all__ = ["fleet"]

PREFIX = "gridflex"


@click.group("fleet")
@click.option("--hub", "hub_url", default="nats://127.0.0.1:4222", show_default=True,
              help="the hub's NATS server")  # fmt: skip
@click.pass_context
def fleet(ctx: click.Context, hub_url: str) -> None:
    """The fleet's hub: set up its streams, command a site, see every site."""
    ctx.obj = {"hub": hub_url}


@fleet.command("init")
@click.option("--site", "sites", multiple=True, required=True,
              help="a site's JetStream domain (its site id by default); once per site")  # fmt: skip
@click.pass_context
def init(ctx: click.Context, sites: tuple[str, ...]) -> None:
    """Create or update the hub's streams for these sites."""

    async def go() -> None:
        bus = await _connect(ctx.obj["hub"])
        try:
            await bus.ensure_hub(prefix=PREFIX, site_domains=list(sites))
        finally:
            await bus.close()

    asyncio.run(go())
    click.echo(f"hub streams ready for {len(sites)} site(s): {', '.join(sites)}")


@fleet.command("send")
@click.option("--site", required=True, help="the site's id")
@click.option("--key-id", required=True, help="the key id the site knows (fleet.command_keys)")
@click.option("--key-env", default="GRIDFLEX_FLEET_KEY", show_default=True,
              help="the environment variable holding that key")  # fmt: skip
@click.option("--event-id", required=True)
@click.option("--limit-kw", type=click.FloatRange(min=0), default=None,
              help="keep the site at or below this; without it: a release")  # fmt: skip
@click.option("--program", default="manual", show_default=True)
@click.option("--expires-s", type=click.FloatRange(1, 86_400), default=300, show_default=True,
              help="the command never applies after this")  # fmt: skip
@click.option("--seq", type=click.IntRange(min=1), default=None,
              help="default: the time in milliseconds")  # fmt: skip
@click.option("--wait-s", type=click.FloatRange(0, 3600), default=10, show_default=True,
              help="how long to wait for the site's ack (0: do not wait)")  # fmt: skip
@click.pass_context
def send(  # noqa: PLR0917 - one parameter per click option
         ctx: click.Context, site: str, key_id: str, key_env: str, event_id: str,
         limit_kw: float | None, program: str, expires_s: float, seq: int | None,
         wait_s: float) -> None:  # fmt: skip
    """Command one site; prints its ack (exit 1 when refused, 2 when none came in time)."""
    from agent.service.fleet_commands import signed_command  # noqa: PLC0415

    key = _key(key_env)
    now = datetime.now(UTC)
    dispatch: dict[str, Any] = {"event_id": event_id, "issued_at": now.isoformat()}
    if limit_kw is None:
        dispatch["kind"] = "release"
    else:
        dispatch |= {"kind": "limit", "target_kw": limit_kw, "program": program}
    body = signed_command(site, seq or int(time.time() * 1000), key_id, key, issued_at=now,
                          expires_at=now + timedelta(seconds=expires_s),
                          dispatch=dispatch)  # fmt: skip
    ack = asyncio.run(_send(ctx.obj["hub"], site, body, event_id, wait_s))
    if ack is None:
        if wait_s > 0:
            click.echo(f"no ack from {site} within {wait_s:g} s (cut off? it applies the command "
                       "when its link heals, unless it has expired)", err=True)  # fmt: skip
            sys.exit(2)
        return
    click.echo(json.dumps(ack))
    if ack.get("status") == "rejected":
        sys.exit(1)


async def _send(hub_url: str, site: str, body: dict[str, Any], event_id: str,
                wait_s: float) -> dict[str, Any] | None:  # fmt: skip
    from adapters.transport.nats_bus import FLEET_IN_STREAM  # noqa: PLC0415
    from agent.app.fleet_hub import publish_command  # noqa: PLC0415

    bus = await _connect(hub_url)
    try:
        sent_at = datetime.now(UTC)
        await publish_command(bus, body)
        deadline = time.monotonic() + wait_s
        subject = f"{PREFIX}.{site}.out.dispatch.ack"
        while time.monotonic() < deadline:
            for message in reversed(await bus.stream_messages(FLEET_IN_STREAM, subject)):
                ack: dict[str, Any] = json.loads(message.data)
                if ack.get("event_id") == event_id and datetime.fromisoformat(ack["at"]) >= (
                    sent_at - timedelta(seconds=5)
                ):
                    return ack
            await asyncio.sleep(0.25)
        return None
    finally:
        await bus.close()


def _obligation_options(command: Any) -> Any:
    for option in reversed([
        click.option("--event-id", required=True),
        click.option("--for-s", type=click.FloatRange(60, 7 * 86_400), default=3600,
                     show_default=True),
        click.option("--key-id", required=True),
        click.option("--key-env", default="GRIDFLEX_FLEET_KEY", show_default=True),
        click.option("--site", "sites", multiple=True,
                     help="default: every site the hub sources"),
        click.option("--deadline-s", type=click.FloatRange(1, 3600), default=30,
                     show_default=True, help="a site silent or short this long fails and "
                     "its share (or what it misses) moves"),
        click.option("--watch-s", type=click.FloatRange(0), default=None,
                     help="how long to watch and move shares (default: the duration)"),
    ]):  # fmt: skip
        command = option(command)
    return command


@fleet.command("shed")
@click.option("--kw", "shed_kw", type=click.FloatRange(min=0, min_open=True), required=True,
              help="what the portfolio sheds, in kW")  # fmt: skip
@_obligation_options
@click.pass_context
def shed(ctx: click.Context, /, shed_kw: float, **options: Any) -> None:
    """Split a shed over the fleet's sites, cheapest flexible MWh first, send, and watch: a
    site that stops answering has its share moved, one that falls short what it misses. JSON
    lines."""
    _run_obligation(ctx.obj["hub"], shed_kw, None, **options)


@fleet.command("ceiling")
@click.option("--kw", "ceiling_kw", type=click.FloatRange(min=0), required=True,
              help="the most the portfolio may draw, in kW")  # fmt: skip
@_obligation_options
@click.pass_context
def ceiling(ctx: click.Context, /, ceiling_kw: float, **options: Any) -> None:
    """Hold the fleet's summed load at or under a ceiling: the shed it needs from the sites'
    present load, split and watched as `shed` does. JSON lines."""
    _run_obligation(ctx.obj["hub"], None, ceiling_kw, **options)


def _run_obligation(
    hub_url: str, shed_kw: float | None, ceiling_kw: float | None, *, event_id: str,
    for_s: float, key_id: str, key_env: str, sites: tuple[str, ...], deadline_s: float,
    watch_s: float | None,
) -> None:  # fmt: skip
    from adapters.transport.nats_bus import FLEET_IN_STREAM  # noqa: PLC0415
    from agent.app.fleet_hub import ShedOrder, run_shed  # noqa: PLC0415

    key = _key(key_env)

    async def go() -> None:
        bus = await _connect(hub_url)
        try:
            names = list(sites) or await bus.sourced_domains(FLEET_IN_STREAM)
            order = ShedOrder(event_id, shed_kw, for_s, key_id, key, deadline_s,
                              for_s if watch_s is None else min(watch_s, for_s), names,
                              ceiling_kw=ceiling_kw)  # fmt: skip
            await run_shed(bus, order, lambda line: click.echo(json.dumps(line)))
        finally:
            await bus.close()

    asyncio.run(go())


def _key(key_env: str) -> bytes:
    from agent.config.keys import MIN_KEY_BYTES  # noqa: PLC0415

    key = os.environ.get(key_env)
    if not key or len(key.encode()) < MIN_KEY_BYTES:  # the site refuses shorter keys
        raise click.UsageError(f"{key_env} must hold the fleet key ({MIN_KEY_BYTES}+ bytes)")
    return key.encode()


@fleet.command("status")
@click.option("--site", "sites", multiple=True, help="only these sites (default: every site "
              "the hub sources)")  # fmt: skip
@click.pass_context
def status(ctx: click.Context, sites: tuple[str, ...]) -> None:
    """Each site's last telemetry as the hub holds it, one JSON line per site, then one per
    portfolio obligation."""
    view = asyncio.run(_view(ctx.obj["hub"], sites))
    for line in view["sites"]:
        click.echo(json.dumps(line))
    for obligation in view["portfolio"]:
        click.echo(json.dumps({"portfolio": obligation}))


async def _view(hub_url: str, sites: tuple[str, ...]) -> dict[str, Any]:
    from agent.app.fleet_page import fleet_view  # noqa: PLC0415

    bus = await _connect(hub_url)
    try:
        return await fleet_view(bus, sites)
    finally:
        await bus.close()


@fleet.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8091, show_default=True)
@click.option("--site", "sites", multiple=True, help="default: every site the hub sources")
@click.pass_context
def serve(ctx: click.Context, host: str, port: int, sites: tuple[str, ...]) -> None:
    """The fleet page (read-only): every site and portfolio obligation, at / and /fleet.json."""
    from agent.app.fleet_page import FleetPage  # noqa: PLC0415

    async def go() -> None:
        bus = await _connect(ctx.obj["hub"])
        page = FleetPage(bus, sites)
        server = page.server(host, port)
        server.serve_in_background("fleet-page")
        click.echo(json.dumps({"serving": f"http://{host}:{server.server_address[1]}/"}))
        try:
            await page.refresh_forever()
        finally:
            server.shutdown()
            await bus.close()

    asyncio.run(go())


async def _connect(url: str) -> Any:
    try:
        from adapters.transport.nats_bus import BusAddress, FleetBusError, NatsBus  # noqa: PLC0415
    except ImportError as exc:
        raise click.UsageError(
            f"{exc.name} is not installed: pip install 'gridflex[fleet]'"
        ) from None
    bus = NatsBus(BusAddress(url, name="gridflex-fleet"))
    try:
        await bus.connect()
    except FleetBusError as exc:
        raise click.ClickException(str(exc)) from None
    return bus
