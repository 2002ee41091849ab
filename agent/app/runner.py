"""`gridflex run`: the service's tasks, one cadence each, and an orderly stop.

  cycle      the one writer: every `service.cycle_s`, or at once when something urgent lands
             in its inbox (a dispatch, override, grid message, a VEN's event); it drains the
             inbox, takes the queued device readings, decides, applies, commits
  devices    read every device every cycle_s (its own cadence) and queue the readings
  prices     the configured price source queues each price on ERCOT's rhythm
  outbox     the one publisher of acks, in sequence order, each once its row is committed
  telemetry  every 2 s on `<prefix>/telemetry` (QoS 0); decisions on `<prefix>/decision`
  openadr    the VEN, when the site file has an `openadr` section (its events go to the inbox)

A cycle that fails is logged once, counted, and tried again after a pause that doubles up to
BACKOFF_MAX_S; every wait yields to the other tasks and ends at SIGTERM at once.

systemd: READY=1 after the first completed cycle, WATCHDOG=1 after every completed cycle (a hung
or failing cycle stops the kicks and systemd restarts us). SIGTERM lets the running cycle finish
(never a half-applied batch), then applies the shutdown posture through decide() (`restore`:
every class back on, in staggered batches, within the live obligations, the import limit and
overrides; `hold`: as they are), tells each live event's sender that the service is stopping
(`suspended`), publishes "offline" and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime
from typing import TYPE_CHECKING, Any

from adapters.transport.mqtt_session import MqttError, MqttSession
from agent.app.assembly import MemoryOutbox, Outbox, Service, assemble
from agent.app.cadences import OUTBOX_DRAIN_S, Runner
from agent.app.fleet import fleet_link, run_fleet, tee
from agent.app.gpu_demand import gpu_demand_sources
from agent.app.http_ports import serve_metrics
from agent.app.mqtt_link import MQTT_DRIVERS, MqttLink, device_session_settings
from agent.app.openadr import openadr_link, run_openadr
from agent.app.openadr3 import run_openadr3
from agent.app.prices import price_source
from agent.app.published import decision_message, telemetry_message
from agent.app.sparkplug_link import edge_node, run_edge_node
from agent.app.status_page import StatusPage
from agent.app.systemd import notify
from agent.config import SiteConfig
from agent.errors import ConfigError
from agent.ports import Clock, utc_now
from agent.service.grid import EMERGENCY, FOURCP
from agent.service.outbox import PersistedOutbox
from agent.service.queries import answer_device_query
from agent.service.ratelimit import TopicRateLimit

if TYPE_CHECKING:
    from agent.app.fleet_link import FleetLink

__all__ = [
    "Runner", "decision_message", "listen", "run_service", "serve", "telemetry_message",
]  # fmt: skip

log = logging.getLogger("gridflex.service")


async def run_service(config: SiteConfig, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    for warning in config.warnings():
        log.warning("site file: %s", warning)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    link: MqttLink | None = None
    devices_session: MqttSession | None = None
    outbox: Outbox = MemoryOutbox()
    if config.mqtt is not None:
        client_id = config.mqtt.client_id or f"gridflex-{config.site.id}"
        link = MqttLink(config.mqtt, config.topic_prefix, client_id)
        outbox = link
        if any(d.driver is not None and d.driver.type in MQTT_DRIVERS for d in config.devices):
            # devices talk on a session of their own: their traffic never takes a place in the
            # in-flight window that carries dispatch (docs/security.md)
            devices_session = MqttSession(device_session_settings(config.mqtt, client_id))
    fleet = None
    if config.fleet_bus is not None:
        fleet = fleet_link(config)
        outbox = fleet if link is None else tee(link, fleet)
    service = assemble(config, clock=utc_now, outbox=outbox, mqtt_session=devices_session)
    try:
        if devices_session is not None:
            await _connect_devices(devices_session)
        if link is not None:
            listen(service, link)
            await link.start()
            _check_session(service, link)
        await serve(service, stop, link=link, fleet=fleet)
    finally:
        if devices_session is not None:
            await devices_session.close()


async def _connect_devices(session: MqttSession) -> None:
    try:
        await session.connect()
    except MqttError as exc:  # paho keeps trying; the devices are unavailable meanwhile
        log.error("MQTT devices' session not connected yet (%s); retrying in the background", exc)


def listen(service: Service, link: MqttLink) -> None:
    """The service's inbound topics: each message goes to the cycle's inbox, and is PUBACKed
    once the cycle that handled it has committed, whatever its outcome."""
    intake, grid = service.intake, service.grid
    mqtt = service.config.mqtt
    limit = TopicRateLimit(mqtt.max_messages_per_s if mqtt else 20.0,
                           mqtt.max_burst if mqtt else 200)  # fmt: skip
    link.on("dispatch", _queued(service, "dispatch", intake.dispatch))
    link.on("override", _queued(service, "override", intake.override))
    link.on(EMERGENCY, _queued(service, EMERGENCY, grid.emergency))
    link.on(FOURCP, _queued(service, FOURCP, grid.peak_warning))

    def on_query(data: bytes) -> None:  # a read: answered at once, never changes state
        if not limit.allow("decision/request"):
            service.metrics.messages.labels(topic="decision/request", outcome="rate_limited").inc()
            return
        answer = answer_device_query(service.shell, data, utc_now())
        service.outbox.send("decision/device", answer)

    link.on("decision/request", on_query)


def _queued(
    service: Service, topic: str, handle: Callable[[bytes], str]
) -> Callable[[bytes], Awaitable[None] | None]:
    """Put a message in the inbox; the broker's acknowledgement waits for the cycle's commit."""

    def on_message(data: bytes) -> Awaitable[None] | None:
        return service.inbox.put(topic, lambda: handle(data), acknowledged=True)

    return on_message


def _check_session(service: Service, link: MqttLink) -> None:
    """A restart should find the broker holding our session: if it does not, whatever was sent
    to us while we were away is gone (a broker without persistence, or one that restarted)."""
    had_session = service.store.load_state("mqtt_session") is not None
    if had_session and link.session.session_present is False:
        log.warning(
            "the MQTT broker kept no session for %s: messages sent while the service was away "
            "are lost; give the broker persistence and a session expiry (docs/install.md)",
            link.client_id,
        )
    service.store.save_state("mqtt_session", {"client_id": link.client_id})


async def serve(
    service: Service,
    stop: asyncio.Event,
    *,
    link: MqttLink | None = None,
    fleet: FleetLink | None = None,
    clock: Clock = utc_now,
) -> None:
    """Run an assembled service until `stop` is set: cycles, device reads, telemetry, the price
    source and the OpenADR VEN (when the site is enrolled); then the shutdown posture."""
    ports = _HttpPorts(service)
    _announce_resumed(service, clock())
    runner = Runner(service, stop, ports.page)
    await service.shell.poll()
    tasks = [asyncio.create_task(runner.devices()), asyncio.create_task(runner.telemetry()),
             asyncio.create_task(runner.housekeeping())]  # fmt: skip
    publisher = None
    if isinstance(service.outbox, PersistedOutbox):  # what a crash or an outage left unsent too
        publisher = asyncio.create_task(service.outbox.run())
    tasks += [asyncio.create_task(s) for s in _signal_sources(service, clock)]
    if fleet is not None:
        tasks.append(asyncio.create_task(run_fleet(service, fleet, clock)))
    sparkplug_stop = asyncio.Event()
    node = edge_node(service, runner.view, clock)
    sparkplug = None if node is None else asyncio.create_task(run_edge_node(node, sparkplug_stop))
    try:
        await runner.cycles()  # returns after the cycle running at SIGTERM completes
    finally:
        notify("STOPPING=1")
        if sparkplug is not None:  # NDEATH first, while the service still answers
            sparkplug_stop.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(sparkplug), 10)
            sparkplug.cancel()
            tasks.append(sparkplug)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        left = await runner.shutdown_posture()
        if service.events.live:
            service.events.announce(clock(), "suspended", f"the service is stopping: {left}; "
                                    "the event is not followed until it is back")  # fmt: skip
        await _last_acks(service, publisher)
        ports.close()
        if link is not None:
            await link.stop()
        if fleet is not None:
            await fleet.close()
        await service.close()
        log.info("stopped")


class _HttpPorts:
    """The metrics port and the status page, when configured, behind their connection caps."""

    def __init__(self, service: Service) -> None:
        config = service.config.service

        def refused() -> None:
            service.metrics.errors.labels(kind="http_refused").inc()

        self.metrics = None
        if config.metrics_port is not None:
            self.metrics = serve_metrics(service.metrics.registry, config.metrics_host,
                                         config.metrics_port, refused)  # fmt: skip
        self.page: StatusPage | None = None
        if config.status_page_port is not None:
            self.page = StatusPage(refused)
            if not self.page.serve(config.status_page_host, config.status_page_port):
                service.metrics.errors.labels(kind="status_page").inc()
                self.page = None

    def close(self) -> None:
        if self.page is not None:
            self.page.close()
        if self.metrics is not None:
            self.metrics.shutdown()
            self.metrics.server_close()


async def _last_acks(service: Service, publisher: asyncio.Task[None] | None) -> None:
    """At shutdown: the acks still pending, for a few seconds, then the publisher stops."""
    if publisher is None:
        return
    assert isinstance(service.outbox, PersistedOutbox)
    unsent = await service.outbox.drain(OUTBOX_DRAIN_S)
    if unsent:
        log.warning("%d ack(s) not confirmed by the broker at shutdown: kept, sent at the next "
                    "start", unsent)  # fmt: skip
    publisher.cancel()
    await asyncio.gather(publisher, return_exceptions=True)


def _announce_resumed(service: Service, now: datetime) -> None:
    """Say at start what the service resumed: each live event, logged and acked again."""
    live = service.events.live
    for record in live:
        log.info("resumed event %s (%s)", record.event_id, record.status)
    if live:
        service.events.announce(now, "resumed", "the service restarted and follows the event "
                                "again; it is judged again from the next cycle")  # fmt: skip


def _signal_sources(service: Service, clock: Clock) -> list[Coroutine[Any, Any, None]]:
    """The site's price source, VENs (OpenADR 2.0b, 3.0) and inference pools, as configured."""
    sources: list[Coroutine[Any, Any, None]] = []
    source = price_source(service.config)
    if source is not None:
        sources.append(_run_source(lambda: source.run(service.inbox.signal), service,
                                   what="price source", kind="prices"))  # fmt: skip
    openadr = openadr_link(service, clock)
    if openadr is not None:
        sources.append(run_openadr(openadr, service))
    if service.config.openadr3 is not None:
        sources.append(run_openadr3(service, clock))
    sources += [
        _run_source(run, service, what=f"GPU demand of pool {pool}", kind="gpu_demand")
        for pool, run in gpu_demand_sources(service)
    ]
    ercot = service.config.ercot
    if ercot is not None and ercot.dnp3 is not None:
        sources.append(_qse_link(service, clock))
    return sources


def _qse_link(service: Service, clock: Clock) -> Coroutine[Any, Any, None]:
    """The QSE's DNP3 outstation, on the `ercot` extra's DNP3 library."""
    try:
        from agent.app.dnp3_link import QseLink, run_qse_link  # noqa: PLC0415 - the extra
    except ImportError as exc:
        raise ConfigError(f"the site file has an ercot.dnp3 section, but {exc.name} is not "
                          "installed: pip install 'gridflex[ercot]'") from None  # fmt: skip
    return run_qse_link(QseLink(service, clock))


async def _run_source(
    run: Callable[[], Awaitable[None]], service: Service, *, what: str, kind: str
) -> None:
    """A source that fails (the price source, a GPU pool's scraper) is logged, counted as
    gridflex_errors{kind} and started again after 30 s; the stale postures cover the gap."""
    while True:
        try:
            await run()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s failed; retrying in 30 s", what)
            service.metrics.errors.labels(kind=kind).inc()
            await asyncio.sleep(30)
