"""One writer: the cycle owns the site's state, and nothing is lost, doubled or stalled.

Each case runs through `gridflex run` (a process, as systemd runs it), a Mosquitto of the test's
own and simulated Modbus PDUs in a third process, unless it says otherwise:
  - 25 messages whose handling fails, then a valid dispatch and a device's state: both arrive
    (the broker's in-flight window of 20 is never held);
  - a cycle that keeps failing backs off (it does not spin) and SIGTERM ends the service at once;
  - an ack stored while the broker is away is delivered once after it comes back, and no
    telemetry from the outage is replayed;
  - a signed dispatch rejected for its date and sent again is judged again, with an ack;
  - `restore` at SIGTERM during a live dispatch keeps the site under its ceiling, and the QSE is
    told `suspended` before `offline`;
  - a price change that moves no setpoint writes no per-device audit row.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pymodbus.client import ModbusTcpClient

from adapters.sim.modbus_server import SimModbusSite
from adapters.transport.mqtt_session import MqttSession, MqttSettings
from agent.app.assembly import assemble
from agent.app.runner import run_service
from agent.app.simsite import endpoints_for
from agent.config import parse_config
from agent.service.checks import sign
from tests.adapters.devices.peers import echoing_device
from tests.helpers.mqtt_watch import Watcher, ack, now_iso
from tests.helpers.peers import Broker, free_port
from tests.helpers.service_process import modbus_site, start_service
from tests.helpers.shell import price
from tests.service.site import FakeClock, site_config

HMAC = "the-site-key-of-at-least-thirty-two-bytes"
PDU_KW = 3.25
FIRST_HOST = "127.0.13.1"

SITE = """
site: {{id: ow-{tag}, timezone: America/Chicago}}
classes:
  miners: {{priority: interruptible, economics: {{kind: fixed, value_usd_per_mwh: 90}}}}
  cooling: {{priority: flexible, economics: {{kind: fixed, value_usd_per_mwh: 400}}}}
devices:
  - {{id: pdu, kind: pdu_outlet, class: miners, count: 48, rated_kw: {pdu_kw}, min_on_s: 0,
     min_off_s: 0, driver: {{type: modbus, host: {first_host}, port: {modbus_port},
     profile: rack_pdu_switched, channels_per_host: 24, timeout_s: 0.5}}}}
{extra_devices}
policy: {{min_dwell_s: 0, stale_posture: run_all}}
prices: {{source: none}}
mqtt: {{host: 127.0.0.1, port: {mqtt_port}, client_id: ow-{tag}, topic_prefix: {prefix},
       {mqtt_extra}}}
service: {{cycle_s: 0.5, database: "{db}", metrics_port: null, restore_batch_size: 12,
          restore_batch_interval_s: 0.2, verify_timeout_s: 2, shutdown_posture: {posture}}}
