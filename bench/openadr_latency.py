"""OpenADR latency: from the VTN creating an event to the devices verified at the new target.

Everything is the real path: an openleadr VTN on loopback asking for its default oadrPollFreq
(10 s), the service as `gridflex run` serves it (agent.app.runner.serve: the VEN started by
the service, its events through the event book, the shell's cycle), and the site's 48 PDU
outlets and 2 throttled loads as simulated Modbus devices on loopback. The VEN polls at the
VTN's rate (poll_interval_s unset). Each trial publishes a SIMPLE level-2 event starting now, at
a random phase of the poll cycle, and times until the event's "active" ack: the site's verified
load (read back from the devices) at or under the level's ceiling. The event lasts a few seconds
and lapses on its own end, so no trial waits for a cancellation to be polled. The baseline is
the same run with a 0.2 s poll: what is left when polling costs (almost) nothing.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import statistics
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydantic import BaseModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.signals.openadr_ven import DEFAULT_POLL_S
from adapters.sim.modbus_server import SimModbusSite
from agent.app.assembly import assemble
from agent.app.runner import serve
from agent.app.simsite import endpoints_for
from agent.config import OpenAdrConfig
from agent.domain.signals import PriceSignal
from agent.service.messages import DispatchAck
from tests.adapters.signals.openadr_rig import Vtn, wait_until
from tests.helpers.peers import free_port
from tests.service.site import site_config

CEILING_KW = 200.0  # of 361 kW: every PDU outlet off and the two loads throttled
TRIALS = 8
# --quick (make test): one trial each, the "default" arm at a 2 s poll instead of the VTN's 10 s
QUICK_TRIALS, QUICK_POLL_S = 1, 2.0
BASELINE_POLL_S = 0.2
VEN_NAME = "bench-site"
VEN_ID = f"ven-{VEN_NAME}"


def utc_now() -> datetime:
    return datetime.now(UTC)


class TimedOutbox:
    """Keeps each dispatch ack with the loop time it was sent at."""

    def __init__(self) -> None:
        self.acks: list[tuple[float, DispatchAck]] = []

    def send(self, topic: str, message: BaseModel | str, *, retain: bool = False) -> None:
        del retain
        if topic == "dispatch/ack" and isinstance(message, DispatchAck):
            self.acks.append((asyncio.get_running_loop().time(), message))

    def at(self, event_id: str, status: str) -> float | None:
        return next(
            (t for t, a in self.acks if a.event_id == event_id and a.status == status), None
        )


async def trials(
    poll_interval_s: float | None, count: int, rng: random.Random, folder: Path
) -> list[float]:
    vtn = Vtn(port=free_port(), poll_s=DEFAULT_POLL_S)
    config = site_config(folder / f"db-{poll_interval_s}.sqlite3", free_port(), tag="bench",
                         host_a="127.0.9.1", host_b="127.0.9.101")  # fmt: skip
    openadr = OpenAdrConfig.model_validate(
        {
            "vtn_url": vtn.url,
            "ven_name": VEN_NAME,
            "allow_plain_http": True,
            "poll_interval_s": poll_interval_s,
            "simple_levels": {2: {"ceiling_kw": CEILING_KW}},
        }
    )
    config = config.model_copy(update={"openadr": openadr})
    loop = asyncio.get_running_loop()
    period_s = poll_interval_s or DEFAULT_POLL_S
    latencies: list[float] = []
    await vtn.start()
    async with SimModbusSite(endpoints_for(config)):
        outbox = TimedOutbox()
        service = assemble(config, clock=utc_now, outbox=outbox)
        start = utc_now()
        service.snapshot(PriceSignal(30.0, start, start + timedelta(hours=2), start, source="b"))
        stop = asyncio.Event()
        task = asyncio.create_task(serve(service, stop))
        try:
            await wait_until(lambda: VEN_ID in vtn.registrations, 30, "registration")
            full_kw = service.shell.site_kw()
            for _ in range(count):
                await asyncio.sleep(rng.uniform(0, period_s))  # a random phase of the poll cycle
                started = loop.time()
                event_id = vtn.publish(VEN_ID, vtn.event(VEN_ID, [2.0], interval_s=period_s + 2))
                await wait_until(lambda e=event_id: outbox.at(e, "active") is not None,
                                 period_s + 10, "the devices verified at the ceiling")  # fmt: skip
                at = outbox.at(event_id, "active")
                assert at is not None
                latencies.append(at - started)
                await wait_until(lambda e=event_id: outbox.at(e, "completed") is not None,
                                 period_s + 10, "the event to end")  # fmt: skip
                await wait_until(lambda: service.shell.site_kw() >= full_kw, 10, "the restore")
        finally:
            stop.set()
            await task
            await vtn.stop()
    return latencies


def summary(latencies: list[float]) -> dict[str, float]:
    return {
        "min": round(min(latencies), 3),
        "median": round(statistics.median(latencies), 3),
        "mean": round(statistics.fmean(latencies), 3),
        "max": round(max(latencies), 3),
    }


async def main(quick: bool) -> None:
    rng = random.Random(7)
    count, poll_s = (QUICK_TRIALS, QUICK_POLL_S) if quick else (TRIALS, None)
    # openleadr's VTN prints a banner on stdout: keep stdout for the one JSON line
    with tempfile.TemporaryDirectory() as folder, contextlib.redirect_stdout(sys.stderr):
        default = await trials(poll_s, count, rng, Path(folder))
        baseline = await trials(BASELINE_POLL_S, count, rng, Path(folder))
    print(
        json.dumps(
            {
                "bench": "openadr_latency",
                "quick": quick,
                "path": "VTN event -> VEN -> event book -> shell cycle -> Modbus devices verified",
                "trials": count,
                "poll_interval_s": poll_s or DEFAULT_POLL_S,
                "event_to_verified_s": summary(default),
                "baseline_poll_interval_s": BASELINE_POLL_S,
                "baseline_event_to_verified_s": summary(baseline),
            }
        )
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one trial each, 2 s polls")
    asyncio.run(main(parser.parse_args().quick))
