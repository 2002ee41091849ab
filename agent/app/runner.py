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
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from adapters.transport.mqtt_session import MqttError, MqttSession
from agent.app.assembly import MemoryOutbox, Outbox, Service, assemble
from agent.app.gpu_demand import gpu_demand_sources
from agent.app.mqtt_link import MQTT_DRIVERS, MqttLink, device_session_settings
from agent.app.openadr import openadr_link, run_openadr
from agent.app.openadr3 import run_openadr3
from agent.app.prices import price_source
from agent.app.sparkplug_link import edge_node, run_edge_node
from agent.app.status_page import StatusPage, status_view
from agent.app.systemd import notify
from agent.config import SiteConfig
from agent.policy import Rule
from agent.ports import Clock, utc_now
from agent.service.cycle import CycleReport
from agent.service.devices import id_ranges
from agent.service.grid import EMERGENCY, FOURCP, fourcp_in_force
from agent.service.messages import (
    DecisionGroup,
    DecisionMessage,
    PoolOut,
    SetpointOut,
    TelemetryMessage,
)
from agent.service.outbox import PersistedOutbox
from agent.service.queries import answer_device_query
from agent.service.ratelimit import TopicRateLimit
from agent.service.report import CycleReport as Report

__all__ = [
    "Runner", "decision_message", "listen", "run_service", "serve", "telemetry_message",
]  # fmt: skip

log = logging.getLogger("gridflex.service")

TELEMETRY_EVERY_S = 2.0
HOUSEKEEPING_EVERY_S = 86_400.0
BACKOFF_FIRST_S = 0.5  # after a failed cycle, doubling ...
BACKOFF_MAX_S = 30.0  # ... up to this (the watchdog, 30 s, restarts a service stuck failing)
FOLLOW_UP_S = 0.05  # a device failed: plan around it soon, but never without yielding
RESTORE_WITHIN_S = 90.0  # the restore posture's limit (the unit's TimeoutStopSec is 120 s)
OUTBOX_DRAIN_S = 5.0  # at shutdown, for acks still waiting for the broker


def telemetry_message(service: Service, now: datetime) -> TelemetryMessage:
    shell, last = service.shell, service.shell.last
    down = np.flatnonzero(~shell.available)
    decision = None if last is None else last.decision
    emergency, emergency_until = service.snapshot.emergency
    if emergency is None or (emergency_until is not None and now >= emergency_until):
        emergency, emergency_until = None, None  # none received, or lapsed before the next cycle
    warning, warning_until = service.snapshot.peak_warning
    if warning_until is not None and now >= warning_until:
        warning = None
    fourcp_on = fourcp_in_force(warning, shell.policy, now)
    return TelemetryMessage(
        at=now,
        site_kw=round(shell.site_kw(), 3),
        planned_kw=0.0 if decision is None else round(decision.site_kw, 3),
        class_kw={} if decision is None else decision.class_kw_by_name(),
        price_usd_per_mwh=None if decision is None else decision.price_usd_per_mwh,
        price_stale=True if decision is None else decision.price_stale,
        site_ceiling_kw=None if decision is None else decision.site_ceiling_kw,
        active_events=[e.event_id for e in service.events.live],
        devices_total=len(shell.fleet),
        devices_available=int(shell.available.sum()),
        unavailable=[shell.fleet.device_ids[i] for i in down[:100]],
        grid_emergency="normal" if emergency is None else emergency.level.value,
        grid_emergency_expires_at=emergency_until,
        fourcp_warning=fourcp_on,
        fourcp_warning_expires_at=warning_until if fourcp_on else None,
    )