"""


def _site(tmp_path: Path, broker: Broker, modbus_port: int, **fields: str) -> tuple[Path, str]:
    tag = uuid.uuid4().hex[:6]
    prefix = f"gridflex/ow-{tag}"
    values = {"extra_devices": "", "mqtt_extra": "", "posture": "hold", **fields}
    text = SITE.format(tag=tag, prefix=prefix, pdu_kw=PDU_KW, first_host=FIRST_HOST,
                       modbus_port=modbus_port, mqtt_port=broker.port,
                       db=tmp_path / "gridflex.sqlite3", **values)  # fmt: skip
    path = tmp_path / "site.yaml"
    path.write_text(text)
    return path, prefix


def _signed(body: dict[str, object], site_id: str) -> dict[str, object]:
    body = {**body, "message_id": uuid.uuid4().hex}
    return {**body, "signature": sign(body, HMAC.encode(), f"{site_id}:dispatch")}


def _outlets_on(port: int) -> int:
    """How many of the 48 simulated outlets are switched on, read from the PDUs themselves."""
    on = 0
    for pdu in range(2):
        host = f"127.0.13.{1 + pdu}"
        client = ModbusTcpClient(host, port=port, timeout=2)
        assert client.connect()
        try:
            reply = client.read_coils(0, count=24, device_id=1)
            on += sum(reply.bits[:24])
        finally:
            client.close()
    return on


def _stop(service: Any) -> None:
    if service.poll() is None:
        service.kill()
        service.wait(timeout=10)


# -- 25 failing messages, then a dispatch and a device's state ---------------------------------
CHILLER = """  - {{id: chiller, kind: cooling, class: cooling, rated_kw: 20, min_kw: 5,
     control: percent, driver: {{type: mqtt, command_topic: "{base}/set",
     state_topic: "{base}/state", echo_timeout_s: 3}}}}"""


def test_failing_messages_never_hold_the_window_a_dispatch_and_a_device_state_still_arrive(
    tmp_path: Path, own_mqtt_broker: Broker
) -> None:
    base = f"test/{uuid.uuid4().hex[:6]}/chiller"
    deep = b"[" * 5000 + b"]" * 5000  # json.loads: RecursionError
    with modbus_site(48, FIRST_HOST) as port:
        config, prefix = _site(tmp_path, own_mqtt_broker, port,
                               extra_devices=CHILLER.format(base=base))  # fmt: skip

        async def main() -> None:
            name = f"chiller-{uuid.uuid4().hex[:6]}"
            device = MqttSession(
                MqttSettings(host=own_mqtt_broker.host, port=own_mqtt_broker.port, client_id=name)
            )
            commands: list[dict[str, Any]] = []
            device.subscribe(f"{base}/set", lambda _t, p: commands.append(json.loads(p)))
            await device.connect()
            await echoing_device(device, f"{base}/set", f"{base}/state")
            watcher = Watcher(own_mqtt_broker, prefix)
            service = start_service(config, tmp_path / "run.log")
            try:
                await asyncio.to_thread(watcher.wait_for, "status", lambda p: p == "online")
                await asyncio.to_thread(
                    watcher.wait_for,
                    "telemetry",
                    lambda p: json.loads(p)["devices_available"] == 49,
                )
                # 25 device states that fail their handler, 25 dispatches that are junk
                for _ in range(25):
                    await device.publish(f"{base}/state", deep)
                    watcher.send("dispatch", b"{not json")
                watcher.drain()
                sent = now_iso()
                # 10 kW: every miner off and the chiller throttled, which needs its echo
                watcher.send("dispatch", {"event_id": "ow-1", "kind": "limit", "target_kw": 10,
                                          "issued_at": sent})  # fmt: skip
                await asyncio.to_thread(watcher.wait_for, "dispatch/ack",
                                        ack("ow-1", "accepted"), 10)  # fmt: skip
                await asyncio.to_thread(watcher.wait_for, "dispatch/ack",
                                        ack("ow-1", "active"), 15)  # fmt: skip
                # the chiller was commanded down and its echo heard: available, obeying
                assert commands
                assert commands[-1]["kw"] <= 10
                telemetry = json.loads(await asyncio.to_thread(
                    watcher.wait_for, "telemetry", lambda p: True))  # fmt: skip
                assert "chiller" not in telemetry["unavailable"]
                service.send_signal(signal.SIGTERM)
                assert await asyncio.to_thread(service.wait, 30) == 0
            finally:
                _stop(service)
                watcher.close()
                await device.close()

        asyncio.run(main())


# -- a failing cycle backs off and SIGTERM ends it ----------------------------------------------
def test_a_cycle_that_keeps_failing_backs_off_yields_and_stops_within_a_second_of_sigterm(
    tmp_path: Path, own_mqtt_broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process (the failure is injected into decide()), with the real runner and its real
    SIGTERM handler: after one good cycle in which a device failed (a follow-up is due), every
    decide() raises."""
    import agent.service.cycle as cycle_module

    real_decide = cycle_module.decide
    calls = {"n": 0}

    def failing_decide(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            return real_decide(*args, **kwargs)
        raise RuntimeError("a bug in the engine")

    monkeypatch.setattr(cycle_module, "decide", failing_decide)
    unreachable = free_port()  # a PDU nothing answers for: the first cycle fails it
    with modbus_site(48, FIRST_HOST) as port:
        extra = ("  - {id: lost, kind: pdu_outlet, class: miners, rated_kw: 3, driver: {type: "
                 f"modbus, host: 127.0.13.9, port: {unreachable}, profile: rack_pdu_switched, "
                 "timeout_s: 0.2}}")  # fmt: skip
        path, _ = _site(tmp_path, own_mqtt_broker, port, extra_devices=extra)
        config = parse_config(path.read_text(), env={})

        async def main() -> float:
            stop = asyncio.Event()
            task = asyncio.create_task(run_service(config, stop))
            await asyncio.sleep(3.0)
            assert not task.done()
            assert calls["n"] <= 12, calls  # 0.5 + 1 + 2 s of backoff: a handful, never a spin
            sent = time.monotonic()
            signal.raise_signal(signal.SIGTERM)  # the handler run_service installed
            await asyncio.wait_for(task, 10)
            return time.monotonic() - sent

        took_s = asyncio.run(main())
    assert took_s < 1.0, took_s
    assert calls["n"] >= 2


# -- an outage: one ack, delivered once; no telemetry replayed -----------------------------------
@pytest.mark.parametrize("down_s", [15.0, pytest.param(60.0, marks=pytest.mark.slow)])
def test_an_ack_stored_during_an_outage_is_delivered_once_and_no_telemetry_is_replayed(
    tmp_path: Path, own_mqtt_broker: Broker, down_s: float
) -> None:
    with modbus_site(48, FIRST_HOST) as port:
        config, prefix = _site(tmp_path, own_mqtt_broker, port)
        watcher = Watcher(own_mqtt_broker, prefix, persistent=True)
        service = start_service(config, tmp_path / "run.log")
        try:
            watcher.wait_for("status", lambda p: p == "online")
            watcher.send("dispatch", {"event_id": "ow-2", "kind": "limit", "target_kw": 100,
                                      "issued_at": now_iso(),
                                      "end": (datetime.now(UTC) + timedelta(seconds=3)).isoformat()
                                      })  # fmt: skip
            watcher.wait_for("dispatch/ack", ack("ow-2", "active"))
            own_mqtt_broker.stop()  # the event ends (completed) while the broker is away
            went_down = datetime.now(UTC)
            time.sleep(down_s)
            own_mqtt_broker.start()
            came_back = datetime.now(UTC)
            watcher.wait_for("dispatch/ack", ack("ow-2", "completed"), timeout_s=30)
            time.sleep(3.0)
            later = watcher.drain()
            copies = [p for t, p in later if t.endswith("/dispatch/ack") and "ow-2" in p]
            assert copies == [], copies  # the one completed ack, once
            stale = [json.loads(p) for t, p in later if t.endswith("/telemetry")]
            from_outage = [t for t in stale
                           if went_down < datetime.fromisoformat(t["at"]) < came_back]  # fmt: skip
            assert from_outage == []  # telemetry is state: nothing queued while away
            service.send_signal(signal.SIGTERM)
            assert service.wait(timeout=30) == 0
        finally:
            _stop(service)
            watcher.close()


# -- replay memory and the store agree ----------------------------------------------------------
def test_a_signed_dispatch_rejected_for_its_date_is_judged_again_when_sent_again(
    tmp_path: Path, own_mqtt_broker: Broker
) -> None:
    with modbus_site(48, FIRST_HOST) as port:
        config, prefix = _site(tmp_path, own_mqtt_broker, port,
                               mqtt_extra=f"hmac_secret: {HMAC}")  # fmt: skip
        watcher = Watcher(own_mqtt_broker, prefix)
        service = start_service(config, tmp_path / "run.log")
        try:
            watcher.wait_for("status", lambda p: p == "online")
            far = (datetime.now(UTC) + timedelta(days=9)).isoformat()
            message = _signed({"event_id": "ow-3", "kind": "limit", "target_kw": 50,
                               "start": far, "issued_at": now_iso()},
                              prefix.removeprefix("gridflex/"))  # fmt: skip
            for _ in range(2):  # the sender did not see the first answer and sends it again
                watcher.send("dispatch", message)
                rejected = json.loads(watcher.wait_for("dispatch/ack", ack("ow-3", "rejected")))
                assert "future-dated" in rejected["reason"]
            service.send_signal(signal.SIGTERM)
            assert service.wait(timeout=30) == 0
        finally:
            _stop(service)
            watcher.close()
        with sqlite3.connect(tmp_path / "gridflex.sqlite3") as db:
            seen = db.execute("SELECT message_id FROM seen_messages").fetchall()
        assert (message["message_id"],) not in seen  # nothing taken: nothing to remember


# -- restore through decide() -------------------------------------------------------------------
def test_restore_at_sigterm_keeps_a_live_dispatch_and_the_qse_hears_suspended_before_offline(
    tmp_path: Path, own_mqtt_broker: Broker
) -> None:
    with modbus_site(48, FIRST_HOST) as port:
        config, prefix = _site(tmp_path, own_mqtt_broker, port, posture="restore")
        watcher = Watcher(own_mqtt_broker, prefix)
        service = start_service(config, tmp_path / "run.log")
        try:
            watcher.wait_for("status", lambda p: p == "online")
            watcher.send("dispatch", {"event_id": "ow-4", "kind": "limit", "target_kw": 60,
                                      "issued_at": now_iso()})  # fmt: skip
            watcher.wait_for("dispatch/ack", ack("ow-4", "active"))
            assert _outlets_on(port) * PDU_KW <= 60
            watcher.drain()
            service.send_signal(signal.SIGTERM)
            assert service.wait(timeout=60) == 0
            said = [(t.rsplit("/", 1)[-1], p) for t, p in watcher.drain()
                    if t.endswith(("/dispatch/ack", "/status"))]  # fmt: skip
        finally:
            _stop(service)
            watcher.close()
        assert _outlets_on(port) * PDU_KW <= 60  # restored within the ceiling, not to rated
        kinds = [p if t == "status" else json.loads(p)["status"] for t, p in said]
        assert "suspended" in kinds
        assert kinds.index("suspended") < kinds.index("offline")
        suspended = next(json.loads(p) for t, p in said if t == "ack" and "suspended" in p)
        assert suspended["event_id"] == "ow-4"
        assert "restored within the 60.0 kW ceiling" in suspended["reason"]


# -- audit volume ------------------------------------------------------------------------------
def test_a_price_change_that_moves_no_setpoint_writes_no_per_device_audit_row(
    tmp_path: Path,
) -> None:
    """The shell cycle by cycle on a stepped clock, over simulated Modbus PDUs on loopback."""

    async def main() -> tuple[int, int, int]:
        clock = FakeClock()
        config = site_config(tmp_path / "db.sqlite3", free_port())
        async with SimModbusSite(endpoints_for(config)):
            service = assemble(config, clock=clock, monotonic=clock.monotonic)
            service.snapshot(price(clock, 20.0))
            await service.shell.cycle()  # the first cycle: every device's row once

            def rows() -> int:
                service.store.flush()
                since = clock.now - timedelta(days=1)
                return sum(1 for r in service.store.audit_since(since, limit=100_000)
                           if r.kind == "setpoint")  # fmt: skip

            first = rows()
            for usd in (21.0, 35.5, 60.25):  # every class still runs: no setpoint moves
                clock.leap(900)
                service.snapshot(price(clock, usd))
                await service.shell.cycle()
            quiet = rows() - first
            clock.leap(900)
            service.snapshot(price(clock, 100.0))  # above the miners' 90: 48 PDUs stop
            await service.shell.cycle()
            moved = rows() - first - quiet
            await service.close()
            return first, quiet, moved

    first, quiet, moved = asyncio.run(main())
    assert first > 48
    assert quiet == 0
    assert moved == 48


def test_the_cycle_is_the_only_writer_of_device_state(tmp_path: Path) -> None:
    """Polls only queue what they read; a cycle takes it at its start. Between the two, device
    state does not change, whatever the poll saw."""

    async def main() -> None:
        clock = FakeClock()
        config = site_config(tmp_path / "db.sqlite3", free_port())
        async with SimModbusSite(endpoints_for(config)) as sim:
            service = assemble(config, clock=clock, monotonic=clock.monotonic)
            service.snapshot(price(clock, 100.0))  # above the miners' 90: the PDUs off
            await service.shell.cycle()
            bank = service.shell.devices
            sim.endpoints[0].stuck_channels = frozenset(range(1, 25))  # relays close again
            clock.leap(2)
            await bank.poll()  # the service's poller: it only queues what it read
            index = service.shell.fleet.index_of["pdu-0001"]
            assert bank.obeying[index]  # nothing changed outside the cycle
            await service.shell.cycle()
            assert not bank.obeying[index]  # the cycle took the reading: drawing against off
            await service.close()

    asyncio.run(main())
