"""Wire one site's service together from its config: snapshot, store, events, inbox, intake,
shell.

The runner (`gridflex run`), the demo and the tests all build the service here, so they run the
same code; only the clock, the outbox (MQTT or none) and the drivers differ.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime

from pydantic import BaseModel

from adapters.devices.modbus import ModbusDriver
from adapters.devices.modbus_batch import ModbusEndpoint
from adapters.devices.profile import load_profile
from adapters.transport.modbus_pool import ModbusPool, ModbusTarget
from adapters.transport.mqtt_session import MqttSession
from agent.app.drivers import build_drivers
from agent.app.pools import pool_schedulers
from agent.app.shadow import read_only
from agent.app.site_facts import AlarmBook
from agent.config import SiteConfig
from agent.ports import Clock, DeviceDriver
from agent.service.checks import IntakeLimits, MessageChecks
from agent.service.cycle import DriftCheck, Shell, ShellSettings
from agent.service.events import EventBook
from agent.service.grid import GridIntake
from agent.service.inbox import Inbox
from agent.service.intake import Intake
from agent.service.messages import (
    ComplianceOut,
    DispatchAck,
    GridAck,
    IntervalMissed,
    OverPeriod,
    OverrideAck,
)
from agent.service.metrics import Metrics
from agent.service.outbox import ConfirmedPublisher, MemoryOutbox, Outbox, PersistedOutbox
from agent.service.outcomes import OverrideOutcomes
from agent.service.ratelimit import TopicRateLimit
from agent.service.replay import ReplayGuard
from agent.service.site_meter import SiteMeter
from agent.service.snapshot import SnapshotStore
from agent.service.store import EventRecord, Store

__all__ = ["MemoryOutbox", "Outbox", "Service", "ack_of", "assemble"]

log = logging.getLogger("gridflex.service")


def ack_of(record: EventRecord) -> DispatchAck:
    c = record.compliance
    compliance = None
    if c is not None:
        compliance = ComplianceOut(
            baseline_kw=None if c.baseline_kw is None else round(c.baseline_kw, 3),
            cycles=c.cycles,
            compliant_cycles=c.compliant_cycles,
            worst_over_kw=c.worst_over_kw,
            worst_at=c.worst_at_utc,
            asked_kwh=round(c.asked_kwh, 3),
            delivered_kwh=round(c.delivered_kwh, 3),
            judged_on=c.judged_on,
            ramp_cycles=c.ramp_cycles,
            over_periods=[
                OverPeriod(
                    start=datetime.fromisoformat(start),
                    end=None if end is None else datetime.fromisoformat(end),
                )
                for start, end in c.over_periods
            ],
            over_periods_total=c.over_periods_total,
            intervals=c.intervals,
            intervals_within=c.intervals_within,
            intervals_missed=[
                IntervalMissed(
                    start=datetime.fromisoformat(start), average_kw=kw, set_point_kw=set_kw
                )
                for start, kw, set_kw in c.intervals_missed
            ],
        )
    return DispatchAck(
        event_id=record.event_id,
        status=record.status,
        reason=record.reason,
        requested_kw=record.requested_kw,
        achieved_kw=record.achieved_kw,
        at=record.updated_at_utc,
        compliance=compliance,
        expected_shortfall_kw=record.expected_shortfall_kw or None,
    )


@dataclass
class Service:
    config: SiteConfig
    snapshot: SnapshotStore
    store: Store
    events: EventBook
    intake: Intake
    shell: Shell
    metrics: Metrics
    pool: ModbusPool
    outbox: Outbox
    wake: asyncio.Event
    grid: GridIntake
    inbox: Inbox
    # who else hears every ack (topic, message) the service sends: the Sparkplug edge node
    # reports command outcomes and event states from them
    ack_listeners: list[Callable[[str, BaseModel], None]] = field(default_factory=list)
    alarms: AlarmBook = field(default_factory=AlarmBook)  # with since-when, for telemetry
    # how an ack leaves: through the outbox, in the service's mode, to every listener
    send_ack: Callable[[str, BaseModel], None] | None = None

    async def close(self) -> None:
        await self.pool.close()
        await asyncio.to_thread(self.store.close)  # commits what is queued


Send = Callable[[str, BaseModel], None]


def _intakes(  # noqa: PLR0917 - the parts of the service the intakes work with
    config: SiteConfig,
    events: EventBook,
    snapshot: SnapshotStore,
    store: Store,
    metrics: Metrics,
    send: Send,
    clock: Clock,
    monotonic: Callable[[], float],
) -> tuple[Intake, GridIntake]:
    """The dispatch/override intake and the grid intake: one set of keys, one replay memory and
    one rate budget per topic and sender between them."""
    mqtt = config.mqtt
    secret = mqtt.hmac_secret if mqtt is not None else None
    secret_bytes = None if secret is None else secret.get_secret_value().encode()
    keys = {} if mqtt is None else {k: v.get_secret_value().encode()
                                    for k, v in mqtt.hmac_keys.items()}  # fmt: skip
    limits = IntakeLimits() if mqtt is None else IntakeLimits(
        replay_window_s=mqtt.replay_window_s, clock_skew_s=mqtt.clock_skew_s,
        max_message_bytes=mqtt.max_message_bytes,
    )  # fmt: skip
    replay = ReplayGuard(store, limits.replay_window_s, clock())
    rate = TopicRateLimit(mqtt.max_messages_per_s if mqtt else 20.0,
                          mqtt.max_burst if mqtt else 200, monotonic=monotonic)  # fmt: skip
    intake = Intake(
        config.fleet(),
        events,
        snapshot,
        store,
        clock=clock,
        publish_dispatch_ack=lambda ack: send("dispatch/ack", ack),
        publish_override_ack=lambda ack: send("override/ack", ack),
        hmac_secret=secret_bytes,
        hmac_keys=keys,
        limits=limits,
        replay=replay,
        rate=rate,
        site_id=config.site.id,
    )
    grid = GridIntake(
        snapshot,
        store,
        config.decision_policy(),
        clock=clock,
        publish_ack=lambda ack: send("grid/ack", ack),
        checks=MessageChecks(secret_bytes, limits, keys, config.site.id),
        metrics=metrics,
        replay=replay,
        rate=rate,
    )
    return intake, grid


def _note_mode(store: Store, mode: str, clock: Clock) -> None:
    """Say the mode at every start, and a change of it once (audited: `mode-changed`)."""
    saved = store.load_state("mode")
    before = saved.get("mode") if isinstance(saved, dict) else None
    if mode == "shadow":
        log.warning("shadow mode: every device is read, none is written")
    if before is not None and before != mode:
        log.warning("service mode changed from %s to %s", before, mode)
        store.audit(clock(), "mode-changed", "site", {"from": before, "to": mode}, "config")
    store.save_state("mode", {"mode": mode})


def _in_mode(ack: BaseModel, *, shadow: bool) -> BaseModel:
    """In shadow mode every ack says so (`mode: shadow`): no device was written."""
    if shadow and isinstance(ack, DispatchAck | OverrideAck | GridAck):
        return ack.model_copy(update={"mode": "shadow"})
    return ack


def _site_meter(
    config: SiteConfig, pool: ModbusPool, clock: Clock, monotonic: Callable[[], float]
) -> SiteMeter | None:
    section = config.site_meter
    if section is None:
        return None
    address = section.driver
    target = ModbusTarget("site-meter", address.host, address.port, address.unit_id,
                          address.timeout_s)  # fmt: skip
    profile = load_profile(address.profile)
    driver = ModbusDriver("site-meter", address, pool, profile=profile, clock=clock,
                          endpoint=ModbusEndpoint(pool, target, profile, clock))  # fmt: skip
    return SiteMeter(driver, tolerance_kw=section.tolerance_kw,
                     tolerance_pct=section.tolerance_pct,
                     stale_after_s=section.stale_after_s, monotonic=monotonic)  # fmt: skip


def assemble(
    config: SiteConfig,
    *,
    clock: Clock,
    outbox: Outbox | None = None,
    drivers: Mapping[str, DeviceDriver] | None = None,
    settings: ShellSettings | None = None,
    mqtt_session: MqttSession | None = None,
    monotonic: Callable[[], float] = time.monotonic,
) -> Service:
    """Build the service; resumes live events, overrides, the grid condition and engine memory
    from the database.

    Without `drivers`, every configured device gets its driver (agent.app.drivers); those
    reached over MQTT use `mqtt_session`, the devices' session (ConfigError when there is none).
    `monotonic`: the seconds devices settle in (a test's stepped clock).
    """
    outbox = outbox or MemoryOutbox()
    listeners: list[Callable[[str, BaseModel], None]] = []
    shadow = config.service.mode == "shadow"

    def send(topic: str, ack: BaseModel) -> None:
        assert outbox is not None  # set above; mypy does not narrow inside a closure
        outbox.send(topic, _in_mode(ack, shadow=shadow))
        for listener in listeners:
            listener(topic, ack)

    wake = asyncio.Event()
    metrics = Metrics()
    snapshot = SnapshotStore(on_urgent=wake.set, started_at_utc=clock())
    pool = ModbusPool()
    drift_checks: Mapping[str, DriftCheck] = {}
    if drivers is None:  # first: a device that cannot be driven stops the start here
        built = build_drivers(config, pool, mqtt=mqtt_session, clock=clock)
        drivers, drift_checks = built.drivers, built.drift_checks
    drivers = read_only(drivers) if shadow else drivers  # refuse writes, whoever asks
    store = Store(config.service.database, write_behind=True)
    _note_mode(store, config.service.mode, clock)
    if store.quarantined is not None:  # a damaged database set aside: an alarm, and a record
        metrics.errors.labels(kind="store_quarantined").inc()
        store.audit(clock(), "store-quarantined", str(store.quarantined),
                    {"price_kept": store.salvaged_price is not None}, "store")  # fmt: skip
    if isinstance(outbox, ConfirmedPublisher):
        outbox = PersistedOutbox(store, outbox)  # acks are stored before they are published

    def on_verified(record: EventRecord, latency_s: float) -> None:
        del record
        metrics.dispatch_verified_seconds.observe(latency_s)

    policy = config.decision_policy()
    events = EventBook(store, lambda r: send("dispatch/ack", ack_of(r)), on_verified, metrics,
                       ramp_window_s=config.service.ramp_window_s,
                       resource=policy.resource)  # fmt: skip
    inbox = Inbox(snapshot, wake.set, metrics)
    fleet = config.fleet()
    intake, grid = _intakes(config, events, snapshot, store, metrics, send, clock, monotonic)
    service_config = config.service
    shell = Shell(
        fleet,
        policy,
        drivers,
        snapshot,
        clock=clock,
        settings=replace(settings, shadow=settings.shadow or shadow)
        if settings is not None
        else ShellSettings(
            verify_timeout_s=service_config.verify_timeout_s,
            restore_batch_size=service_config.restore_batch_size,
            restore_batch_interval_s=service_config.restore_batch_interval_s,
            shadow=shadow,
        ),
        store=store,
        events=events,
        metrics=metrics,
        drift_checks=drift_checks,
        overrides=OverrideOutcomes(store, lambda ack: send("override/ack", ack)),
        pools=pool_schedulers(config),
        inbox=inbox,
        monotonic=monotonic,
        site_meter=_site_meter(config, pool, clock, monotonic),
    )
    events.reach = shell.reach_kw
    intake.beyond_reach = config.policy.beyond_reach
    # resume: engine memory, overrides, the grid condition, then live events (in that order:
    # the events' shed baselines live in the memory)
    saved = store.load_memory()
    if saved is not None:
        shell.restore_memory(saved)
    last_price = store.load_price()
    if last_price is not None:  # decided on while fresh, judged stale by its interval's age
        snapshot(last_price)
    now = clock()
    for override in store.overrides():
        if override.is_active(now):
            snapshot(override)
        else:
            store.delete_override(override.override_id)
    grid.resume()
    events.resume()
    wake.clear()
    return Service(
        config,
        snapshot,
        store,
        events,
        intake,
        shell,
        metrics,
        pool,
        outbox,
        wake,
        grid,
        inbox,
        listeners,
        send_ack=send,
    )
