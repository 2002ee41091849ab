"""Devices with real dynamics: power that trails its relay, miners that spin down, outlets that
ignore a command, a PDU that reboots mid-event. The real shell over simulated Modbus devices and
LuxOS miners on loopback; devices settle in real time, so the tests sleep as the physics takes."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from adapters.devices.gpu_nvml import GpuNode, NvmlGpus
from adapters.sim.miners import FakeMinerFleet
from adapters.sim.modbus_server import SimModbusSite
from adapters.transport.mqtt_session import MqttSession, MqttSettings
from agent.app.assembly import MemoryOutbox, Service, assemble
from agent.app.commands.node import NodeLink, run_node
from agent.app.simsite import endpoints_for
from agent.config import parse_config
from tests.adapters.devices.peers import FakeNvml, echoing_device
from tests.helpers.peers import free_port
from tests.helpers.shell import acks, dispatch, price
from tests.service.site import FakeClock, site_config

OUTLET_KW = 3.25


async def _cycles(
    service: Service, clock: FakeClock, seconds: float, every_s: float = 0.25
) -> list[int]:
    """Poll and cycle for `seconds` of real time; the outlets commanded in each cycle."""
    commanded = []
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        await service.shell.poll()
        report = await service.shell.cycle()
        commanded.append(sum(1 for d in report.commanded if d.startswith("pdu")))
        clock.leap(2)
        await asyncio.sleep(every_s)
    return commanded


def _outlets_on(service: Service) -> int:
    fleet = service.shell.fleet
    idx = [i for i, d in enumerate(fleet.device_ids) if d.startswith("pdu")]
    return int((service.shell.applied_kw[idx] > 0).sum())


def test_power_trailing_the_relay_is_settling_not_failure(tmp_path: Path) -> None:
    async def main() -> None:
        clock = FakeClock()
        config = site_config(tmp_path / "db.sqlite3", free_port(), outlets=96, settle_s=2.0)
        endpoints = endpoints_for(config)
        for endpoint in endpoints:
            endpoint.power_lag_s = 1.0  # outlet metering trails the relay by a second
        async with SimModbusSite(endpoints):
            outbox = MemoryOutbox()
            service = assemble(config, clock=clock, outbox=outbox)
            try:
                service.snapshot(price(clock, 20.0))
                await _cycles(service, clock, 0.5)
                # half of the 96 outlets: 205 kW of tanks and controls + 48 outlets
                limit_kw = 205.0 + 48 * OUTLET_KW
                event = dispatch(clock, "lag-1", kind="limit", target_kw=limit_kw)
                assert service.intake.dispatch(event) == "accepted"
                commanded = await _cycles(service, clock, 3.0)
                assert commanded[0] == 48  # the half that had to go, at once
                assert sum(commanded[1:]) == 0  # and nothing switched back and forth after
                assert _outlets_on(service) == 48
                assert service.shell.devices.obeying.all()
                assert service.shell.available.all()
                assert acks(outbox, "lag-1")[-1].status == "active"
            finally:
                await service.close()

    asyncio.run(main())


MINER_SITE = """
site: {{id: spin}}
classes:
  miners: {{priority: interruptible, economics: {{kind: fixed, value_usd_per_mwh: 90}}}}
  inference: {{priority: protected}}
devices:
  - {{id: miner, kind: miner, class: miners, count: 4, rated_kw: 3.25, min_on_s: 0, min_off_s: 0,
     driver: {{type: miner, host: 127.0.10.1, port: {port}, timeout_s: 1, settle_s: 10}}}}
  - {{id: gpu, kind: gpu, class: inference, count: 2, rated_kw: 10, min_kw: 4,
     control: power_limit, driver: {{type: simulated}}}}