def decision_message(report: CycleReport, previous_kw: np.ndarray | None) -> DecisionMessage:
    d = report.decision
    fleet = d.fleet
    keys = (d.rule.astype(np.int64) * len(fleet.classes) + fleet.class_index) * (
        len(d.reasons) + 1
    ) + d.reason_index
    groups = []
    for key in np.unique(keys):
        members = np.flatnonzero(keys == key)
        first = int(members[0])
        groups.append(
            DecisionGroup(
                rule=Rule(int(d.rule[first])).label,
                load_class=fleet.classes[int(fleet.class_index[first])].name,
                reason=d.reasons[int(d.reason_index[first])],
                devices=len(members),
                kw=round(float(d.setpoint_kw[members].sum()), 3),
                ids=id_ranges(fleet, members.tolist()),
            )
        )
    changed_idx = np.arange(len(fleet)) if previous_kw is None else d.changed_devices(previous_kw)
    changed = []
    for i in changed_idx[:20]:
        sp = d.setpoint(fleet.device_ids[int(i)])
        changed.append(SetpointOut(device_id=sp.device_id, kw=round(sp.kw, 3),
                                   rule=sp.rule.label, reason=sp.reason))  # fmt: skip
    return DecisionMessage(
        at=report.at_utc,
        planned_kw=round(d.site_kw, 3),
        site_ceiling_kw=d.site_ceiling_kw,
        price_usd_per_mwh=d.price_usd_per_mwh,
        groups=groups,
        changed_devices=len(changed_idx),
        changed=changed,
        pools=[PoolOut.of(p) for p in d.pools],
    )


