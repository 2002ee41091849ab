"""`gridflex demo` runs end to end: real prices, simulated Modbus site, the scripted dispatch,
over a real Mosquitto when one answers and in-process when none does."""

from __future__ import annotations

import asyncio
import io
import re
import uuid
from datetime import date

from click.testing import CliRunner
from rich.console import Console

from adapters.transport.mqtt_session import MqttSession, MqttSettings
from agent.cli import main
from agent.demo.run import DemoMqtt, DemoOptions, DemoSummary, run_demo
from agent.service.messages import DecisionMessage, DispatchAck, TelemetryMessage
from tests.helpers.peers import Broker, free_port


def test_demo_slice_dispatch_is_verified_and_the_live_view_renders() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    options = DemoOptions(day=date(2024, 5, 8), seconds=0, live=True, from_hour=10, to_hour=13)
    summary = asyncio.run(run_demo(options, console))
    statuses = [a.status for a in summary.acks]
    # the site lands on its 700 kW ceiling (not 10 % under it), so the PDU the script makes
    # stick with 24 miners on puts it over for the cycle that finds it: said, then planned
    # around, and counted in the record
    assert statuses == ["accepted", "active", "non_compliant", "active", "completed"]
    active = summary.acks[1]
    assert active.achieved_kw is not None
    assert 700.0 - 3.25 - 7.0 <= active.achieved_kw <= 700.0 * 1.005  # within a step and 1 %
    assert "over the ceiling 1 time(s)" in summary.acks[-1].reason
    assert summary.cycles == 36
    assert summary.commands > 0
    text = out.getvalue()
    assert "price" in text
    assert "grid dispatch ercot-rrs-0508" in text
    assert "device(s) recovered" in text  # the stuck PDU was planned around, then came back


def test_demo_command_runs_without_a_terminal_and_says_why_mqtt_is_not_used() -> None:
    port = free_port()  # nothing listens there: the demo must fall back, not wait or fail
    result = CliRunner().invoke(
        main,
        [
            "demo",
            "--seconds",
            "0",
            "--day",
            "2024-08-20",
            "--no-live",
            "--from-hour",
            "10",
            "--to-hour",
            "13",
            "--mqtt-port",
            str(port),
        ],
    )
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # rich wraps lines at 80 columns off a terminal
    assert (
        f"MQTT not used: nothing answers on 127.0.0.1:{port} (connection refused); "
        "the dispatch is handed to the service in-process" in text
    )
    assert text.count("MQTT not used") == 1
    assert f"MQTT not used: nothing answers on 127.0.0.1:{port}" in text.split("10:00")[0]
    assert "from the QSE: accepted" in text
    hourly = [line for line in result.output.splitlines() if line[:3] in ("11:", "12:")]
    assert any(line.startswith("12:00 ") and "$/MWh" in line for line in hourly)
    assert all(len(line) <= 80 for line in hourly)  # one line an hour, 80 columns
    assert "dispatch ercot-rrs-0508: active" in result.output
    assert "net earned by curtailing" in result.output
    assert "revenue forgone" in result.output


def test_a_day_without_prices_is_refused_before_anything_runs() -> None:
    result = CliRunner().invoke(main, ["demo", "--day", "2023-05-08", "--no-mqtt"])
    assert result.exit_code == 2
    assert "no real-time prices for 2023-05-08" in result.output