prices: {{source: none}}
service: {{database: "{db}", metrics_port: null, verify_timeout_s: 2}}
"""


def test_a_slow_spin_down_under_a_tight_ceiling_never_touches_protected_load(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        clock = FakeClock()
        port = free_port()
        config = parse_config(MINER_SITE.format(port=port, db=tmp_path / "db.sqlite3"), env={})
        async with FakeMinerFleet(4, first_host="127.0.10.1", port=port) as fleet:
            for miner in fleet.miners:
                miner.spin_down_s = 2.0  # hashboards and fans wind down over two seconds
            outbox = MemoryOutbox()
            service = assemble(config, clock=clock, outbox=outbox)
            try:
                service.snapshot(price(clock, 20.0))
                await _cycles(service, clock, 0.3)
                # 20 kW of GPUs under a 20 kW ceiling: every miner must go
                assert (
                    service.intake.dispatch(dispatch(clock, "tight", kind="limit", target_kw=20.0))
                    == "accepted"
                )
                gpus = [service.shell.fleet.index_of[f"gpu-000{k}"] for k in (1, 2)]
                until = time.monotonic() + 3.0
                while time.monotonic() < until:
                    await service.shell.poll()
                    report = await service.shell.cycle()
                    assert (report.decision.setpoint_kw[gpus] == 10.0).all()  # untouched
                    clock.leap(2)
                    await asyncio.sleep(0.2)
                assert service.shell.devices.obeying.all()
                assert service.shell.available.all()
                assert all(m.sleeping and m.power_w == 0.0 for m in fleet.miners)
                assert acks(outbox, "tight")[-1].status == "active"
            finally:
                await service.close()

    asyncio.run(main())


def test_an_outlet_that_ignores_its_command_is_resent_with_backoff_and_recovers(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        clock = FakeClock()
        config = site_config(tmp_path / "db.sqlite3", free_port(), settle_s=0.3)
        async with SimModbusSite(endpoints_for(config)) as sim:
            service = assemble(config, clock=clock)
            try:
                service.snapshot(price(clock, 20.0))
                await _cycles(service, clock, 0.3)
                sim.endpoints[0].stuck_channels = frozenset({3})  # pdu-0003 keeps drawing
                limit_kw = 205.0 + 24 * OUTLET_KW
                service.intake.dispatch(dispatch(clock, "stuck", kind="limit", target_kw=limit_kw))
                await service.shell.poll()
                await service.shell.cycle()  # the first command
                await asyncio.sleep(0.4)  # past its settle window
                await service.shell.poll()
                stuck = service.shell.fleet.index_of["pdu-0003"]
                assert not service.shell.devices.obeying[stuck]
                resent = await service.shell.cycle()
                assert "pdu-0003" in resent.commanded  # re-sent at once
                assert service.shell.site_kw() <= limit_kw * 1.005  # another outlet went for it
                again = await service.shell.cycle()
                assert "pdu-0003" not in again.commanded  # then only after its backoff
                sim.endpoints[0].stuck_channels = frozenset()
                await service.shell.poll()
                assert service.shell.devices.obeying[stuck]  # it obeys again
            finally:
                await service.close()

    asyncio.run(main())


def test_a_pdu_that_reboots_mid_event_is_commanded_again(tmp_path: Path) -> None:
    async def main() -> None:
        clock = FakeClock()
        config = site_config(tmp_path / "db.sqlite3", free_port(), settle_s=0.3)
        async with SimModbusSite(endpoints_for(config)) as sim:
            outbox = MemoryOutbox()
            service = assemble(config, clock=clock, outbox=outbox)
            try:
                service.snapshot(price(clock, 20.0))
                await _cycles(service, clock, 0.3)
                limit_kw = 205.0 + 24 * OUTLET_KW
                service.intake.dispatch(dispatch(clock, "boot", kind="limit", target_kw=limit_kw))
                await _cycles(service, clock, 0.8)
                off = [c for c in range(1, 25) if not sim.endpoints[0].is_on(c)] + [
                    c for c in range(1, 25) if not sim.endpoints[1].is_on(c)
                ]
                assert len(off) == 24
                for endpoint in sim.endpoints[:2]:
                    endpoint.reboot()  # power cycle: every relay closed again
                await _cycles(service, clock, 1.5)
                closed = sum(e.is_on(c) for e in sim.endpoints[:2] for c in range(1, 25))
                assert closed == 24  # the shed outlets were opened again
                assert np.asarray(service.shell.devices.obeying).all()
                assert acks(outbox, "boot")[-1].status == "active"
            finally:
                await service.close()

    asyncio.run(main())


# echo timeouts well above the 0.3 s state interval: on a loaded 2-core runner an echo can take
# a second or two, and a device failed for that would be planned around (not what is tested)
LAGGING_SITE = """
site: {{id: lag-{tag}}}
classes:
  cooling: {{priority: flexible, economics: {{kind: fixed, value_usd_per_mwh: 60}}}}
  batch: {{priority: flexible, economics: {{kind: fixed, value_usd_per_mwh: 70}}}}
  inference: {{priority: protected}}
