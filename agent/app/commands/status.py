"""`gridflex status --config SITE.yaml`: what the running site is doing, on one screen.

It listens to the service as SCADA does (the retained `<prefix>/status` and the next
`<prefix>/telemetry`, over the site's own MQTT settings) and reads the live events with their
compliance from the database: site kW against the ceiling, the price and whether it is stale,
the grid postures, devices down (by id range), and each live event.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import click

__all__ = ["status"]

WAIT_S = 5.0
_SECTIONS = frozenset({"site", "classes", "devices", "mqtt", "service"})
# as the status page names them
_STATE_NAMES = {"no_driver": "without a driver", "unavailable": "down",
                "implausible": "reading implausible", "suspect": "reading not believed",
                "not_obeying": "not obeying"}  # fmt: skip


@click.command("status")
@click.option("--config", "config_path", required=True,
              type=click.Path(path_type=Path, dir_okay=False, exists=True))  # fmt: skip
@click.option("--wait-s", default=WAIT_S, show_default=True, type=click.FloatRange(0.5, 60),
              help="how long to wait for telemetry")  # fmt: skip
def status(config_path: Path, wait_s: float) -> None:
    """What the running site is doing now: load against the ceiling, price, postures, devices
    down and live events."""
    from agent.config import ConfigFileError, load_config  # noqa: PLC0415 - keep --help fast

    try:
        # MQTT and the database; drivers and prices are the service's business, not ours
        config = load_config(config_path, sections=_SECTIONS)
    except ConfigFileError as exc:
        raise click.ClickException(str(exc)) from None
    if config.mqtt is None:
        raise click.ClickException("the site file has no mqtt section: status listens over MQTT")
    seen = asyncio.run(_listen(config, wait_s))
    telemetry = seen.get("telemetry")
    click.echo(f"service {config.topic_prefix}: {seen.get('status', 'no status retained')}")
    if telemetry is None:
        click.echo(f"no telemetry within {wait_s:g} s: is `gridflex run` running?", err=True)
        sys.exit(1)
    for line in _lines(telemetry):
        click.echo(line)
    for line in _event_lines(config.service.database):
        click.echo(line)


async def _listen(config: Any, wait_s: float) -> dict[str, Any]:
    from adapters.transport.mqtt_session import MqttError, MqttSession  # noqa: PLC0415
    from agent.app.mqtt_link import passing_settings  # noqa: PLC0415

    session = MqttSession(passing_settings(config.mqtt, config.topic_prefix, "status"))
    seen: dict[str, Any] = {}
    got = asyncio.Event()
    prefix = config.topic_prefix

    def on_status(_topic: str, payload: bytes) -> None:
        seen["status"] = payload.decode(errors="replace")

    def on_telemetry(_topic: str, payload: bytes) -> None:
        try:
            seen["telemetry"] = json.loads(payload)
            got.set()
        except ValueError:
            pass

    session.subscribe(f"{prefix}/status", on_status)
    session.subscribe(f"{prefix}/telemetry", on_telemetry)
    try:
        await session.connect(timeout_s=wait_s)
        await asyncio.wait_for(got.wait(), wait_s)
    except (MqttError, TimeoutError):
        pass
    finally:
        await session.close()
    return seen


def _lines(t: dict[str, Any]) -> list[str]:
    """The same facts as the status page: load on the site's scale, price, postures with their
    expiry, device counts that sum to the fleet, alarms with since-when, overrides in force."""
    ceiling, limit = t.get("site_ceiling_kw"), t.get("import_limit_kw")
    against = "no ceiling" if ceiling is None else f"ceiling {ceiling:,.1f} kW"
    if limit:
        against += (
            f", {100 * t.get('site_kw', 0) / limit:.0f} % of the {limit:,.1f} kW import limit"
        )
    price = t.get("price_usd_per_mwh")
    price_text = "no price" if price is None else f"{price:,.2f} $/MWh"
    if t.get("price_stale"):
        price_text += " (stale: the stale posture applies)"
    grid = t.get("grid_emergency", "normal")
    postures = [f"grid {grid}" + (f" until {t['grid_emergency_expires_at']}"
                                  if grid != "normal" and t.get("grid_emergency_expires_at")
                                  else "")]  # fmt: skip
    if t.get("fourcp_warning"):
        postures.append(f"4CP warning until {t.get('fourcp_warning_expires_at')}")
    counts = (t.get("device_states") or {}).items()
    states = ", ".join(f"{n} {_STATE_NAMES.get(s, s)}" for s, n in counts if n or s == "ok")
    lines = [
        *(["SHADOW MODE: no device is written; planned is what gridflex would have commanded"]
          if t.get("mode") == "shadow" else []),
        f"at {t.get('at')}: site {t.get('site_kw', 0):,.1f} kW ({against}), planned "
        f"{t.get('planned_kw', 0):,.1f} kW, {t.get('capacity_kw', 0):,.1f} kW at full rating",
        f"price {price_text}; {', '.join(postures)}",
        f"devices: {states or 'none'} (of {t.get('devices_total')})",
    ]  # fmt: skip
    lines.extend(f"  ALARM {a['kind'].replace('_', ' ')} on {a['subject']} since {a['since']}: "
                 f"{a['detail']}" for a in t.get("alarms") or [])  # fmt: skip
    for o in t.get("overrides") or []:
        action = o["action"] + (f" {o['limit']}" if o.get("limit") else "")
        lines.append(f"  override {o['override_id']} on {o['target']}: {action}, set by "
                     f"{o['issued_by']}, until {o['expires_at']}")  # fmt: skip
    for name, kw in sorted((t.get("class_kw") or {}).items()):
        lines.append(f"  {name:16} {kw:10,.1f} kW")
    return lines


def _event_lines(database: Path) -> list[str]:
    from agent.service.store import Store  # noqa: PLC0415

    if not Path(database).exists():
        return [f"no database at {database}"]
    store = Store(database)
    try:
        live = store.events(live_only=True)
    finally:
        store.close()
    if not live:
        return ["no live events"]
    out = ["live events:"]
    for e in live:
        c = e.compliance
        ramp = f" ({c.ramp_cycles} in its ramp window)" if c is not None and c.ramp_cycles else ""
        record = "" if c is None else (
            f", compliant {c.compliant_cycles}/{c.cycles} cycles after the ramp window{ramp}, "
            f"worst {c.worst_over_kw:,.1f} kW over")  # fmt: skip
        achieved = "" if e.achieved_kw is None else f", achieved {e.achieved_kw:,.1f} kW"
        out.append(f"  {e.event_id} {e.status}: {e.kind} {e.requested_kw:,.1f} kW from "
                   f"{e.source}{achieved}{record}")  # fmt: skip
    return out
