"""OpenADR latency: from the VTN creating an event to the site decided at the new target.

A real openleadr VTN on loopback asks for its default oadrPollFreq (10 s); the VEN polls at
that rate (its default: poll_interval_s unset). Each trial publishes a SIMPLE level-2 event
starting now at a random phase of the poll cycle, and times until the simulated site (decide()
on a small fleet, a cycle started by each obligation as the shell does) is at the level's
ceiling. The event lasts a few seconds and lapses on the VEN's own timer, so no trial waits
for a cancellation to be polled. The baseline is the same run with a 0.2 s poll: what is left
when polling costs (almost) nothing. Prints one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.signals.openadr_ven import DEFAULT_POLL_S, OpenAdrVen
from agent.config import OpenAdrConfig
from tests.adapters.signals.openadr_rig import SimSite, Vtn, wait_until
from tests.conftest import free_port

CEILING_KW = 120.0
TRIALS = 8
BASELINE_POLL_S = 0.2


async def trials(poll_interval_s: float | None, count: int, rng: random.Random) -> list[float]:
    vtn = Vtn(port=free_port(), poll_s=DEFAULT_POLL_S)
    site = SimSite(cycle_s=0.5)
    config = OpenAdrConfig.model_validate(
        {
            "vtn_url": vtn.url,
            "ven_name": "bench-site",
            "allow_plain_http": True,
            "poll_interval_s": poll_interval_s,
            "simple_levels": {2: {"ceiling_kw": CEILING_KW}},
        }
    )
    ven = OpenAdrVen(config, site)
    await vtn.start()
    tasks = [asyncio.create_task(site.run()), asyncio.create_task(ven.run(site.sink))]
    loop = asyncio.get_running_loop()
    period_s = poll_interval_s or DEFAULT_POLL_S
    latencies: list[float] = []
    try:
        await wait_until(lambda: ven.registered, 30, "registration")
        ven_id = ven.ven_id
        assert ven_id is not None
        for _ in range(count):
            await asyncio.sleep(rng.uniform(0, period_s))  # a random phase of the poll cycle
            seen = len(site.changed_at)
            started = loop.time()
            vtn.publish(ven_id, vtn.event(ven_id, [2.0], interval_s=period_s + 2))
            await wait_until(
                lambda seen=seen: any(kw <= CEILING_KW for _, kw in site.changed_at[seen:]),
                period_s + 10, "the site at the ceiling",
            )  # fmt: skip
            at = next(t for t, kw in site.changed_at[seen:] if kw <= CEILING_KW)
            latencies.append(at - started)
            await wait_until(lambda: site.site_kw() > CEILING_KW, period_s + 10, "the event to end")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await vtn.stop()
    return latencies


def summary(latencies: list[float]) -> dict[str, float]:
    return {
        "min": round(min(latencies), 3),
        "median": round(statistics.median(latencies), 3),
        "mean": round(statistics.fmean(latencies), 3),
        "max": round(max(latencies), 3),
    }


async def main() -> None:
    rng = random.Random(7)
    default = await trials(None, TRIALS, rng)
    baseline = await trials(BASELINE_POLL_S, TRIALS, rng)
    print(
        json.dumps(
            {
                "bench": "openadr_latency",
                "trials": TRIALS,
                "poll_interval_s": DEFAULT_POLL_S,
                "event_to_target_s": summary(default),
                "baseline_poll_interval_s": BASELINE_POLL_S,
                "baseline_event_to_target_s": summary(baseline),
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
