"""A site whose physics is kept apart from what its meters say, for `gridflex run` to face.

The site of the physics tests: 48 miners on two switched PDUs (3.25 kW an outlet), a third PDU
feeding 12 protected GPU servers (3 kW) and 8 coolers that follow the miners (3.25 kW), the
critical controls behind a Janitza feeder meter (16 kW, read-only) and, optionally, the site's
revenue meter at the point of interconnection, which reports what the other endpoints physically
draw. 234 kW in all, 52 kW of it protected or critical.

The endpoints are served from a thread of their own (its own event loop), so the test can make a
meter freeze, lie or fall mute and a PDU reboot while the service runs; the physical draw is
sampled there every 0.1 s, with the state of every protected and critical outlet.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from adapters.devices.profile import load_profile
from adapters.sim.modbus_server import SimEndpoint, SimModbusSite, SimSiteMeter
from tests.helpers.mqtt_watch import Watcher, now_iso
from tests.helpers.peers import Broker, free_port
from tests.helpers.service_process import start_service

MINER_KW, GPU_KW, COOLER_KW, CONTROLS_KW = 3.25, 3.0, 3.25, 16.0
FULL_KW = 48 * MINER_KW + 12 * GPU_KW + 8 * COOLER_KW + CONTROLS_KW  # 234
MINER_LAG_S = 1.5  # a miner takes this long to stop drawing after its supply opens

SITE = """
site: {{id: phys-{tag}, timezone: America/Chicago}}
classes:
  miners: {{priority: interruptible, economics: {{kind: fixed, value_usd_per_mwh: 90}}}}
  cooling: {{priority: flexible, follows: miners}}
  gpu: {{priority: protected}}
  controls: {{priority: critical}}
devices:
  - {{id: miner, kind: pdu_outlet, class: miners, count: 48, rated_kw: {miner_kw}, min_on_s: 0,
     min_off_s: 0, driver: {{type: modbus, host: {host}.1, port: {port},
     profile: rack_pdu_switched, channels_per_host: 24, timeout_s: 0.5}}}}
  - {{id: gpu, kind: pdu_outlet, class: gpu, count: 12, rated_kw: {gpu_kw}, min_on_s: 0,
     min_off_s: 0, driver: {{type: modbus, host: {host}.3, port: {port},
     profile: rack_pdu_switched, channels_per_host: 24, timeout_s: 0.5}}}}
  - {{id: cooler, kind: pdu_outlet, class: cooling, count: 8, rated_kw: {cooler_kw},
     min_on_s: 0, min_off_s: 0, driver: {{type: modbus, host: {host}.3, port: {port},
     profile: rack_pdu_switched, channel: 13, channels_per_host: 24, timeout_s: 0.5}}}}
  - {{id: controls, kind: other, class: controls, rated_kw: {controls_kw}, driver: {{type: modbus,
     host: {host}.4, port: {port}, profile: three_phase_meter, timeout_s: 0.5}}}}
