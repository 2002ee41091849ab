"""Every driver type of the site file wired into the service: one site mixing Modbus PDUs, LuxOS
miners (fake miners on 127.0.x.y), an MQTT chiller echoing its state and a GPU server running the
real `gridflex node` logic (NVML replaced at its functions), all over loopback and the session's
Mosquitto. A dispatch arrives over MQTT, the shell applies it to each kind and verifies it; the
miners' drift is re-sent, a lying miner is planned around, and the release restores in batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from adapters.devices.gpu_nvml import GpuNode, NvmlGpus
from adapters.sim.miners import FakeMinerFleet
from adapters.sim.modbus_server import SimModbusSite
from adapters.transport.mqtt_session import MqttSession, MqttSettings
from agent.app.assembly import MemoryOutbox, Service, assemble
from agent.app.commands.node import NodeLink, run_node
from agent.app.mqtt_link import MqttLink
from agent.app.runner import run_service
from agent.app.simsite import endpoints_for
from agent.cli import main as cli_main
from agent.config import SiteConfig, parse_config
from agent.service.messages import DispatchAck
from tests.adapters.devices.peers import FakeNvml, echoing_device
from tests.helpers.peers import Broker, free_port
from tests.service.site import FakeClock

SITE = """
site: {{id: mix-{tag}, timezone: America/Chicago}}
classes:
  pdus: {{priority: interruptible, economics: {{kind: fixed, value_usd_per_mwh: 90}}}}
  miners: {{priority: interruptible, economics: {{kind: fixed, value_usd_per_mwh: 95}}}}
  cooling: {{priority: flexible, economics: {{kind: fixed, value_usd_per_mwh: 400}}}}
  inference: {{priority: flexible, economics: {{kind: fixed, value_usd_per_mwh: 500}}}}
  controls: {{priority: critical}}
devices:
  - {{id: pdu, kind: pdu_outlet, class: pdus, count: 24, rated_kw: 3.25, min_on_s: 0,
     min_off_s: 0, driver: {{type: modbus, host: 127.0.8.1, port: {modbus_port},
     profile: rack_pdu_switched, channels_per_host: 24, timeout_s: 0.5}}}}
  - {{id: miner, kind: miner, class: miners, count: 4, rated_kw: 3.25, min_kw: 2.0,
     control: power_limit, min_on_s: 0, min_off_s: 0,
     driver: {{type: miner, host: 127.0.9.1, port: {miner_port}, timeout_s: 1, settle_s: 0}}}}
  - {{id: chiller, kind: cooling, class: cooling, rated_kw: 20, min_kw: 5, control: power_limit,
     min_on_s: 0, min_off_s: 0, driver: {{type: mqtt, command_topic: "{base}/chiller/set",
     state_topic: "{base}/chiller/state", echo_timeout_s: 3}}}}
  - {{id: gpu, kind: gpu, class: inference, rated_kw: 1.4, min_kw: 0.4, control: power_limit,
     min_on_s: 0, min_off_s: 0,
     driver: {{type: gpu_node, node_id: "{node_id}", echo_timeout_s: 3}}}}
  - {{id: controls, kind: other, class: controls, rated_kw: 5}}
policy: {{hysteresis_usd_per_mwh: 0, min_dwell_s: 0}}
prices: {{source: none}}
{mqtt}
service: {{cycle_s: 0.2, database: "{db}", metrics_port: null, restore_batch_size: 10,
          restore_batch_interval_s: 5, verify_timeout_s: 4}}
"""
MINERS = [f"miner-{k:04d}" for k in range(1, 5)]


def _site(tmp_path: Path, broker: Broker | None, tag: str, miner_port: int) -> SiteConfig:
    mqtt = "" if broker is None else f"mqtt: {{host: {broker.host}, port: {broker.port}}}"
    text = SITE.format(tag=tag, modbus_port=free_port(), miner_port=miner_port,
                       base=f"test/{tag}", node_id=f"gpu-{tag}", mqtt=mqtt,
                       db=tmp_path / "db.sqlite3")  # fmt: skip
    return parse_config(text, env={})


def _session(broker: Broker, name: str) -> MqttSession:
    client_id = f"{name}-{uuid.uuid4().hex[:6]}"
    return MqttSession(MqttSettings(host=broker.host, port=broker.port, client_id=client_id))


def _acks(outbox: MemoryOutbox, event_id: str) -> list[str]:
    acks = [m for t, m in outbox.sent if t == "dispatch/ack" and isinstance(m, DispatchAck)]
    return [ack.status for ack in acks if ack.event_id == event_id]


@dataclass
class Peers:
    """The site's devices and people, each a real peer on loopback."""

    sim: SimModbusSite
    miners: FakeMinerFleet
    nvml: FakeNvml
    operator: MqttSession  # the QSE, sending dispatch over MQTT
    dispatched: asyncio.Event


