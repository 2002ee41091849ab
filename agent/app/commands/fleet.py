"""`gridflex fleet`: the hub's side of a fleet on NATS JetStream (docs/fleet.md).

  init    the hub's streams: the commands it sends, and the inbound stream sourcing what each
          site publishes (run again with every site to add one)
  send    a limit or a release to one site, as a signed fleet command with a sequence number
          and an expiry; waits for the site's ack and prints it
  shed    a portfolio shed: split over the sites by the flexible load each offers, sent,
          watched, and a failed site's share moved to the others (agent/app/fleet_hub.py)
  status  each site's last telemetry and the age of it, as the hub holds them: a site cut off
          shows its last word and how old it is

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


@fleet.command("shed")
@click.option("--event-id", required=True)
@click.option("--kw", "shed_kw", type=click.FloatRange(min=0, min_open=True), required=True,
              help="what the portfolio sheds, in kW")  # fmt: skip
@click.option("--for-s", type=click.FloatRange(60, 7 * 86_400), default=3600, show_default=True)
@click.option("--key-id", required=True)
@click.option("--key-env", default="GRIDFLEX_FLEET_KEY", show_default=True)
@click.option("--site", "sites", multiple=True, help="default: every site the hub sources")
@click.option("--deadline-s", type=click.FloatRange(1, 3600), default=30, show_default=True,
              help="a site silent this long fails and its share moves")  # fmt: skip
@click.option("--watch-s", type=click.FloatRange(0), default=None,
              help="how long to watch and move shares (default: the shed's duration)")  # fmt: skip
@click.pass_context
def shed(  # noqa: PLR0917 - one parameter per click option
    ctx: click.Context, event_id: str, shed_kw: float, for_s: float, key_id: str, key_env: str,
    sites: tuple[str, ...], deadline_s: float, watch_s: float | None,
) -> None:  # fmt: skip
    """Split a shed over the fleet's sites by the flexible load each offers, send, and watch:
    a site that stops answering has its share moved to the others. JSON lines."""
    from adapters.transport.nats_bus import FLEET_IN_STREAM  # noqa: PLC0415
    from agent.app.fleet_hub import ShedOrder, run_shed  # noqa: PLC0415

    key = _key(key_env)

    async def go() -> None:
        bus = await _connect(ctx.obj["hub"])
        try:
            names = list(sites) or await bus.sourced_domains(FLEET_IN_STREAM)
            order = ShedOrder(event_id, shed_kw, for_s, key_id, key, deadline_s,
                              for_s if watch_s is None else min(watch_s, for_s), names)  # fmt: skip
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
    """Each site's last telemetry as the hub holds it, one JSON line per site."""
    for line in asyncio.run(_status(ctx.obj["hub"], sites)):
        click.echo(json.dumps(line))


async def _status(hub_url: str, sites: tuple[str, ...]) -> list[dict[str, Any]]:
    from adapters.transport.nats_bus import FLEET_IN_STREAM  # noqa: PLC0415
    from agent.app.fleet_hub import last_telemetry  # noqa: PLC0415

    bus = await _connect(hub_url)
    try:
        names = list(sites) or await bus.sourced_domains(FLEET_IN_STREAM)
        now = datetime.now(UTC)
        lines = []
        for site in names:
            seen = await last_telemetry(bus, site)
            if seen is None:
                lines.append({"site": site, "telemetry": None, "age_s": None})
                continue
            at, telemetry = seen
            lines.append({
                "site": site, "age_s": round((now - at).total_seconds(), 1),
                "site_kw": telemetry.get("site_kw"),
                "ceiling_kw": telemetry.get("site_ceiling_kw"),
                "events": telemetry.get("active_events"), "alarms": telemetry.get("alarms"),
            })  # fmt: skip
        return lines
    finally:
        await bus.close()


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
