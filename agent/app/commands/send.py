"""`gridflex send --config SITE.yaml KIND ...`: a dispatch, release, override, clear or grid
condition built from flags, signed with the site's key, published, and its ack printed.

The message is checked against the same model the service parses it with before it leaves, so
a missing or contradictory flag is an error here naming the field, not a rejected ack. With a
site key (`mqtt.hmac_secret`, or `--key-id` naming one of `mqtt.hmac_keys`) it is signed for
`<site id>:<topic suffix>` with a fresh `message_id`, as docs/mqtt.md describes; the key comes
from the site file and its EnvironmentFile (`gridflex --env-file`). The command waits for the
service's ack of the message and prints it as one JSON line; exit status 0 when it was taken,
1 when it was rejected (the reason printed), 2 when no ack came in time.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

__all__ = ["send"]

WAIT_S = 10.0
_SECTIONS = frozenset({"site", "classes", "devices", "mqtt"})
_REFUSED = frozenset({"rejected"})


@dataclass(frozen=True)
class _Outgoing:
    suffix: str  # the topic under the site's prefix
    body: dict[str, Any]
    ack_suffix: str
    matches: Any  # (ack payload) -> bool: the ack of this message


@click.group("send")
@click.option("--config", "config_path", required=True,
              type=click.Path(path_type=Path, dir_okay=False, exists=True))  # fmt: skip
@click.option("--key-id", default=None, help="sign with this key of mqtt.hmac_keys "
              "(default: mqtt.hmac_secret, the site key)")  # fmt: skip
@click.option("--wait-s", default=WAIT_S, show_default=True, type=click.FloatRange(0.5, 300),
              help="how long to wait for the ack")  # fmt: skip
@click.pass_context
def send(ctx: click.Context, config_path: Path, key_id: str | None, wait_s: float) -> None:
    """Send a dispatch, release, override, clear or grid condition, signed, and print its ack."""
    ctx.obj = {"config_path": config_path, "key_id": key_id, "wait_s": wait_s}


def _when(text: str | None, field: str) -> str | None:
    if text is None:
        return None
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not an ISO-8601 time", param_hint=field) from None
    if at.tzinfo is None:
        raise click.BadParameter(f"{text!r} has no UTC offset", param_hint=field)
    return at.isoformat()


def _expiry(expires_at: str | None, for_min: float | None) -> str | None:
    if for_min is not None:
        return (datetime.now(UTC) + timedelta(minutes=for_min)).isoformat()
    return _when(expires_at, "--expires-at")


@send.command("dispatch")
@click.option("--event-id", required=True)
@click.option("--limit-kw", "target_kw", type=float, default=None,
              help="keep the site at or below this")  # fmt: skip
@click.option("--shed-kw", type=float, default=None, help="draw this much less than at the start")
@click.option("--start", default=None, help="ISO-8601 with offset (default: now)")
@click.option("--end", default=None, help="ISO-8601 with offset (default: until released)")
@click.option("--program", default="manual", show_default=True)
@click.pass_obj
def dispatch(obj: dict[str, Any], *, event_id: str, target_kw: float | None,
             shed_kw: float | None, start: str | None, end: str | None,
             program: str) -> None:  # fmt: skip
    """A limit (--limit-kw) or a shed (--shed-kw)."""
    kind = "limit" if target_kw is not None else "shed" if shed_kw is not None else "limit"
    body = {"event_id": event_id, "kind": kind, "target_kw": target_kw, "shed_kw": shed_kw,
            "start": _when(start, "--start"), "end": _when(end, "--end"),
            "program": program}  # fmt: skip
    _send(obj, _for_event("dispatch", body))


@send.command("release")
@click.option("--event-id", required=True)
@click.pass_obj
def release(obj: dict[str, Any], event_id: str) -> None:
    """End an event early."""
    _send(obj, _for_event("dispatch", {"event_id": event_id, "kind": "release"}))


@send.command("override")
@click.option("--override-id", required=True)
@click.option("--action", type=click.Choice(["on", "off", "limit"]), required=True)
@click.option("--device", "device_id", default=None)
@click.option("--class", "load_class", default=None)
@click.option("--limit-kw", type=float, default=None)
@click.option("--limit-pct", type=float, default=None)
@click.option("--expires-at", default=None, help="ISO-8601 with offset")
@click.option("--for-min", type=click.FloatRange(min=0, min_open=True), default=None,
              help="instead of --expires-at: this many minutes from now")  # fmt: skip
@click.option("--issued-by", default="unknown", show_default=True)
@click.pass_obj
def override(obj: dict[str, Any], *, override_id: str, action: str, device_id: str | None,
             load_class: str | None, limit_kw: float | None, limit_pct: float | None,
             expires_at: str | None, for_min: float | None, issued_by: str) -> None:  # fmt: skip
    """Force a device or a class on, off or to a limit until it expires."""
    body = {"override_id": override_id, "action": action, "device_id": device_id,
            "class": load_class, "limit_kw": limit_kw, "limit_pct": limit_pct,
            "expires_at": _expiry(expires_at, for_min), "issued_by": issued_by}  # fmt: skip
    _send(obj, _for_override(body))


@send.command("clear")
@click.option("--override-id", required=True)
@click.option("--issued-by", default="unknown", show_default=True)
@click.pass_obj
def clear(obj: dict[str, Any], override_id: str, issued_by: str) -> None:
    """Remove an override."""
    _send(obj, _for_override({"override_id": override_id, "action": "clear",
                              "issued_by": issued_by}))  # fmt: skip


@send.command("emergency")
@click.option("--level", required=True,
              type=click.Choice(["normal", "conservation", "eea1", "eea2", "eea3"]))  # fmt: skip
@click.option("--source", default="unknown", show_default=True)
@click.option("--expires-at", default=None, help="ISO-8601 with offset")
@click.option("--for-min", type=click.FloatRange(min=0, min_open=True), default=None)
@click.pass_obj
def emergency(obj: dict[str, Any], level: str, source: str, expires_at: str | None,
              for_min: float | None) -> None:  # fmt: skip
    """The grid condition: normal, a conservation appeal or EEA 1-3."""
    body = {"level": level, "source": source, "expires_at": _expiry(expires_at, for_min)}
    _send(obj, _for_grid("grid/emergency", body))


@send.command("4cp")
@click.option("--active/--inactive", required=True)
@click.option("--source", default="unknown", show_default=True)
@click.option("--expires-at", default=None, help="ISO-8601 with offset")
@click.option("--for-min", type=click.FloatRange(min=0, min_open=True), default=None)
@click.pass_obj
def fourcp(obj: dict[str, Any], active: bool, source: str, expires_at: str | None,
           for_min: float | None) -> None:  # fmt: skip
    """A 4CP peak warning on or off."""
    body = {"active": active, "source": source, "expires_at": _expiry(expires_at, for_min)}
    _send(obj, _for_grid("grid/4cp", body))


def _for_event(suffix: str, body: dict[str, Any]) -> _Outgoing:
    event_id = body["event_id"]
    return _Outgoing(suffix, body, "dispatch/ack", lambda a: a.get("event_id") == event_id)


def _for_override(body: dict[str, Any]) -> _Outgoing:
    override_id = body["override_id"]
    return _Outgoing("override", body, "override/ack",
                     lambda a: a.get("override_id") == override_id)  # fmt: skip


def _for_grid(suffix: str, body: dict[str, Any]) -> _Outgoing:
    return _Outgoing(suffix, body, "grid/ack", lambda a: a.get("topic") == suffix)


def _send(obj: dict[str, Any], out: _Outgoing) -> None:
    from agent.config import ConfigFileError, load_config  # noqa: PLC0415 - keep --help fast

    try:
        config = load_config(obj["config_path"], sections=_SECTIONS)
    except ConfigFileError as exc:
        raise click.ClickException(str(exc)) from None
    if config.mqtt is None:
        raise click.ClickException("the site file has no mqtt section: send publishes over MQTT")
    body = {k: v for k, v in out.body.items() if v is not None}
    body["issued_at"] = datetime.now(UTC).isoformat()
    body = _signed(body, config, obj["key_id"], out.suffix)
    _check(out.suffix, body)
    ack = asyncio.run(_publish(config, replace(out, body=body), obj["wait_s"]))
    if ack is None:
        click.echo(f"no ack on {config.topic_prefix}/{out.ack_suffix} within "
                   f"{obj['wait_s']:g} s: is `gridflex run` running?", err=True)  # fmt: skip
        sys.exit(2)
    click.echo(json.dumps(ack, sort_keys=True))
    if ack.get("status") in _REFUSED:
        click.echo(f"rejected: {ack.get('reason')}", err=True)
        sys.exit(1)


def _signed(body: dict[str, Any], config: Any, key_id: str | None,
            suffix: str) -> dict[str, Any]:  # fmt: skip
    from agent.domain.signing import sign  # noqa: PLC0415

    mqtt = config.mqtt
    if key_id is not None:
        if key_id not in mqtt.hmac_keys:
            known = ", ".join(sorted(mqtt.hmac_keys)) or "none"
            raise click.BadParameter(f"{key_id!r} is not in mqtt.hmac_keys ({known})",
                                     param_hint="--key-id")  # fmt: skip
        key = mqtt.hmac_keys[key_id].get_secret_value()
        body = {**body, "key_id": key_id}
    elif mqtt.hmac_secret is not None:
        key = mqtt.hmac_secret.get_secret_value()
    else:
        return body  # the site takes unsigned messages
    body = {**body, "message_id": uuid.uuid4().hex}
    return {**body, "signature": sign(body, key.encode(), f"{config.site.id}:{suffix}")}


def _check(suffix: str, body: dict[str, Any]) -> None:
    """The service's own model of the message: a bad flag is an error here, naming the field."""
    from pydantic import BaseModel, ValidationError  # noqa: PLC0415

    from agent.service.messages import (  # noqa: PLC0415
        DispatchMessage,
        EmergencyMessage,
        OverrideMessage,
        PeakWarningMessage,
    )

    models: dict[str, type[BaseModel]] = {
        "dispatch": DispatchMessage,
        "override": OverrideMessage,
        "grid/emergency": EmergencyMessage,
        "grid/4cp": PeakWarningMessage,
    }
    model = models[suffix]
    try:
        model.model_validate(body)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'message'}: {e['msg']}" for e in exc.errors()
        )
        raise click.UsageError(f"the {suffix} message would be rejected: {problems}") from None


