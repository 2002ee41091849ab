"""`gridflex demo`: one real ERCOT day on a simulated site, with a grid dispatch in the middle.

The site (agent/demo/demo-site.yaml: 240 PDU outlets of miners, 4 immersion tanks, 16 GPU nodes,
2 dry coolers, ~1.5 MW) is served by simulated Modbus devices on loopback in this process, and
the real 2024 real-time prices of HB_HUBAVG shipped in agent/data are replayed through the same
service code `gridflex run` uses (snapshot, decide, apply over Modbus, verify, events, audit).
Simulated time leaps 5 minutes per cycle, so a day takes seconds. At 11:00 an ERCOT RRS
deployment arrives as a dispatch message (the same JSON an operator would send over MQTT) and a
PDU stops obeying mid-event, to show the service planning around it.

When a broker answers (127.0.0.1:1883 unless told otherwise), the service runs its real MQTT
interface and the dispatch arrives over MQTT (agent/demo/mqtt.py), so a SCADA integrator
can watch with `mosquitto_sub -t 'gridflex/#' -v`; otherwise one line says why not, and the
dispatch is handed to the service in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from importlib import resources
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
from pydantic import BaseModel
from rich.console import Console
from rich.live import Live

from adapters.signals.replay import load_canonical_prices, price_schedule
from adapters.sim.modbus_server import SimModbusSite
from adapters.transport.mqtt_session import MqttError
from agent.app.assembly import MemoryOutbox, Outbox, Service, assemble
from agent.app.runner import Runner, listen
from agent.app.simsite import sim_site_for
from agent.config import SiteConfig, parse_config
from agent.demo.inference import DemoInference, burst_note
from agent.demo.mqtt import DISPATCH_DELIVERY_TIMEOUT_S, DemoMqtt, DemoMqttLink, open_demo_mqtt
from agent.demo.view import DemoSummary, NoLive, View, print_summary
from agent.domain.fleet import Fleet
from agent.domain.signals import PriceSignal
from agent.policy import Decision, Rule
from agent.service.cycle import CycleReport
from agent.service.messages import DispatchAck
from agent.service.outbox import PersistedOutbox

__all__ = ["DemoMqtt", "DemoOptions", "DemoSummary", "NoPricesError", "SteppedClock", "run_demo"]

STEP = timedelta(minutes=5)
POOL, MINERS = "inference", ("s19xp", "s21")
PRICES_FILE = "ercot_rt_spp_15min_hb_hubavg_2024.csv.gz"


@dataclass(frozen=True, slots=True)
class DemoOptions:
    day: date = date(2024, 5, 8)
    seconds: float = 15.0  # wall-clock pacing of the whole day (0: as fast as possible)
    dispatch_at_local: str = "11:00"
    dispatch_minutes: int = 90
    dispatch_target_kw: float = 700.0
    live: bool | None = None  # None: a live view only on a terminal
    from_hour: int = 0  # local hours of the day to run (tests run a slice)
    to_hour: int = 24
    mqtt: DemoMqtt | None = None  # where to look for a broker; None: in-process only


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def load_demo_config(
    port: int, database: str = ":memory:", metrics_port: int | None = None
) -> SiteConfig:
    text = resources.files("agent.demo").joinpath("demo-site.yaml").read_text(encoding="utf-8")
    env = {"GRIDFLEX_DEMO_PORT": str(port),
           "GRIDFLEX_DEMO_METRICS_PORT": str(metrics_port or free_loopback_port())}  # fmt: skip
    config = parse_config(text, file="demo-site.yaml", env=env)
    service = config.service.model_copy(update={"database": Path(database)})
    return config.model_copy(update={"service": service})


def _day_prices(day: date, zone: ZoneInfo) -> list[PriceSignal]:
    path = resources.files("agent.data").joinpath(PRICES_FILE)
    with resources.as_file(path) as local:
        frame = load_canonical_prices(local)
    start = datetime.combine(day, datetime.min.time(), zone).astimezone(UTC)
    end = start + timedelta(days=1)
    # the interval before midnight too: its price is the one known at 00:00
    window = frame[
        (frame["interval_end_utc"] >= start - timedelta(minutes=15))
        & (frame["interval_start_utc"] < end)
    ]
    inside = window[window["interval_start_utc"] >= start]
    if len(inside) < 92:  # 96 intervals a day (92 / 100 on DST days)
        raise NoPricesError(
            f"no real-time prices for {day.isoformat()}: the demo ships ERCOT's 2024 prices "
            "(HB_HUBAVG); pick a day in 2024"
        )
    return list(price_schedule(window, source="ercot-rt15-2024"))


class NoPricesError(ValueError):
    """The demo has no prices for the day asked."""


class SteppedClock:
    """A clock the caller moves (the demo, benches): now, and a monotonic reading with it."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def monotonic(self) -> float:
        """Devices settle in demo time too: a settle window is the demo's seconds."""
        return self.now.timestamp()