class Runner:
    def __init__(
        self, service: Service, stop: asyncio.Event, page: StatusPage | None = None
    ) -> None:
        self.service = service
        self.stop = stop
        self.page = page
        self._previous_kw: np.ndarray | None = None
        self._decision: DecisionMessage | None = None  # the last one published
        self._ready = False
        self.failures = 0  # cycles failed in a row

    async def step(self, *, restoring: bool = False) -> Report:
        """One cycle and what follows it (the decision message): what `cycles` runs on the
        service's cadence, and what the demo and the tests run on their stepped clocks."""
        report = await self.service.shell.cycle(restoring=restoring)
        self._publish_decision(report)
        return report

    async def cycles(self) -> None:
        service, cycle_s = self.service, self.service.config.service.cycle_s
        while not self.stop.is_set():
            try:
                await self.step()
            except Exception:  # a bug must not take the site down; it is counted and logged
                self._failed()
            else:
                notify("WATCHDOG=1" if self._ready else "READY=1\nWATCHDOG=1")
                self._ready = True
                if self.failures:
                    log.info("cycles complete again after %d failed", self.failures)
                    self.failures = 0
            if self.failures:  # a pause that doubles; a message cannot cut it short
                await self._wait(min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (self.failures - 1)),
                                 wakeable=False)  # fmt: skip
            elif service.shell.follow_up:  # a device failed: plan around it soon
                await self._wait(FOLLOW_UP_S, wakeable=False)
            else:
                await self._wait(cycle_s, wakeable=True)

    def _failed(self) -> None:
        self.failures += 1
        self.service.metrics.errors.labels(kind="cycle").inc()
        if self.failures == 1:
            log.exception("cycle failed; trying again with a backoff up to %.0f s",
                          BACKOFF_MAX_S)  # fmt: skip

    async def _wait(self, timeout_s: float, *, wakeable: bool) -> None:
        """Until the timeout, SIGTERM, or (wakeable) an urgent input; always yields."""
        wake = self.service.wake
        waits = {asyncio.ensure_future(self.stop.wait())}
        if wakeable:
            waits.add(asyncio.ensure_future(wake.wait()))
        try:
            await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()
        if wakeable:
            wake.clear()

    def _publish_decision(self, report: CycleReport) -> None:
        if not report.setpoints_changed:
            return
        message = decision_message(report, self._previous_kw)
        self._previous_kw = report.decision.setpoint_kw
        self._decision = message
        self.service.outbox.send("decision", message)

    async def devices(self) -> None:
        """Read every device on its own cadence; the readings are queued for the next cycle."""
        guard = _Guard("device polling", self.service)
        while True:
            await asyncio.sleep(self.service.config.service.cycle_s)
            with guard:
                await self.service.shell.devices.poll()  # queued: the cycle takes them

    def view(self) -> dict[str, Any]:
        """What the status page and the Sparkplug edge node show, as of now."""
        return status_view(self.service, telemetry_message(self.service, utc_now()), self._decision)

    async def telemetry(self) -> None:
        guard = _Guard("telemetry", self.service)
        while True:
            with guard:
                message = telemetry_message(self.service, utc_now())
                self.service.outbox.send("telemetry", message)
                if self.page is not None:
                    self.page.update(status_view(self.service, message, self._decision))
            await asyncio.sleep(TELEMETRY_EVERY_S)

    async def housekeeping(self) -> None:
        """Daily: audit rows past the retention go (the replay memory prunes itself)."""
        days = self.service.config.service.audit_retention_days
        guard = _Guard("housekeeping", self.service)
        while days is not None:
            with guard:
                self.service.store.prune_audit(utc_now() - timedelta(days=days))
            await asyncio.sleep(HOUSEKEEPING_EVERY_S)

    async def shutdown_posture(self) -> str:
        """Leave the devices as configured, through decide(): `hold` (as they are) or `restore`
        (every class back on in staggered batches, within the live obligations, the import
        limit, the grid posture and overrides). Returns how the devices are left, in words."""
        service = self.service
        if service.config.service.shutdown_posture == "hold":
            log.info("shutdown: devices hold their last setpoints")
            return "the devices hold their last setpoints"
        log.info("shutdown: restoring the devices in staggered batches, within the obligations "
                 "and the import limit")  # fmt: skip
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RESTORE_WITHIN_S
        pause_s = service.config.service.restore_batch_interval_s
        while True:
            try:
                report = await self.step(restoring=True)
            except Exception:
                log.exception("shutdown: a restore cycle failed; the devices are left as they are")
                return "the devices are left as the last completed cycle set them"
            if report.held_back == 0:
                break
            if loop.time() + pause_s > deadline:
                log.warning("shutdown: %d device(s) not restored within %.0f s",
                            report.held_back, RESTORE_WITHIN_S)  # fmt: skip
                break
            await asyncio.sleep(pause_s)
        ceiling = report.decision.site_ceiling_kw
        within = "" if ceiling is None else f" within the {ceiling:.1f} kW ceiling"
        return f"the devices are restored{within} ({report.site_kw:.1f} kW verified)"


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
    service = assemble(config, clock=utc_now, outbox=outbox, mqtt_session=devices_session)
    try:
        if devices_session is not None:
            await _connect_devices(devices_session)
        if link is not None:
            listen(service, link)
            await link.start()
            _check_session(service, link)
        await serve(service, stop, link=link)
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
    clock: Clock = utc_now,
) -> None:
    """Run an assembled service until `stop` is set: cycles, device reads, telemetry, the price
    source and the OpenADR VEN (when the site is enrolled); then the shutdown posture."""
    config = service.config
    if config.service.metrics_port is not None:
        service.metrics.serve(config.service.metrics_port, config.service.metrics_host)
    page = None
    if config.service.status_page_port is not None:
        page = StatusPage()
        if not page.serve(config.service.status_page_host, config.service.status_page_port):
            service.metrics.errors.labels(kind="status_page").inc()
            page = None
    _announce_resumed(service, clock())
    runner = Runner(service, stop, page)
    await service.shell.poll()
    tasks = [asyncio.create_task(runner.devices()), asyncio.create_task(runner.telemetry()),
             asyncio.create_task(runner.housekeeping())]  # fmt: skip
    publisher = None
    if isinstance(service.outbox, PersistedOutbox):  # what a crash or an outage left unsent too
        publisher = asyncio.create_task(service.outbox.run())
    tasks += [asyncio.create_task(s) for s in _signal_sources(service, clock)]
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
        if publisher is not None:
            assert isinstance(service.outbox, PersistedOutbox)
            unsent = await service.outbox.drain(OUTBOX_DRAIN_S)
            if unsent:
                log.warning("%d ack(s) not confirmed by the broker at shutdown: kept, sent at "
                            "the next start", unsent)  # fmt: skip
            publisher.cancel()
            await asyncio.gather(publisher, return_exceptions=True)
        if page is not None:
            page.close()
        if link is not None:
            await link.stop()
        await service.close()
        log.info("stopped")


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
    return sources


class _Guard:
    """Keeps a long-lived task alive through what it did not expect: each failure is counted
    (gridflex_errors{kind=<task>}); the change to failing is logged once with its traceback, and
    the recovery once."""

    def __init__(self, task: str, service: Service) -> None:
        self._task = task
        self._service = service
        self._failing = False

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 _tb: object) -> bool:  # fmt: skip
        if exc is None:
            if self._failing:
                log.info("%s recovered", self._task)
                self._failing = False
            return False
        if not isinstance(exc, Exception):
            return False  # cancellation and exits go through
        self._service.metrics.errors.labels(kind=self._task).inc()
        if not self._failing:
            log.error("%s failed; it keeps running", self._task, exc_info=exc)
            self._failing = True
        return True


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