def _settle(got: asyncio.Future[dict[str, Any]], ack: dict[str, Any]) -> None:
    if not got.done():  # the first ack of this message; later ones (active, ...) are not ours
        got.set_result(ack)


async def _publish(config: Any, out: _Outgoing, wait_s: float) -> dict[str, Any] | None:
    from adapters.transport.mqtt_session import MqttError, MqttSession  # noqa: PLC0415
    from agent.app.mqtt_link import passing_settings  # noqa: PLC0415

    session = MqttSession(passing_settings(config.mqtt, config.topic_prefix, "send"))
    prefix = config.topic_prefix
    got: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
    loop = asyncio.get_running_loop()

    def on_ack(_topic: str, payload: bytes) -> None:
        try:
            ack = json.loads(payload)
        except ValueError:
            return
        if isinstance(ack, dict) and out.matches(ack):
            loop.call_soon_threadsafe(_settle, got, ack)

    session.subscribe(f"{prefix}/{out.ack_suffix}", on_ack)
    try:
        await session.connect(timeout_s=wait_s)
        await session.publish(f"{prefix}/{out.suffix}", json.dumps(out.body), qos=1)
        return await asyncio.wait_for(got, wait_s)
    except MqttError as exc:
        raise click.ClickException(f"MQTT: {exc}") from None
    except TimeoutError:
        return None
    finally:
        await session.close()