@dataclass
class _Day:
    """What every step of the demo's day works with."""

    service: Service
    runner: Runner
    inference: DemoInference
    view: View
    summary: DemoSummary
    mqtt: DemoMqttLink | None
    last: Decision | None = None


def _dispatch_message(event_id: str, now: datetime, minutes: int, target_kw: float) -> bytes:
    message = {
        "event_id": event_id,
        "kind": "limit",
        "target_kw": target_kw,
        "program": "RRS",
        "start": now.isoformat(),
        "end": (now + timedelta(minutes=minutes)).isoformat(),
        "issued_at": now.isoformat(),
    }
    return json.dumps(message).encode()


async def run_demo(options: DemoOptions, console: Console) -> DemoSummary:
    """The day, step by step, through the service's own runner (agent.app.runner.Runner.step:
    its inbox, cycle, commit and outbox), on a clock the demo steps."""
    port, metrics_port = free_loopback_port(), free_loopback_port()
    config = load_demo_config(port, metrics_port=metrics_port)
    zone = ZoneInfo(config.site.timezone)
    prices = _day_prices(options.day, zone)
    start, end, dispatch_at = _times(options, zone)
    clock = SteppedClock(start)
    summary = DemoSummary()
    live = console.is_terminal if options.live is None else options.live
    steps = int((end - start) / STEP)
    pace_s = options.seconds / steps if options.seconds > 0 else 0.0
    began = time.perf_counter()
    inference = DemoInference(POOL, metrics_port, zone)
    mqtt = await _connect(options.mqtt, config.site.id, summary, console)
    async with sim_site_for(config) as sim, _quiet_logs():
        outbox: Outbox = MemoryOutbox() if mqtt is None else mqtt.link
        service = assemble(config, clock=clock, outbox=outbox, monotonic=clock.monotonic)
        service.ack_listeners.append(lambda topic, ack: _heard(summary, topic, ack))
        runner = Runner(service, asyncio.Event())
        publisher = _publisher(service)
        if mqtt is not None:
            listen(service, mqtt.link)  # the same inbound topics as `gridflex run`
        try:
            await service.shell.poll()
            view = View(service, zone, options.dispatch_target_kw)
            day = _Day(service, runner, inference, view, summary, mqtt)
            send = _dispatcher(service, runner, mqtt, summary)
            pending = list(prices)
            with inference, Live(view.render(None, summary), console=console, auto_refresh=False,
                      transient=False) if live else NoLive() as screen:  # fmt: skip
                for step in range(steps):
                    tick = time.perf_counter()
                    clock.now = start + step * STEP
                    while pending and pending[0].observed_at_utc <= clock.now:
                        service.inbox.signal(pending.pop(0))  # as the price source queues it
                    await _scripted(clock.now, dispatch_at, send, sim, view, options)
                    report = await _step(day, clock.now)
                    if live:
                        screen.update(view.render(report, summary), refresh=True)
                    elif clock.now.astimezone(zone).minute == 0 or view.fresh_notes:
                        console.print(view.line(report))
                    view.fresh_notes = False
                    if pace_s:
                        await asyncio.sleep(max(0.0, pace_s - (time.perf_counter() - tick)))
        finally:
            await _stop(service, publisher, mqtt)
    summary.wall_s = time.perf_counter() - began
    print_summary(console, summary, service, options.day)
    return summary


def _publisher(service: Service) -> asyncio.Task[None] | None:
    """The outbox's one publisher, as `gridflex run` runs it (over MQTT only)."""
    if isinstance(service.outbox, PersistedOutbox):
        return asyncio.create_task(service.outbox.run())
    return None


async def _stop(service: Service, publisher: asyncio.Task[None] | None,
                mqtt: DemoMqttLink | None) -> None:  # fmt: skip
    if publisher is not None:
        assert isinstance(service.outbox, PersistedOutbox)
        await service.outbox.drain(DISPATCH_DELIVERY_TIMEOUT_S)
        publisher.cancel()
        await asyncio.gather(publisher, return_exceptions=True)
    if mqtt is not None:
        await mqtt.close()
    await service.close()