def test_a_dispatch_is_applied_to_every_driver_type_and_verified(
    mqtt_broker: Broker, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    nvml = FakeNvml(monkeypatch)
    tag, miner_port = uuid.uuid4().hex[:6], free_port()
    config = _site(tmp_path, mqtt_broker, tag, miner_port)
    assert config.mqtt is not None
    mqtt_config, node_id, base = config.mqtt, f"gpu-{tag}", f"test/{tag}"

    async def scenario() -> None:
        clock, outbox = FakeClock(), MemoryOutbox()
        link = MqttLink(mqtt_config, config.topic_prefix, f"svc-{tag}")
        device, node, operator = (_session(mqtt_broker, n) for n in ("chiller", "node", "qse"))
        async with contextlib.AsyncExitStack() as stack:
            for session in (device, node, operator):
                await session.connect()
                stack.push_async_callback(session.close)
            await echoing_device(device, f"{base}/chiller/set", f"{base}/chiller/state")
            stop = asyncio.Event()
            gpu_node = GpuNode(node_id, NvmlGpus(node_id))
            serving = asyncio.create_task(
                run_node(
                    node_id,
                    gpu_node,
                    node,
                    publish_interval_s=0.5,
                    stop=stop,
                    link=NodeLink(prefix=config.topic_prefix),
                )
            )
            stack.push_async_callback(asyncio.wait_for, serving, 2)
            stack.callback(stop.set)
            sim = await stack.enter_async_context(SimModbusSite(endpoints_for(config)))
            miners = await stack.enter_async_context(
                FakeMinerFleet(4, first_host="127.0.9.1", port=miner_port)
            )
            service = assemble(config, clock=clock, outbox=outbox, mqtt_session=link.session)
            stack.push_async_callback(service.close)
            peers = Peers(sim, miners, nvml, operator, asyncio.Event())

            def on_dispatch(payload: bytes) -> None:
                service.intake.dispatch(payload)
                peers.dispatched.set()

            link.on("dispatch", on_dispatch)
            await link.start()
            stack.push_async_callback(link.stop)
            await _dispatch_release_drift(service, clock, outbox, peers)

    asyncio.run(scenario())


async def _dispatch_release_drift(
    service: Service, clock: FakeClock, outbox: MemoryOutbox, peers: Peers
) -> None:
    shell, miners, nvml = service.shell, peers.miners, peers.nvml
    index = shell.fleet.index_of
    await shell.poll()
    first = await shell.cycle()  # every setpoint asserted: everything runs at rated
    assert not first.failed, first.failed
    assert not any(m.sleeping for m in miners.miners)
    assert nvml.limits_mw == [700_000, 700_000]
    assert shell.measured_kw[index["chiller"]] == pytest.approx(20.0)

    # the QSE's dispatch arrives over MQTT: a 6 kW ceiling sheds every kind at once, in merit
    # order: PDUs, miners and the chiller off (5 kW is its floor), the GPU node to what is left
    message = {"event_id": "ers-1", "kind": "limit", "target_kw": 6.0,
               "issued_at": clock.now.isoformat()}  # fmt: skip
    await peers.operator.publish(f"{service.config.topic_prefix}/dispatch", json.dumps(message))
    await asyncio.wait_for(peers.dispatched.wait(), 5)
    report = await shell.cycle()
    assert not report.failed, report.failed
    endpoint = peers.sim.endpoints[0]
    assert sum(endpoint.power_w(c) for c in range(1, 25)) == 0.0  # Modbus: every outlet off
    assert all(m.sleeping and m.power_w == 0.0 for m in miners.miners)  # LuxOS: curtail sleep
    assert shell.applied_kw[index["chiller"]] == 0.0  # MQTT: the echo says off
    assert shell.measured_kw[index["chiller"]] == 0.0
    assert nvml.limits_mw == pytest.approx([500_000, 500_000], abs=1)  # node: 6 - 5 kW, 2 boards
    assert shell.measured_kw[index["gpu"]] == pytest.approx(0.9, abs=1e-3)  # NVML power, published
    assert report.site_kw <= 6.0
    assert _acks(outbox, "ers-1")[-1] == "active"

    # a miner reboots back to full power: the drift is seen and the sleep re-sent, once
    miners.miners[0].drift_back()
    await shell.poll()
    assert shell.available[index[MINERS[0]]]
    assert MINERS[0] in (await shell.cycle()).commanded
    assert miners.miners[0].sleeping
    await shell.poll()
    assert shell.available[index[MINERS[0]]]
    # one that answers OK and keeps hashing is re-sent once, then planned around
    miners.miners[1].lies = True
    await shell.poll()
    assert MINERS[1] in (await shell.cycle()).commanded
    await shell.poll()
    assert not shell.devices.obeying[index[MINERS[1]]]  # planned around, re-sent on a backoff

    # release: the 28 devices switching back on (the liar is unavailable) go in batches of 10,
    # 5 s apart, most valuable first: the chiller, the miners, then the PDUs' outlets
    release = {"event_id": "ers-1", "kind": "release", "issued_at": clock.now.isoformat()}
    assert service.intake.dispatch(json.dumps(release).encode()) != "rejected"
    on_counts = []
    for _ in range(3):
        clock.leap(5)
        report = await shell.cycle()
        assert not report.failed, report.failed
        on_counts.append(int((shell.applied_kw > 0).sum()))
        if len(on_counts) == 1:
            awake = [m for k, m in enumerate(miners.miners) if k != 1 and not m.sleeping]
            assert len(awake) == 3  # the miners were in the first batch
            assert report.held_back == 28 - 10
    assert on_counts == [1 + 10, 1 + 20, 1 + 28]  # the GPU node ran throughout
    assert miners.miners[2].target_w == 3250.0  # power target back to rated, then wakeup
    assert all(m.ramps == 0 for m in miners.miners)  # no profile change ever re-ramped a board
    assert sum(peers.sim.endpoints[0].power_w(c) for c in range(1, 25)) == 24 * 3250.0
    assert nvml.limits_mw == [700_000, 700_000]
    assert shell.measured_kw[index["chiller"]] == 20.0


def test_mqtt_devices_without_an_mqtt_section_are_a_config_error(tmp_path: Path) -> None:
    site_file = tmp_path / "site.yaml"
    text = SITE.format(tag="nomqtt", modbus_port=1502, miner_port=4028, base="t", node_id="g",
                       mqtt="", db=tmp_path / "db2.sqlite3")  # fmt: skip
    site_file.write_text(text.replace("settle_s: 0}", "settle_s: 0, firmware: whatsminer}"))
    for command in (["check-config", str(site_file)], ["run", "--config", str(site_file)]):
        result = CliRunner().invoke(cli_main, command)
        assert result.exit_code == 2, result.output
        output = result.output  # click's runner mixes stderr in
        assert output.count("reached over MQTT but the site file has no `mqtt` section") == 2
        assert "firmware: Input should be 'luxos' or 'braiins'" in output
    assert not (tmp_path / "db2.sqlite3").exists()  # nothing was started


RUN_SITE = """
site: {{id: run-{tag}, timezone: America/Chicago}}
classes:
  cooling: {{priority: flexible, economics: {{kind: fixed, value_usd_per_mwh: 400}}}}
devices:
  - {{id: chiller, kind: cooling, class: cooling, rated_kw: 20, min_kw: 5, control: power_limit,
     driver: {{type: mqtt, command_topic: "{base}/set", state_topic: "{base}/state",
     echo_timeout_s: 3}}}}
policy: {{stale_posture: run_all}}
prices: {{source: none}}
mqtt: {{host: {host}, port: {port}, client_id: run-{tag}}}
service: {{cycle_s: 0.2, database: "{db}", metrics_port: null}}
"""


def test_gridflex_run_commands_mqtt_devices_over_its_own_session(
    mqtt_broker: Broker, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:6]
    base = f"test/{tag}/chiller"
    config = parse_config(
        RUN_SITE.format(tag=tag, base=base, host=mqtt_broker.host, port=mqtt_broker.port,
                        db=tmp_path / "db.sqlite3"),
        env={},
    )  # fmt: skip

    async def scenario() -> None:
        device = _session(mqtt_broker, "chiller")
        await device.connect()
        commands: asyncio.Queue[bytes] = asyncio.Queue()
        device.subscribe(f"{base}/set", lambda _topic, payload: commands.put_nowait(payload))
        await echoing_device(device, f"{base}/set", f"{base}/state")
        stop = asyncio.Event()
        service = asyncio.create_task(run_service(config, stop))
        try:
            first = json.loads(await asyncio.wait_for(commands.get(), 10))
            assert (first["on"], first["kw"]) == (True, 20.0)  # run_all: the chiller at rated
        finally:
            stop.set()
            await asyncio.wait_for(service, 10)
            await device.close()

    asyncio.run(scenario())
