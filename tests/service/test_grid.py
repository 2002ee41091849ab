"""Grid emergencies and 4CP warnings through the service: the real shell over simulated Modbus
devices on loopback, cycle by cycle with a fake clock; rejections on grid/ack; restarts; and one
run of `gridflex run`'s service over a real Mosquitto."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from adapters.sim.modbus_server import SimModbusSite
from adapters.transport.mqtt_session import MqttSession, MqttSettings
from agent.app.assembly import MemoryOutbox, Service, assemble
from agent.app.runner import run_service, telemetry_message
from agent.app.simsite import endpoints_for
from agent.config import SiteConfig, parse_config
from agent.domain.signals import EmergencyLevel
from agent.policy import Rule
from agent.service.intake import sign
from agent.service.messages import GridAck, TelemetryMessage
from tests.helpers.peers import Broker, free_port
from tests.service.site import FakeClock

# T0 (tests.service.site) is 2024-05-08 17:00 UTC = 12:00 CDT: inside the 4CP window below.
SITE = """
site: {{id: grid-{tag}, timezone: America/Chicago}}
classes:
  miners: {{priority: interruptible, economics: {{kind: fixed, value_usd_per_mwh: 90}}}}
  tanks: {{priority: flexible, economics: {{kind: fixed, value_usd_per_mwh: 120}}}}
  controls: {{priority: critical}}
devices:
  - {{id: pdu, kind: pdu_outlet, class: miners, count: 24, rated_kw: 3.25, min_on_s: 0,
     min_off_s: 0, driver: {{type: modbus, host: 127.0.9.1, port: {port},
     profile: rack_pdu_switched, channels_per_host: 24, timeout_s: 0.5}}}}
  - {{id: tank, kind: miner, class: tanks, count: 2, rated_kw: 100, units: 20, min_kw: 20,
     control: percent,
     min_on_s: 0, min_off_s: 0, driver: {{type: modbus, host: 127.0.9.101, port: {port},
     profile: load_controller_percent, timeout_s: 0.5}}}}
  - {{id: controls, kind: other, class: controls, rated_kw: 5}}
policy:
  hysteresis_usd_per_mwh: 0
  min_dwell_s: 0
  stale_posture: run_all
  fourcp: {{months: [5], start_local: "11:00", end_local: "13:00", trigger: warning,
           posture: curtail_interruptible, warning_stale_after_s: 600}}
prices: {{source: none}}
{mqtt}
service: {{cycle_s: 0.2, database: "{db}", metrics_port: null, restore_batch_size: 1000,
          restore_batch_interval_s: 0, verify_timeout_s: 2}}