policy: {{min_dwell_s: 0, stale_posture: run_all}}
prices: {prices}
mqtt: {{host: 127.0.0.1, port: {mqtt_port}, client_id: phys-{tag}, topic_prefix: {prefix}}}
service: {{mode: {mode}, cycle_s: 0.5, database: "{db}", metrics_port: null,
          restore_batch_size: 100, restore_batch_interval_s: 0, verify_timeout_s: 2,
          ramp_window_s: {ramp_s}}}
{meter}
"""
METER = """site_meter: {{driver: {{type: modbus, host: {host}.5, port: {port},
            profile: three_phase_meter, timeout_s: 0.5}}, tolerance_kw: 5}}"""


@dataclass
class Sample:
    at_s: float  # monotonic
    physical_kw: float
    protected_off: int  # protected and critical outlets switched off


@dataclass
class PhysicsSite:
    """The endpoints by role; `meter` is None on a site without a revenue meter."""

    host: str
    port: int
    pdu_a: SimEndpoint
    pdu_b: SimEndpoint
    pdu_c: SimEndpoint  # GPU servers on 1..12, coolers on 13..20
    controls: SimEndpoint
    meter: SimSiteMeter | None
    samples: list[Sample] = field(default_factory=list)
    _loop: asyncio.AbstractEventLoop | None = None

    @property
    def loads(self) -> list[SimEndpoint]:
        return [self.pdu_a, self.pdu_b, self.pdu_c, self.controls]

    def physical_kw(self) -> float:
        return sum(e.physical_kw() for e in self.loads)

    def site_file(self, tmp_path: Path, mqtt_port: int, *, tag: str, prefix: str,
                  prices: str = "{source: none}", ramp_s: float = 5.0,
                  mode: str = "control") -> Path:  # fmt: skip
        meter = "" if self.meter is None else METER.format(host=self.host, port=self.port)
        text = SITE.format(tag=tag, prefix=prefix, host=self.host, port=self.port,
                           mqtt_port=mqtt_port, db=tmp_path / "gridflex.sqlite3", prices=prices,
                           miner_kw=MINER_KW, gpu_kw=GPU_KW, cooler_kw=COOLER_KW,
                           controls_kw=CONTROLS_KW, ramp_s=ramp_s, meter=meter,
                           mode=mode)  # fmt: skip
        path = tmp_path / "site.yaml"
        path.write_text(text)
        return path

    def do(self, change: Callable[[], Any]) -> Any:
        """Run `change` on the endpoints' own thread (between two requests) and return what it
        returns."""
        assert self._loop is not None

        async def call() -> Any:
            return change()

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(timeout=10)

    def since(self, at_s: float) -> list[Sample]:
        return [s for s in self.samples if s.at_s >= at_s]


def over_s(samples: list[Sample], ceiling_kw: float) -> float:
    """Seconds the site physically drew more than `ceiling_kw` (a 0.5 % meter tolerance)."""
    total = 0.0
    for a, b in itertools.pairwise(samples):
        if a.physical_kw > ceiling_kw * 1.005 + 0.1:
            total += b.at_s - a.at_s
    return total


def most_writes_in(
    endpoint: SimEndpoint, window_s: float, between: tuple[float, float] | None = None
) -> int:
    """The most relay writes any one outlet of `endpoint` took within any `window_s` (of those
    written `between` two monotonic times)."""
    low, high = between or (-math.inf, math.inf)
    by_channel: dict[int, list[float]] = {}
    for at, channel in endpoint.relay_writes:
        if low <= at < high:
            by_channel.setdefault(channel, []).append(at)
    most = 0
    for times in by_channel.values():
        for k, first in enumerate(times):
            most = max(most, sum(1 for t in times[k:] if t - first <= window_s))
    return most


def writes_since(endpoint: SimEndpoint, at_s: float) -> int:
    return sum(1 for t, _ in endpoint.relay_writes if t >= at_s)


def _switch_off(endpoint: SimEndpoint, channels: range) -> None:
    on_off = endpoint.profile.actions.on_off
    assert on_off is not None
    for channel in channels:
        endpoint.controls[(on_off.ref, channel)] = float(on_off.off_value)


@contextmanager
def physics_site(host: str, *, with_meter: bool = True) -> Iterator[PhysicsSite]:
    """The site's endpoints served on `host`.1 .. `host`.5 and one free port, sampled."""
    port = free_port()
    pdu = load_profile("rack_pdu_switched")
    feeder = load_profile("three_phase_meter")
    pdu_c = SimEndpoint(f"{host}.3", port, pdu, rated_w=GPU_KW * 1000,
                        channel_rated_w=dict.fromkeys(range(13, 21), COOLER_KW * 1000),
                        power_lag_s=MINER_LAG_S)  # fmt: skip
    _switch_off(pdu_c, range(21, 25))  # outlets with nothing behind them
    site = PhysicsSite(
        host, port,
        pdu_a=SimEndpoint(f"{host}.1", port, pdu, rated_w=MINER_KW * 1000,
                          power_lag_s=MINER_LAG_S),
        pdu_b=SimEndpoint(f"{host}.2", port, pdu, rated_w=MINER_KW * 1000,
                          power_lag_s=MINER_LAG_S),
        pdu_c=pdu_c,
        controls=SimEndpoint(f"{host}.4", port, feeder, rated_w=CONTROLS_KW * 1000),
        meter=None,
    )  # fmt: skip
    if with_meter:
        site.meter = SimSiteMeter(f"{host}.5", port, feeder, feeds=site.loads)
    endpoints = [*site.loads, *([site.meter] if site.meter is not None else [])]
    ready = threading.Event()
    stop: asyncio.Event | None = None

    async def serve() -> None:
        nonlocal stop
        stop = asyncio.Event()
        site._loop = asyncio.get_running_loop()
        served = SimModbusSite(endpoints)
        await served.start()
        ready.set()
        try:
            while not stop.is_set():
                protected_off = sum(not pdu_c.is_on(c) for c in range(1, 13))
                site.samples.append(Sample(time.monotonic(), site.physical_kw(), protected_off))
                with suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.1)
        finally:
            await served.stop()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(10), "the simulated site did not start"
    try:
        yield site
    finally:
        if site._loop is not None and stop is not None:
            site._loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=10)


