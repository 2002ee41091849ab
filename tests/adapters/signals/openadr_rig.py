"""A real openleadr VTN on loopback and a small simulated site for the OpenADR VEN tests.

The VTN is openleadr's own OpenADRServer with the handlers a utility's VTN would have: it
registers VENs (and forgets them when restarted, as a VTN that lost its session table does),
requests TELEMETRY_USAGE reports and keeps what it receives, and records opt responses and
oadrCreateOpt messages (openleadr ships an EiOpt service stub; ours answers it).

The site is decide() on a small fleet: obligations pushed into the sink feed a Signals snapshot,
each cycle decides, and the SiteView reads the decided site load back (what the VEN reports).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from openleadr import OpenADRServer, errors, objects, utils
from openleadr import hooks as openleadr_hooks
from openleadr.service import OptService
from openleadr.service.decorators import handler

from agent.domain.fleet import (
    ControlMode,
    DeviceKind,
    DeviceSpec,
    Fleet,
    FleetState,
    LoadClass,
    Priority,
)
from agent.domain.settings import Policy
from agent.domain.signals import Obligation, ObligationCancel, Signals
from agent.policy import Memory, decide
from tests.adapters.signals.openadr_pki import Pki

PREFIX = "/OpenADR2/Simple/2.0b"
VTN_ID = "GRIDFLEX-TEST-VTN"


class _RecordingOptService(OptService):  # type: ignore[misc]
    def __init__(self, vtn_id: str, received: list[dict[str, Any]]) -> None:
        super().__init__(vtn_id)
        self.received = received

    @handler("oadrCreateOpt")  # type: ignore[untyped-decorator]
    async def create_opt(self, payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        self.received.append(payload)
        return "oadrCreatedOpt", {"opt_id": payload["opt_id"]}


@dataclass
class Vtn:
    port: int
    poll_s: float = 1.0  # oadrPollFreq asked of VENs (openleadr parses whole seconds)
    report_s: int = 1
    registrations: dict[str, str] = field(default_factory=dict)  # ven_id -> registration id
    reports: list[tuple[datetime, float]] = field(default_factory=list)
    opt_types: list[tuple[str, str]] = field(default_factory=list)  # (event id, opt type)
    created_opts: list[dict[str, Any]] = field(default_factory=list)
    pki: Pki | None = None  # mutual TLS and signed messages when given
    # a VTN that refuses a venID it does not know (463), as one that lost its registrations
    # does, instead of taking the one the VEN offers
    refuse_unknown_ids: bool = False
    # poll answers from a queue of messages (openleadr's "external" polling), one per poll
    queued: dict[str, list[Any]] | None = None
    # with `queued`: what the VTN answers to a VEN's oadrRequestEvent (the sync after it
    # registers), by venID; polls still answer from the queue only
    on_request: dict[str, list[Any]] = field(default_factory=dict)
    requested_poll: str | None = None  # an oadrPollFreq as written, e.g. "PT0.5S"
    server: Any = None
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    @property
    def url(self) -> str:
        scheme = "http" if self.pki is None else "https"
        return f"{scheme}://127.0.0.1:{self.port}{PREFIX}"

    async def start(self) -> None:
        """Start (or restart) on the same port. A restart forgets every registration."""
        self.registrations.clear()
        pki = self.pki
        tls: dict[str, Any] = {}
        if pki is not None:
            tls = {
                "cert": str(pki.vtn_cert), "key": str(pki.vtn_key),  # signs messages
                "http_cert": str(pki.vtn_cert), "http_key": str(pki.vtn_key),
                "http_ca_file": str(pki.ca_file),  # and asks VENs for a client certificate
            }  # fmt: skip
        server = OpenADRServer(
            **tls,
            vtn_id=VTN_ID,
            http_port=self.port,
            http_host="127.0.0.1",
            requested_poll_freq=self.requested_poll or timedelta(seconds=self.poll_s),
            ven_lookup=self._lookup,
            show_fingerprint=False,
        )
        if self.queued is not None:
            server.add_handler("on_poll", self._next_queued)
            server.add_handler("on_request_event", self._requested)
        server.add_handler("on_create_party_registration", self._register)
        server.add_handler("on_register_report", self._offer)
        opt_service = _RecordingOptService(VTN_ID, self.created_opts)
        server.app.router.add_post(f"{PREFIX}/EiOpt", opt_service.handler)
        await server.run()
        self.server = server

    async def stop(self) -> None:
        await self.server.stop()

    # -- VTN handlers ------------------------------------------------------------------------
    def _register(self, payload: dict[str, Any]) -> tuple[str, str]:
        offered = payload.get("ven_id")
        if self.refuse_unknown_ids and offered and offered not in self.registrations:
            raise errors.NotRegisteredOrAuthorizedError(f"venID {offered} is not registered")
        if self.refuse_unknown_ids:
            offered = offered or f"ven-{payload['ven_name']}-{next(self._ids)}"
        ven_id = offered or f"ven-{payload['ven_name']}"
        self.registrations[ven_id] = f"reg-{next(self._ids)}"
        return ven_id, self.registrations[ven_id]

    def _next_queued(self, ven_id: str) -> Any:
        assert self.queued is not None
        waiting = self.queued.get(ven_id) or []
        if not waiting:
            return None
        message = waiting.pop(0)
        if isinstance(message, tuple):  # a message as (type, payload), e.g. oadrCreateReport
            return message
        return "oadrDistributeEvent", {"events": utils.order_events(message)}

    def _requested(self, ven_id: str) -> list[Any] | None:  # openleadr passes ven_id by name
        return self.on_request.get(ven_id)

    def _lookup(self, ven_id: str) -> dict[str, Any]:
        if ven_id not in self.registrations:
            return {}
        found = {"ven_id": ven_id, "registration_id": self.registrations[ven_id]}
        if self.pki is not None:  # the VEN fingerprint the site engineer handed over
            found["fingerprint"] = Pki.fingerprint(self.pki.ven_cert)
        return found

    def report_request(
        self, report_specifier_id: str, every: timedelta = timedelta(0), r_id: str = "status"
    ) -> tuple[str, dict[str, Any]]:
        """An oadrCreateReport asking for one report by its specifier id (METADATA included),
        every `every` (zero: once)."""
        request = {
            "report_request_id": f"rr-{next(self._ids)}",
            "report_specifier": {
                "report_specifier_id": report_specifier_id,
                "granularity": every,
                "report_back_duration": every,
                "specifier_payloads": [{"r_id": r_id, "reading_type": "x-notApplicable"}],
            },
        }
        return "oadrCreateReport", {
            "report_requests": [request],
            "request_id": f"req-{next(self._ids)}",
        }

    def cancel_report(self, report_request_id: str) -> tuple[str, dict[str, Any]]:
        return "oadrCancelReport", {
            "report_request_id": report_request_id,
            "report_to_follow": False,
            "request_id": f"req-{next(self._ids)}",
        }

    def _offer(  # openleadr's "compact" on_register_report: it calls by these names
        self,
        *,
        ven_id: str,
        resource_id: str,
        measurement: str,
        unit: str,
        scale: str,
        min_sampling_interval: timedelta,
        max_sampling_interval: timedelta,
    ) -> tuple[Callable[[list[tuple[datetime, float]]], None], timedelta] | None:
        if measurement != "RealPower":
            return None
        return self.reports.extend, timedelta(seconds=self.report_s)

    def _opt(self, ven_id: str, event_id: str, opt_type: str) -> None:
        self.opt_types.append((event_id, opt_type))

    # -- what a program operator does ----------------------------------------------------------
    def event(
        self,
        ven_id: str,
        payloads: list[float],
        *,
        interval_s: float = 60,
        start: datetime | None = None,
        signal_name: str = "simple",
        signal_type: str = "level",
        ramp_up: timedelta | None = None,
        event_id: str | None = None,
        targets: list[objects.Target] | None = None,
        market_context: str = "http://program.example/dr",
        measurement: objects.Measurement | None = None,
        priority: int = 0,
    ) -> objects.Event:
        start = start or datetime.now(UTC)
        intervals = [
            objects.Interval(
                dtstart=start + timedelta(seconds=k * interval_s),
                duration=timedelta(seconds=interval_s),
                signal_payload=value,
                uid=k,
            )
            for k, value in enumerate(payloads)
        ]
        return objects.Event(
            event_descriptor=objects.EventDescriptor(
                event_id=event_id or f"evt-{next(self._ids)}",
                modification_number=0,
                market_context=market_context,
                event_status="far",
                priority=priority,
            ),
            active_period=objects.ActivePeriod(
                dtstart=start,
                duration=timedelta(seconds=interval_s * len(payloads)),
                ramp_up_period=ramp_up,
            ),
            event_signals=[
                objects.EventSignal(
                    intervals=intervals,
                    signal_name=signal_name,
                    signal_type=signal_type,
                    signal_id=f"sig-{next(self._ids)}",
                    measurement=measurement,
                )
            ],
            targets=targets if targets is not None else [objects.Target(ven_id=ven_id)],
        )

    def publish(self, ven_id: str, event: objects.Event) -> str:
        event_id: str = self.server.add_raw_event(ven_id=ven_id, event=event, callback=self._opt)
        return event_id

    def modify(self, ven_id: str, event_id: str, payloads: list[float]) -> None:
        event = utils.find_by(self.server.events[ven_id], "event_descriptor.event_id", event_id)
        for interval, value in zip(event.event_signals[0].intervals, payloads, strict=True):
            interval.signal_payload = value
        utils.increment_event_modification_number(event)
        self.server.event_callbacks[event_id] = (event, self._opt)
        self.server.events_updated[ven_id] = True

    def cancel(self, ven_id: str, event_id: str) -> None:
        event = utils.find_by(self.server.events[ven_id], "event_descriptor.event_id", event_id)
        self.server.event_callbacks[event_id] = (event, self._opt)
        self.server.cancel_event(ven_id, event_id)


# -- the simulated site ----------------------------------------------------------------------
def small_fleet() -> Fleet:
    """250 kW: 20 miners of 10 kW (interruptible), 2 GPU servers of 20 kW (protected, min 5),
    10 kW of controls (critical)."""
    classes = [
        LoadClass("miners", Priority.INTERRUPTIBLE, 80.0),
        LoadClass("inference", Priority.PROTECTED, 1900.0),
        LoadClass("controls", Priority.CRITICAL, float("inf")),
    ]
    devices = [
        DeviceSpec(f"miner-{k:02d}", "miners", DeviceKind.MINER, 10.0, 0.0, ControlMode.ON_OFF)
        for k in range(20)
    ]
    devices += [
        DeviceSpec(f"gpu-{k}", "inference", DeviceKind.GPU, 20.0, 5.0, ControlMode.POWER_LIMIT)
        for k in range(2)
    ]
    devices.append(
        DeviceSpec("controls", "controls", DeviceKind.OTHER, 10.0, 0.0, ControlMode.ON_OFF)
    )
    return Fleet.build(classes, devices)


@dataclass
class SimSite:
    """A SiteView over decide(): what the shell would do, cycle by cycle, without devices."""

    fleet: Fleet = field(default_factory=small_fleet)
    policy: Policy = field(default_factory=Policy)
    cycle_s: float = 0.05
    obligations: dict[str, Obligation] = field(default_factory=dict)
    received: list[Obligation | ObligationCancel] = field(default_factory=list)
    changed_at: list[tuple[float, float]] = field(default_factory=list)  # (monotonic, site kW)
    overridden: bool = False  # what manual_override() answers
    _site_kw: float = float("nan")
    _memory: Memory | None = None

    def sink(self, value: object) -> None:
        assert isinstance(value, Obligation | ObligationCancel)
        self.received.append(value)
        if isinstance(value, Obligation):
            self.obligations[value.event_id] = value
        else:
            self.obligations.pop(value.event_id, None)
        self.cycle()  # a dispatch starts a cycle at once, as the shell does

    def cycle(self) -> None:
        memory = self._memory or Memory.initial(self.fleet)
        signals = Signals(obligations=tuple(self.obligations.values()))
        state = FleetState.all_available(self.fleet)
        decision = decide(signals, state, self.policy, memory, datetime.now(UTC))
        self._memory = decision.memory
        if decision.site_kw != self._site_kw:
            self.changed_at.append((asyncio.get_running_loop().time(), decision.site_kw))
        self._site_kw = decision.site_kw

    async def run(self) -> None:
        while True:
            self.cycle()
            await asyncio.sleep(self.cycle_s)

    # SiteView
    def site_kw(self) -> float:
        return self._site_kw

    def capacity_kw(self) -> float:
        return float(self.fleet.rated_kw.sum())

    def baseline_kw(self, event_id: str) -> float | None:
        return None if self._memory is None else self._memory.baselines_kw.get(event_id)

    def online(self) -> bool:
        return True

    def manual_override(self) -> bool:
        return self.overridden

    def floor_kw(self, *, include_protected: bool) -> float:
        keep = {Priority.CRITICAL} if include_protected else {Priority.CRITICAL, Priority.PROTECTED}
        total = 0.0
        for pos, load_class in enumerate(self.fleet.classes):
            if load_class.priority in keep:
                total += float(self.fleet.rated_kw[self.fleet.members[pos]].sum())
        return total


async def wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.02)


@contextlib.contextmanager
def vtn_received() -> Iterator[list[str]]:
    """Every message a VTN in this process receives, as the text sent (openleadr's global
    before_parse hook, read by the tests and never by the VEN)."""
    received: list[str] = []

    async def capture(content: bytes | str) -> None:  # openleadr awaits its hooks
        received.append(content.decode() if isinstance(content, bytes) else content)

    openleadr_hooks.register("before_parse", capture)
    try:
        yield received
    finally:
        openleadr_hooks.HOOKS["before_parse"].remove(capture)


def tls_overrides(pki: Pki) -> dict[str, object]:
    """The VEN's openadr settings for mutual TLS with the test PKI and a pinned VTN."""
    return {
        "allow_plain_http": False,
        "cert_file": pki.ven_cert,
        "key_file": pki.ven_key,
        "ca_file": pki.ca_file,
        "vtn_fingerprint": Pki.fingerprint(pki.vtn_cert).lower(),
    }


class _Peer(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class _Source(Protocol):
    async def run(self, sink: Callable[[object], None]) -> None: ...


@contextlib.asynccontextmanager
async def running_with(
    vtn: _Peer, site: SimSite, ven: _Source, ready: Callable[[], bool] | None = None
) -> AsyncIterator[None]:
    """A VTN (2.0b or 3.0), the simulated site and a VEN running until the block ends; waits
    for `ready` (the VEN registered, say) before the block starts."""
    await vtn.start()
    tasks = [asyncio.create_task(site.run()), asyncio.create_task(ven.run(site.sink))]
    try:
        if ready is not None:
            await wait_until(ready, 10, "the VEN to be ready")
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await vtn.stop()