"""
MINERS_KW = 24 * 3.25
TANKS_KW = 2 * 100.0
SIMULATED_KW = MINERS_KW + TANKS_KW  # controls (5 kW) have no driver and no simulator


def grid_site(
    tmp_path: Path, *, port: int | None = None, mqtt: str = "", tag: str = "a"
) -> SiteConfig:
    text = SITE.format(tag=tag, port=free_port(), db=tmp_path / "db.sqlite3", mqtt=mqtt)
    return parse_config(text, env={})


def message(clock: FakeClock, **fields: Any) -> bytes:
    return json.dumps({"issued_at": clock.now.isoformat(), "source": "qse-test", **fields}).encode()


def in_minutes(clock: FakeClock, minutes: float) -> str:
    return (clock.now + timedelta(minutes=minutes)).isoformat()


def grid_acks(service: Service) -> list[GridAck]:
    assert isinstance(service.outbox, MemoryOutbox)
    return [m for t, m in service.outbox.sent if t == "grid/ack" and isinstance(m, GridAck)]


def drawn_kw(sim: SimModbusSite) -> float:
    return sum(e.power_w(c) for e in sim.endpoints for c in range(1, e.profile.channels + 1)) / 1e3


def level_held(service: Service) -> EmergencyLevel | None:
    held, _ = service.snapshot.emergency
    return None if held is None else held.level


def audit_kinds(service: Service) -> list[str]:
    service.store.flush()  # what was handed to the writer thread is committed
    return [row.kind for row in service.store.audit_since(datetime(2000, 1, 1, tzinfo=UTC))]


Scenario = Callable[[SiteConfig, FakeClock, SimModbusSite], Awaitable[None]]


def on_site(tmp_path: Path, scenario: Scenario) -> None:
    async def main() -> None:
        config = grid_site(tmp_path)
        async with SimModbusSite(endpoints_for(config)) as sim:
            await scenario(config, FakeClock(), sim)

    asyncio.run(main())


async def started(config: SiteConfig, clock: FakeClock) -> Service:
    service = assemble(config, clock=clock)
    await service.shell.poll()
    return service


def test_eea2_curtails_interruptible_and_flexible_next_cycle_and_normal_restores(
    tmp_path: Path,
) -> None:
    async def scenario(config: SiteConfig, clock: FakeClock, sim: SimModbusSite) -> None:
        service = await started(config, clock)
        await service.shell.cycle()
        assert drawn_kw(sim) == pytest.approx(SIMULATED_KW)

        clock.leap(2)
        assert service.grid.emergency(message(clock, level="eea1")) == "accepted"
        assert service.wake.is_set()  # acts now, not at the next tick
        await service.shell.cycle()
        assert drawn_kw(sim) == pytest.approx(TANKS_KW)  # eea1: interruptible only

        clock.leap(2)
        service.wake.clear()
        assert service.grid.emergency(message(clock, level="eea2")) == "accepted"
        assert service.wake.is_set()
        report = await service.shell.cycle()
        assert drawn_kw(sim) == pytest.approx(0.0)  # eea2: interruptible and flexible
        tank = service.shell.fleet.index_of["tank-0001"]
        assert report.decision.rule[tank] == Rule.EMERGENCY
        assert "EEA2" in report.decision.setpoint("tank-0001").reason
        assert report.site_kw == pytest.approx(5.0)  # critical controls only
        shown = telemetry_message(service, clock.now)
        assert (shown.grid_emergency, shown.grid_emergency_expires_at) == ("eea2", None)

        clock.leap(60)
        assert service.grid.emergency(message(clock, level="normal")) == "accepted"
        await service.shell.cycle()
        assert drawn_kw(sim) == pytest.approx(SIMULATED_KW)
        assert telemetry_message(service, clock.now).grid_emergency == "normal"

        acks = grid_acks(service)
        assert [(a.topic, a.status) for a in acks] == [("grid/emergency", "accepted")] * 3
        assert "posture curtail_flexible" in acks[1].reason
        assert audit_kinds(service).count("grid") == 3
        await service.close()

    on_site(tmp_path, scenario)


def test_fourcp_warning_in_the_window_curtails_per_posture_then_expires(tmp_path: Path) -> None:
    async def scenario(config: SiteConfig, clock: FakeClock, sim: SimModbusSite) -> None:
        service = await started(config, clock)
        await service.shell.cycle()

        warning = message(clock, active=True, expires_at=in_minutes(clock, 5))
        assert service.grid.peak_warning(warning) == "accepted"
        assert service.wake.is_set()
        report = await service.shell.cycle()
        assert drawn_kw(sim) == pytest.approx(TANKS_KW)  # posture curtail_interruptible
        assert report.decision.rule[0] == Rule.FOURCP
        assert "curtail_interruptible" in grid_acks(service)[-1].reason
        assert telemetry_message(service, clock.now).fourcp_warning

        clock.leap(4 * 60)
        await service.shell.cycle()
        assert drawn_kw(sim) == pytest.approx(TANKS_KW)

        clock.leap(61)  # past expires_at
        await service.shell.cycle()
        assert drawn_kw(sim) == pytest.approx(SIMULATED_KW)
        assert "grid-expired" in audit_kinds(service)
        shown = telemetry_message(service, clock.now)
        assert (shown.fourcp_warning, shown.fourcp_warning_expires_at) == (False, None)

        # without expires_at: on until `active: false`...
        assert service.grid.peak_warning(message(clock, active=True)) == "accepted"
        await service.shell.cycle()
        assert drawn_kw(sim) == pytest.approx(TANKS_KW)
        clock.leap(60)
        assert service.grid.peak_warning(message(clock, active=False)) == "accepted"
        await service.shell.cycle()
        assert drawn_kw(sim) == pytest.approx(SIMULATED_KW)
        # ...or until warning_stale_after_s (600 s) after it was issued
        assert service.grid.peak_warning(message(clock, active=True)) == "accepted"
        await service.shell.cycle()
        assert drawn_kw(sim) == pytest.approx(TANKS_KW)
        clock.leap(601)
        await service.shell.cycle()
        assert drawn_kw(sim) == pytest.approx(SIMULATED_KW)
        assert not telemetry_message(service, clock.now).fourcp_warning
        await service.close()

    on_site(tmp_path, scenario)


def test_restart_keeps_an_active_emergency_and_honours_its_expiry(tmp_path: Path) -> None:
    async def scenario(config: SiteConfig, clock: FakeClock, sim: SimModbusSite) -> None:
        first = await started(config, clock)
        await first.shell.cycle()
        first.grid.emergency(message(clock, level="eea2"))  # no expiry: holds until changed
        await first.shell.cycle()
        assert drawn_kw(sim) == pytest.approx(0.0)
        first.store.flush()  # a crash after the commits reached the disk
        await first.pool.close()  # no orderly shutdown: the database is left as it is

        clock.leap(3600)
        second = await started(config, clock)
        held, until = second.snapshot.emergency
        assert held is not None
        assert (held.level, until) == (EmergencyLevel.EEA2, None)
        report = await second.shell.cycle()
        assert drawn_kw(sim) == pytest.approx(0.0)  # never restored in between
        assert np.all(report.decision.setpoint_kw[:-1] == 0.0)
        assert grid_acks(second) == []
        second.grid.emergency(message(clock, level="eea1", expires_at=in_minutes(clock, 10)))
        await second.shell.cycle()
        assert drawn_kw(sim) == pytest.approx(TANKS_KW)
        second.store.flush()
        await second.pool.close()

        clock.leap(11 * 60)  # eea1 lapses while the service is down
        third = await started(config, clock)
        assert third.snapshot.emergency == (None, None)
        await third.shell.cycle()
        assert drawn_kw(sim) == pytest.approx(SIMULATED_KW)
        assert telemetry_message(third, clock.now).grid_emergency == "normal"
        await third.close()

    on_site(tmp_path, scenario)


REJECTED: list[tuple[dict[str, Any] | bytes, str, str]] = [
    (b"{not json", "emergency", "bad JSON"),
    ({"level": "EEA2"}, "emergency", "level"),
    ({"level": "eea4"}, "emergency", "level"),
    ({"level": "eea2", "extra": 1}, "emergency", "extra"),
    ({"level": "normal", "expires_at": "+10"}, "emergency", "normal has no expires_at"),
    ({"level": "eea2", "expires_at": "-10"}, "emergency", "expires_at must be after issued_at"),
    ({"level": "eea2", "issued_at": "2024-05-08T17:00:00"}, "emergency", "timezone"),
    ({"level": "eea2", "issued_at": "-6"}, "emergency", "stale"),
    ({"level": "eea2", "issued_at": "+2"}, "emergency", "in the future"),
    ({"level": "eea2", "issued_at": "-4", "expires_at": "-1"}, "emergency", "expired"),
    ({"active": "yes"}, "4cp", "active"),
    ({"active": 1}, "4cp", "active"),
    ({"active": False, "expires_at": "+10"}, "4cp", "inactive warning has no expires_at"),
    ({"level": "eea2"}, "4cp", "active"),  # the emergency message on the 4CP topic
]


def _payload(clock: FakeClock, fields: dict[str, Any] | bytes) -> bytes:
    if isinstance(fields, bytes):
        return fields
    data = {"issued_at": clock.now.isoformat(), **fields}
    for key in ("issued_at", "expires_at"):
        value = data.get(key)
        if isinstance(value, str) and value[0] in "+-":  # minutes from now
            data[key] = in_minutes(clock, float(value))
    return json.dumps(data).encode()


def test_malformed_stale_and_superseded_grid_messages_are_rejected_with_a_reason(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    service = assemble(grid_site(tmp_path), clock=clock, drivers={})
    handlers = {"emergency": service.grid.emergency, "4cp": service.grid.peak_warning}
    for fields, topic, fragment in REJECTED:
        assert handlers[topic](_payload(clock, fields)) == "rejected", fields
        ack = grid_acks(service)[-1]
        assert (ack.topic, ack.status) == (f"grid/{topic}", "rejected")
        assert fragment in ack.reason, (fields, ack.reason)
    assert level_held(service) is None

    newer = message(clock, level="eea1")
    assert service.grid.emergency(newer) == "accepted"
    assert service.grid.emergency(newer) == "duplicate"  # QoS 1 redelivery: no change, no ack
    older = _payload(clock, {"level": "normal", "issued_at": "-1"})
    assert service.grid.emergency(older) == "rejected"
    assert "superseded" in grid_acks(service)[-1].reason
    assert level_held(service) is EmergencyLevel.EEA1
    assert len(grid_acks(service)) == len(REJECTED) + 2
    assert audit_kinds(service).count("grid-rejected") == len(REJECTED) + 1
    service.store.close()


def test_grid_messages_need_the_dispatch_signature_when_a_secret_is_set(tmp_path: Path) -> None:
    clock = FakeClock()
    config = grid_site(tmp_path, mqtt="mqtt: {hmac_secret: s3cret-key-of-thirty-two-bytes-or-more}")
    service = assemble(config, clock=clock, drivers={})
    body = {"level": "eea3", "issued_at": clock.now.isoformat(), "message_id": "g-1"}
    assert service.grid.emergency(json.dumps(body).encode()) == "rejected"
    assert "unsigned" in grid_acks(service)[-1].reason
    forged = {**body, "signature": sign(body, b"other", "grid-a:grid/emergency")}
    assert service.grid.emergency(json.dumps(forged).encode()) == "rejected"
    key = b"s3cret-key-of-thirty-two-bytes-or-more"
    elsewhere = {**body, "signature": sign(body, key, "grid-b:grid/emergency")}  # another site's
    assert service.grid.emergency(json.dumps(elsewhere).encode()) == "rejected"
    good = {**body, "signature": sign(body, key, "grid-a:grid/emergency")}
    assert service.grid.emergency(json.dumps(good).encode()) == "accepted"
    service.store.close()


def test_gridflex_run_takes_grid_messages_over_mqtt_and_shows_them_in_telemetry(
    mqtt_broker: Broker, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:6]
    mqtt = f"mqtt: {{host: {mqtt_broker.host}, port: {mqtt_broker.port}, client_id: svc-{tag}}}"
    config = grid_site(tmp_path, mqtt=mqtt, tag=tag)
    prefix = config.topic_prefix

    async def scenario() -> None:
        seen: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        client = MqttSession(MqttSettings(host=mqtt_broker.host, port=mqtt_broker.port,
                                          client_id=f"qse-{tag}"))  # fmt: skip
        client.subscribe(f"{prefix}/#", lambda topic, payload: seen.put_nowait((topic, payload)))
        await client.connect()
        await client.subscriptions_settled(5)

        async def next_on(suffix: str, test: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
            while True:
                topic, payload = await asyncio.wait_for(seen.get(), 10)
                if topic != f"{prefix}/{suffix}":
                    continue
                data: dict[str, Any] = json.loads(payload)
                if test(data):
                    return data

        def now_iso() -> str:
            return datetime.now(UTC).isoformat()

        async with SimModbusSite(endpoints_for(config)) as sim:
            stop = asyncio.Event()
            service = asyncio.create_task(run_service(config, stop))
            try:
                # its telemetry is out: its subscriptions, sent before, are in place
                first = await next_on("telemetry", lambda _: True)
                assert first["grid_emergency"] == "normal"
                eea2 = {"level": "eea2", "source": "qse-test", "issued_at": now_iso()}
                await client.publish(f"{prefix}/grid/emergency", json.dumps(eea2), qos=1)
                ack = await next_on("grid/ack", lambda _: True)
                assert (ack["topic"], ack["status"]) == ("grid/emergency", "accepted")
                shown = await next_on("telemetry", lambda t: t["grid_emergency"] == "eea2")
                TelemetryMessage.model_validate(shown)
                await client.publish(f"{prefix}/grid/4cp", '{"active": "yes"}', qos=1)
                ack = await next_on("grid/ack", lambda _: True)
                assert (ack["topic"], ack["status"]) == ("grid/4cp", "rejected")
                for _ in range(50):  # the cycle after the emergency has switched the site off
                    if drawn_kw(sim) == 0.0:
                        break
                    await asyncio.sleep(0.1)
                assert drawn_kw(sim) == 0.0
            finally:
                stop.set()
                await asyncio.wait_for(service, 10)
                await client.close()

    asyncio.run(scenario())
