"""Each dispatch event of a backtest, as a program settles it: what was asked, what the site
delivered, the shortfall and its penalty, and the capacity payment of its intervals.

Per event, over the intervals that start inside it (a dispatch takes effect at the next
interval start, as the replay applies it):
  ceiling    a limit's target kW; a shed's: the site's baseline (every device at its rating,
             the backtest's baseline) less the kW asked
  asked      MWh below the baseline the ceiling asks for: max(0, baseline - ceiling) x h
  delivered  MWh below the baseline the site gave: max(0, baseline - site) x h
  shortfall  MWh over the ceiling: max(0, site - ceiling) x h
  penalty    shortfall x the penalty rate ($/MWh, `--penalty-usd-per-mwh`)
  payment    the capacity payments of those intervals (none where the committed MW could not
             be delivered: settle.py)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from agent.domain.signals import Obligation, ObligationKind

__all__ = ["deployment_table"]


def deployment_table(
    events: Sequence[Obligation], settled: pd.DataFrame, penalty_usd_per_mwh: float = 0.0
) -> list[dict[str, object]]:
    """One row per event that overlaps the backtest (see the module doc)."""
    start = settled["interval_start_utc"]
    rows: list[dict[str, object]] = []
    for event in sorted(events, key=lambda e: e.start_utc):
        inside = start >= pd.Timestamp(event.start_utc)
        if event.end_utc is not None:
            inside &= start < pd.Timestamp(event.end_utc)
        part = settled[inside.to_numpy()]
        if part.empty:
            continue
        hours = part["hours"].to_numpy()
        baseline = part["baseline_kw"].to_numpy()
        site = part["site_kw"].to_numpy()
        if event.kind is ObligationKind.LIMIT:
            ceiling = np.full(len(part), event.kw)
        else:
            ceiling = np.maximum(0.0, baseline - event.kw)
        asked = float((np.maximum(0.0, baseline - ceiling) * hours).sum() / 1000.0)
        delivered = float((np.maximum(0.0, baseline - site) * hours).sum() / 1000.0)
        short = float((np.maximum(0.0, site - ceiling) * hours).sum() / 1000.0)
        rows.append({
            "event_id": event.event_id, "program": event.program, "kind": event.kind.value,
            "kw": event.kw, "start_utc": event.start_utc.isoformat(),
            "end_utc": None if event.end_utc is None else event.end_utc.isoformat(),
            "intervals": len(part), "asked_mwh": round(asked, 6),
            "delivered_mwh": round(delivered, 6), "shortfall_mwh": round(short, 6),
            "penalty_usd": round(short * penalty_usd_per_mwh, 2),
            "payment_usd": round(float(part["capacity_usd"].sum()), 2),
        })  # fmt: skip
    return rows