def _heard(summary: DemoSummary, topic: str, ack: BaseModel) -> None:
    """Every ack the service sends (its listeners hear each): the summary keeps the events'."""
    if topic == "dispatch/ack" and isinstance(ack, DispatchAck):
        summary.acks.append(ack)


async def _connect(
    target: DemoMqtt | None, site_id: str, summary: DemoSummary, console: Console
) -> DemoMqttLink | None:
    """The service's real MQTT interface when a broker answers; one line saying which it is."""
    if target is None:
        summary.mqtt = "not used (--no-mqtt)"
        console.print("MQTT not used (--no-mqtt): the dispatch is handed to the service in-process")
        return None
    opened = await open_demo_mqtt(target, site_id)
    if isinstance(opened, str):
        summary.mqtt = f"not used: {opened}"
        console.print(
            f"MQTT not used: {opened}; the dispatch is handed to the service in-process "
            "(--mqtt-host/--mqtt-port to point at a broker)",
            markup=False,
            highlight=False,
        )
        return None
    summary.mqtt = f"published on {target.where} under {opened.prefix}/#"
    summary.mqtt_prefix = opened.prefix
    console.print(
        f"MQTT: publishing on {target.where} under {opened.prefix}/ (status, telemetry, "
        f"decision, dispatch/ack); watch with: mosquitto_sub -h {target.host} -p {target.port} "
        "-t 'gridflex/#' -v",
        markup=False,
        highlight=False,
    )
    return opened


Dispatcher = Callable[[bytes], Awaitable[str]]


def _dispatcher(
    service: Service, runner: Runner, mqtt: DemoMqttLink | None, summary: DemoSummary
) -> Dispatcher:
    """How the QSE's dispatch reaches the service's inbox: over MQTT when connected, else put
    there in-process. What became of it is its first ack, after the cycle that takes it."""

    def in_process(payload: bytes) -> None:
        service.inbox.put("dispatch", lambda: service.intake.dispatch(payload, source="demo-qse"))

    async def send(payload: bytes) -> str:
        event_id = json.loads(payload)["event_id"]
        how = "in-process"
        if mqtt is not None:
            try:
                await mqtt.dispatch(payload, service)
                how = f"over MQTT on {mqtt.prefix}/dispatch"
            except (TimeoutError, MqttError) as exc:
                # the broker took the connection but not this message: the demo's script goes on
                in_process(payload)
                how = f"in-process: not delivered over MQTT: {exc or 'timeout'}"
        else:
            in_process(payload)
        await runner.step()  # the cycle that takes it, as the wake would start one
        told = [a.status for a in summary.acks if a.event_id == event_id]
        outcome = told[0] if told else "no answer"
        return outcome if mqtt is None else f"{outcome} ({how})"

    return send


