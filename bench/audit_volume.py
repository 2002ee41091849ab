"""How fast the settlement database grows: bytes an hour at 2,000 outlets in steady state.

The service (agent.app.assembly.assemble, the code `gridflex run` runs) drives a simulated site
of 2,000 miner outlets and 40 coolers following them, on a clock this script steps every
`cycle_s` (2 s, the default), through real 2024 ERCOT real-time prices (HB_HUBAVG) of the hours
whose price crossed the miners' $90/MWh break-even most often, and one grid dispatch an hour (a
limit to half the site for 15 minutes). Devices are read before every cycle, as the poller
does. After a warm-up (the first cycle writes every device's row), the database file and its
write-ahead log are measured, checkpointed, at the start and the end of the measured hours.

Beside it, the plainest record a skilled integrator would keep: one CSV line per command sent
(`time,device,kW`), from the same run's commands. Target: <= 5 MB an hour for the service.
Prints one JSON line; `--quick` runs 200 outlets for 20 simulated minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sqlite3
import sys
import tempfile
import time
from datetime import datetime, timedelta
from importlib import resources
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adapters.signals.replay import load_canonical_prices, price_schedule  # noqa: E402
from agent.app.assembly import MemoryOutbox, assemble  # noqa: E402
from agent.app.runner import Runner  # noqa: E402
from agent.config import parse_config  # noqa: E402
from agent.demo.run import SteppedClock  # noqa: E402

TARGET_MB_PER_HOUR = 5.0
BREAKEVEN = 90.0
SITE = """
site: {{id: audit-bench, timezone: America/Chicago}}
classes:
  miners: {{priority: interruptible, economics: {{kind: fixed, value_usd_per_mwh: {breakeven}}}}}
  cooling: {{priority: flexible, follows: miners}}
devices:
  - {{id: pdu, kind: pdu_outlet, class: miners, count: {outlets}, rated_kw: 3.25, min_on_s: 0,
     min_off_s: 0, driver: {{type: simulated}}}}
  - {{id: cooler, kind: cooling, class: cooling, count: {coolers}, rated_kw: 20,
     driver: {{type: simulated}}}}
policy: {{min_dwell_s: 300, stale_posture: run_all}}
prices: {{source: none}}
service: {{cycle_s: {cycle_s}, database: "{db}", metrics_port: null}}
"""


def _busiest_window(span: timedelta) -> tuple[pd.DataFrame, datetime]:
    """The 2024 real-time prices, and the start of the `span` whose price crossed the break-even
    most often (an interval's price moves the miners only when it crosses)."""
    path = resources.files("agent.data").joinpath("ercot_rt_spp_15min_hb_hubavg_2024.csv.gz")
    with resources.as_file(path) as local:
        frame = load_canonical_prices(local)
    above = (frame["price_usd_per_mwh"] > BREAKEVEN).astype(int)
    crossings = above.diff().abs().fillna(0)
    intervals = max(1, int(span / timedelta(minutes=15)))
    busiest = int(crossings.rolling(intervals).sum().to_numpy().argmax()) - intervals + 1
    start: datetime = frame["interval_start_utc"].iloc[max(0, busiest)].to_pydatetime()
    return frame, start


def _db_bytes(db: Path) -> int:
    with sqlite3.connect(db) as conn:  # the WAL folded in: what the file holds
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return sum(p.stat().st_size for p in db.parent.glob(db.name + "*"))


def _rows(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        kinds = conn.execute("SELECT kind, count(*) FROM audit GROUP BY kind").fetchall()
    return {str(kind): int(n) for kind, n in kinds}


async def measure(outlets: int, hours: float, cycle_s: float, warmup_min: float) -> dict:
    frame, start = _busiest_window(timedelta(minutes=warmup_min, hours=hours))
    with tempfile.TemporaryDirectory() as scratch:
        db = Path(scratch) / "gridflex.sqlite3"
        text = SITE.format(breakeven=BREAKEVEN, outlets=outlets, coolers=max(1, outlets // 50),
                           cycle_s=cycle_s, db=db)  # fmt: skip
        config = parse_config(text, env={})
        clock = SteppedClock(start)
        service = assemble(config, clock=clock, outbox=MemoryOutbox(), monotonic=clock.monotonic)
        runner = Runner(service, asyncio.Event())
        end = start + timedelta(minutes=warmup_min, hours=hours)
        window = frame[(frame["interval_end_utc"] >= start - timedelta(minutes=15))
                       & (frame["interval_start_utc"] < end)]  # fmt: skip
        pending = list(price_schedule(window, source="ercot-rt15-2024"))
        commands, began_bytes, began_rows = 0, 0, {}
        measured_from = start + timedelta(minutes=warmup_min)
        steps = int((end - start).total_seconds() / cycle_s)
        wall = time.perf_counter()
        for step in range(steps):
            clock.now = start + timedelta(seconds=step * cycle_s)
            if clock.now == measured_from:
                service.store.flush()
                began_bytes, began_rows = _db_bytes(db), _rows(db)
            while pending and pending[0].observed_at_utc <= clock.now:
                service.inbox.signal(pending.pop(0))
            minute = (clock.now - measured_from).total_seconds() / 60.0
            if minute % 60 == 5:  # a dispatch each hour: half the site for 15 minutes
                until = clock.now + timedelta(minutes=15)
                body = {"event_id": f"d-{step}", "kind": "limit",
                        "target_kw": round(outlets * 3.25 / 2), "issued_at": clock.now.isoformat(),
                        "end": until.isoformat()}  # fmt: skip
                payload = json.dumps(body).encode()
                take = lambda p=payload: service.intake.dispatch(p, source="bench")  # noqa: E731
                service.inbox.put("dispatch", take)
            await service.shell.poll()
            report = await runner.step()
            if clock.now >= measured_from:
                commands += len(report.commanded)
        service.store.flush()
        grown = _db_bytes(db) - began_bytes
        rows = {k: n - began_rows.get(k, 0) for k, n in _rows(db).items()}
        service.store.close()
        # the plain record: "2024-08-20T21:00:02Z,pdu-0001,0.000\n" per command
        plain_line = len(f"{start:%Y-%m-%dT%H:%M:%SZ},pdu-0001,3.250\n")
        return {
            "outlets": outlets,
            "from_utc": f"{start:%Y-%m-%dT%H:%MZ}",
            "hours_measured": hours,
            "cycle_s": cycle_s,
            "mb_per_hour": round(grown / hours / 1e6, 3),
            "target_mb_per_hour": TARGET_MB_PER_HOUR,
            "plain_command_log_mb_per_hour": round(commands * plain_line / hours / 1e6, 3),
            "commands_per_hour": round(commands / hours),
            "audit_rows_per_hour": {k: round(n / hours) for k, n in sorted(rows.items())},
            "wall_s": round(time.perf_counter() - wall, 1),
        }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 outlets, 20 minutes")
    parser.add_argument("--outlets", type=int, default=2000)
    parser.add_argument("--hours", type=float, default=2.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    outlets, hours, warmup = (200, 1 / 3, 5.0) if args.quick else (args.outlets, args.hours, 10.0)
    result = {"bench": "audit_volume", "quick": args.quick,
              **asyncio.run(measure(outlets, hours, 2.0, warmup))}  # fmt: skip
    result["met"] = result["mb_per_hour"] <= TARGET_MB_PER_HOUR
    print(json.dumps(result))


if __name__ == "__main__":
    main()