# -- the service facing it -------------------------------------------------------------
RAMP_S = 5.0  # the site file's service.ramp_window_s
PROTECTED_KW = 12 * GPU_KW + CONTROLS_KW


@dataclass
class Running:
    site: PhysicsSite
    config: Path
    watcher: Watcher
    log: Path
    acks: list[dict[str, Any]]

    def telemetry(self, test: Callable[[dict[str, Any]], bool], timeout_s: float = 20) -> dict:
        return json.loads(self.watcher.wait_for("telemetry", lambda p: test(json.loads(p)),
                                                timeout_s))  # fmt: skip

    def dispatch(self, event_id: str, target_kw: float, *, lasting_s: float) -> float:
        """Send a limit now, ending `lasting_s` from now; the monotonic time it was sent."""
        end = datetime.now(UTC) + timedelta(seconds=lasting_s)
        self.watcher.send("dispatch", {"event_id": event_id, "kind": "limit",
                                       "target_kw": target_kw, "issued_at": now_iso(),
                                       "end": end.isoformat()})  # fmt: skip
        return time.monotonic()

    def ack(self, event_id: str, status: str, timeout_s: float = 20) -> dict[str, Any]:
        def matches(payload: str) -> bool:
            message = json.loads(payload)
            self.acks.append({**message, "_at_s": time.monotonic()})
            return bool(message["event_id"] == event_id and message["status"] == status)

        return json.loads(self.watcher.wait_for("dispatch/ack", matches, timeout_s))

    def statuses(self, event_id: str) -> list[str]:
        return [a["status"] for a in self.acks if a["event_id"] == event_id]


@contextmanager
def running(tmp_path: Path, broker: Broker, host: str, *, with_meter: bool = True,
            prices: str = "{source: none}", full_first: bool = True,
            mode: str = "control") -> Iterator[Running]:  # fmt: skip
    tag = uuid.uuid4().hex[:6]
    prefix = f"gridflex/phys-{tag}"
    with physics_site(host, with_meter=with_meter) as site:
        config = site.site_file(tmp_path, broker.port, tag=tag, prefix=prefix, prices=prices,
                                ramp_s=RAMP_S, mode=mode)  # fmt: skip
        watcher = Watcher(broker, prefix)
        log = tmp_path / "run.log"
        service = start_service(config, log)
        try:
            run = Running(site, config, watcher, log, [])
            watcher.wait_for("status", lambda p: p == "online", 30)
            # every device read, commanded and past its first settle window
            run.telemetry(lambda t: t["devices_available"] == 69, 30)
            if full_first:  # every meter believed at full load: a lie is a change from it
                run.telemetry(lambda t: t["devices_kw"] > FULL_KW - 1, 30)
            yield run
        except BaseException:
            print(log.read_text()[-6000:])
            raise
        finally:
            service.kill()
            service.wait(timeout=10)
            watcher.close()


def record_of(done: dict[str, Any]) -> dict[str, Any]:
    record: dict[str, Any] = done["compliance"]
    return record