@contextlib.asynccontextmanager
async def _quiet_logs() -> AsyncIterator[None]:
    """The view shows state changes (MQTT's in its one line); per-device log lines and the MQTT
    session's warnings would tear the live display."""
    loggers = [logging.getLogger(name) for name in ("gridflex", "adapters.transport.mqtt_session")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _times(options: DemoOptions, zone: ZoneInfo) -> tuple[datetime, datetime, datetime]:
    """Start, end and dispatch instants (UTC) of the demo's slice of the day."""
    midnight = datetime.combine(options.day, datetime.min.time(), zone)
    hour, minute = (int(x) for x in options.dispatch_at_local.split(":"))
    return (
        (midnight + timedelta(hours=options.from_hour)).astimezone(UTC),
        (midnight + timedelta(hours=options.to_hour)).astimezone(UTC),
        (midnight + timedelta(hours=hour, minutes=minute)).astimezone(UTC),
    )


async def _scripted(  # noqa: PLR0917 - the scene's cast
    now: datetime,
    dispatch_at: datetime,
    send: Dispatcher,
    sim: SimModbusSite,
    view: View,
    options: DemoOptions,
) -> None:
    """The day's script: the QSE's dispatch, then a PDU that stops obeying and is repaired."""
    if now == dispatch_at:
        outcome = await send(
            _dispatch_message(
                "ercot-rrs-0508",
                now,
                options.dispatch_minutes,
                options.dispatch_target_kw,
            )
        )
        view.note(now, f"dispatch ercot-rrs-0508 from the QSE: {outcome}")
    if now == dispatch_at + 2 * STEP:
        # a PDU whose relays stop obeying: it answers OK and keeps drawing
        sim.endpoints[3].stuck_channels = frozenset(range(1, 25))
        sim.endpoints[3].controls.update(dict.fromkeys(sim.endpoints[3].controls, 1.0))
        view.note(now, "PDU 4 stops obeying its relays (24 miners stuck on)")
    if now == dispatch_at + 12 * STEP:
        sim.endpoints[3].stuck_channels = frozenset()
        sim.endpoints[3].controls.update(dict.fromkeys(sim.endpoints[3].controls, 0.0))
        view.note(now, "PDU 4 repaired (relays reset open)")


def _forgone_usd(report: CycleReport, fleet: Fleet, hours: float) -> float:
    """What the load curtailed this step would have earned: each class's curtailed kW at the
    class's own value ($/MWh: mining revenue, an inference contract). Classes without a value
    of their own (cooling follows its load, critical load is never cut) earn nothing by running.
    An inference server paused for want of demand forgoes nothing: there was nothing to serve."""
    planned = np.where(report.decision.rule == int(Rule.POOL), fleet.rated_kw,
                       report.decision.setpoint_kw)  # fmt: skip
    usd = 0.0
    for pos, load_class in enumerate(fleet.classes):
        value = load_class.value_usd_per_mwh
        if not math.isfinite(value) or load_class.follows is not None:
            continue
        members = fleet.members[pos]
        curtailed_kw = float(fleet.rated_kw[members].sum() - planned[members].sum())
        usd += max(0.0, curtailed_kw) * hours / 1000.0 * value
    return usd


def _would_run_kw(report: CycleReport, service: Service) -> float:
    """The run-flat baseline: every device at its rating, except inference servers paused for
    want of demand (they would not have run either), and never above the import limit (the
    site cannot draw more than its connection)."""
    fleet = service.shell.fleet
    pool = report.decision.rule == int(Rule.POOL)
    kw = float(np.where(pool, report.decision.setpoint_kw, fleet.rated_kw).sum())
    limit = service.config.site.import_limit_kw
    return kw if limit is None else min(kw, limit)


async def _step(day: _Day, now: datetime) -> CycleReport:
    """A cycle on the pool's demand as scraped now, noting what a change of it moved, then
    telemetry, the summary's accounts and the view."""
    demand = await day.inference.read(now)
    if demand is not None:
        day.service.inbox.signal(demand)  # as the pool's scraper queues it
    report = await _cycle(day.service, day.runner)
    moved = burst_note(day.last, report.decision, POOL, "inference", MINERS)
    if moved is not None:
        day.view.note(now, moved)
    day.last = report.decision
    if day.mqtt is not None:
        day.mqtt.publish_telemetry(day.service, report.at_utc)
    _account(day.summary, report, day.service)
    day.view.observe(report)
    return report


async def _cycle(service: Service, runner: Runner) -> CycleReport:
    # devices on their own cadence: read what every one draws, probe the unavailable ones
    await service.shell.poll()
    report = await runner.step()
    if service.shell.follow_up:
        report = await runner.step()
    return report


def _account(summary: DemoSummary, report: CycleReport, service: Service) -> None:
    hours = STEP.total_seconds() / 3600.0
    price = report.decision.price_usd_per_mwh or 0.0
    site_kw = service.shell.site_kw()
    flat_kw = _would_run_kw(report, service)
    summary.cycles += 1
    summary.energy_mwh += site_kw * hours / 1000.0
    summary.cost_usd += site_kw * hours / 1000.0 * price
    summary.flat_energy_mwh += flat_kw * hours / 1000.0
    summary.flat_cost_usd += flat_kw * hours / 1000.0 * price
    summary.max_price = max(summary.max_price, price)
    summary.peak_site_kw = max(summary.peak_site_kw, site_kw)
    summary.commands += len(report.commanded)
    summary.failed_devices.update(report.failed)
    # a device that accepted its command but kept drawing shows up on the read, not the apply
    ids = service.shell.fleet.device_ids
    down = ~service.shell.devices.planned_available  # unreachable, or not obeying
    summary.failed_devices.update(ids[i] for i in np.flatnonzero(down))
    summary.max_cycle_s = max(summary.max_cycle_s, report.duration_s)
    summary.forgone_usd += _forgone_usd(report, service.shell.fleet, hours)