devices:
  - {{id: chiller, kind: cooling, class: cooling, rated_kw: 18, min_on_s: 0, min_off_s: 0,
     driver: {{type: mqtt, command_topic: "{base}/set", state_topic: "{base}/state",
     echo_timeout_s: 5, settle_s: 4}}}}
  - {{id: batch-gpu, kind: gpu, class: batch, rated_kw: 1.4, min_kw: 0.4, control: power_limit,
     min_on_s: 0, min_off_s: 0,
     driver: {{type: gpu_node, node_id: "node-{tag}", echo_timeout_s: 5, settle_s: 4}}}}
  - {{id: gpu, kind: gpu, class: inference, count: 2, rated_kw: 10, min_kw: 4,
     control: power_limit, driver: {{type: simulated}}}}
policy: {{min_dwell_s: 0, hysteresis_usd_per_mwh: 0}}
prices: {{source: none}}
mqtt: {{host: {host}, port: {port}}}
service: {{database: "{db}", metrics_port: null, verify_timeout_s: 3}}
"""


def test_mqtt_and_gpu_devices_whose_power_lags_settle_without_touching_protected_load(
    tmp_path: Path, mqtt_broker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chiller over MQTT whose power follows its command 2 s later, and a GPU server whose board
    power follows a new cap 2 s later (NVML at its functions), under a ceiling that leaves
    just the protected GPUs and the server's floor: both settle, neither is failed, and the
    protected GPUs keep every kW."""
    nvml = FakeNvml(monkeypatch, power_lag_s=2.0)
    tag = uuid.uuid4().hex[:6]
    base = f"test/{tag}/chiller"
    config = parse_config(LAGGING_SITE.format(tag=tag, base=base, host=mqtt_broker.host,
                                              port=mqtt_broker.port, db=tmp_path / "db.sqlite3"),
                          env={})  # fmt: skip

    def session(name: str) -> MqttSession:
        return MqttSession(MqttSettings(host=mqtt_broker.host, port=mqtt_broker.port,
                                        client_id=f"{name}-{tag}"))  # fmt: skip

    async def main() -> None:
        clock = FakeClock()
        agent, chiller, node = session("agent"), session("chiller"), session("node")
        async with contextlib.AsyncExitStack() as stack:
            for peer in (agent, chiller, node):
                await peer.connect()
                stack.push_async_callback(peer.close)
            await echoing_device(chiller, f"{base}/set", f"{base}/state", power_lag_s=2.0)
            stop = asyncio.Event()
            serving = asyncio.create_task(run_node(f"node-{tag}", GpuNode(f"node-{tag}",
                                          NvmlGpus(f"node-{tag}")), node,
                                          publish_interval_s=0.3, stop=stop,
                                          link=NodeLink(prefix=config.topic_prefix)))  # fmt: skip
            stack.push_async_callback(asyncio.wait_for, serving, 2)
            stack.callback(stop.set)
            outbox = MemoryOutbox()
            service = assemble(config, clock=clock, outbox=outbox, mqtt_session=agent)
            stack.push_async_callback(service.close)
            await agent.subscriptions_settled()
            service.snapshot(price(clock, 20.0))
            until = time.monotonic() + 1.5
            while time.monotonic() < until:  # everything on and measured at full draw
                await service.shell.poll()
                await service.shell.cycle()
                await asyncio.sleep(0.2)
            event = dispatch(clock, "lag-mqtt", kind="limit", target_kw=20.4)
            assert service.intake.dispatch(event) == "accepted"
            gpus = [service.shell.fleet.index_of[f"gpu-000{k}"] for k in (1, 2)]
            until = time.monotonic() + 4.0
            while time.monotonic() < until:
                await service.shell.poll()
                report = await service.shell.cycle()
                assert (report.decision.setpoint_kw[gpus] == 10.0).all()  # protected: untouched
                assert service.shell.available.all()  # settling is not failing
                clock.leap(2)
                await asyncio.sleep(0.2)
            assert service.shell.devices.obeying.all()
            assert nvml.limits_mw == [200_000, 200_000]
            assert acks(outbox, "lag-mqtt")[-1].status == "active"

    asyncio.run(main())