class _Watcher:
    """What a SCADA-like client subscribed to `gridflex/#` saw, and a way to wait for more."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, bytes]] = []
        self._arrived = asyncio.Event()

    def __call__(self, topic: str, payload: bytes) -> None:
        self.seen.append((topic, payload))
        self._arrived.set()

    async def until(self, topic: str, payload: bytes, timeout_s: float = 5.0) -> None:
        async with asyncio.timeout(timeout_s):
            while (topic, payload) not in self.seen:
                self._arrived.clear()
                await self._arrived.wait()


async def _watch_demo(
    broker: Broker, options: DemoOptions
) -> tuple[DemoSummary, list[tuple[str, bytes]]]:
    """Run the demo while a client watches `gridflex/#`; what it saw."""
    watcher = _Watcher()
    session = MqttSession(
        MqttSettings(host=broker.host, port=broker.port, client_id=f"test-demo-{uuid.uuid4().hex}")
    )
    session.subscribe("gridflex/#", watcher)
    await session.connect(5)
    probe = f"gridflex/test-demo-probe-{uuid.uuid4().hex}"
    await session.publish(probe, "x")
    await watcher.until(probe, b"x")  # seen back: the subscription is in place
    summary = await run_demo(options, Console(file=io.StringIO(), width=120))
    assert summary.mqtt_prefix is not None, summary.mqtt
    await watcher.until(f"{summary.mqtt_prefix}/status", b"")  # the run ends clearing its status
    await session.close()
    return summary, watcher.seen


def test_demo_over_a_broker_publishes_as_the_service_and_takes_its_dispatch_over_mqtt(
    mqtt_broker: Broker,
) -> None:
    options = DemoOptions(
        day=date(2024, 5, 8),
        seconds=0,
        live=False,
        from_hour=10,
        to_hour=12,
        dispatch_minutes=30,
        mqtt=DemoMqtt(host=mqtt_broker.host, port=mqtt_broker.port),
    )
    summary, seen = asyncio.run(_watch_demo(mqtt_broker, options))
    prefix = summary.mqtt_prefix
    assert prefix is not None
    assert prefix.startswith("gridflex/demo-")
    assert summary.mqtt == f"published on {mqtt_broker.host}:{mqtt_broker.port} under {prefix}/#"
    mine = [(t.removeprefix(f"{prefix}/"), p) for t, p in seen if t.startswith(f"{prefix}/")]
    by_topic: dict[str, list[bytes]] = {}
    for topic, payload in mine:
        by_topic.setdefault(topic, []).append(payload)
    assert set(by_topic) == {"status", "telemetry", "decision", "dispatch", "dispatch/ack"}
    # retained online, "offline" as gridflex run says it, then cleared: nothing left behind
    assert by_topic["status"] == [b"online", b"offline", b""]
    telemetry = [TelemetryMessage.model_validate_json(p) for p in by_topic["telemetry"]]
    assert len(telemetry) == summary.cycles == 24
    assert {t.devices_total for t in telemetry} == {263}
    assert any(
        t.active_events == ["ercot-rrs-0508"] and t.site_ceiling_kw == 700.0 for t in telemetry
    )
    decisions = [DecisionMessage.model_validate_json(p) for p in by_topic["decision"]]
    assert any(any("grid dispatch ercot-rrs-0508" in g.reason for g in d.groups) for d in decisions)
    assert all(sum(g.devices for g in d.groups) == 263 for d in decisions)  # every device
    # compact at any fleet size: it was 20.8 KB listing every device id per reason
    assert max(len(p) for p in by_topic["decision"]) < 8_000
    # the scripted dispatch went over the broker, and its acks came back the production way
    assert [b'"event_id": "ercot-rrs-0508"' in p for p in by_topic["dispatch"]] == [True]
    acks = [DispatchAck.model_validate_json(p) for p in by_topic["dispatch/ack"]]
    lived = ["accepted", "active", "non_compliant", "active", "completed"]  # the stuck PDU
    assert [a.status for a in acks] == lived
    assert {a.event_id for a in acks} == {"ercot-rrs-0508"}
    assert acks[1].achieved_kw is not None
    assert acks[1].achieved_kw <= 700.0 * 1.005
    assert [a.status for a in summary.acks] == lived


def test_a_burst_of_inference_demand_moves_power_from_miners_to_gpus() -> None:
    """14:00-15:00 the demo's pool asks more than its 16 servers carry: every paused server
    serves again and the miners give way under the 1,450 kW import limit, in measured power."""
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=100)
    options = DemoOptions(day=date(2024, 5, 8), seconds=0, live=False, from_hour=13, to_hour=16)
    summary = asyncio.run(run_demo(options, console))
    text = out.getvalue()
    assert "14:00 inference on 7->16 servers" in text, text
    burst = next(line for line in text.splitlines() if "inference on 7->16" in line)
    gpu_kw, miners_kw = (float(x) for x in re.findall(r"([+-]\d+) kW", burst))
    assert gpu_kw > 0 > miners_kw
    assert "15:00 inference on 16->" in text  # and it hands them back after the burst
    assert 1400 < summary.peak_site_kw <= 1450 * 1.005
