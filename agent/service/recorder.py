"""What a cycle leaves behind: setpoints and engine state in the store, an audit row, metrics.

The store is written in one transaction per cycle, so a restart resumes from a consistent state.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np

from agent.domain.fleet import Fleet, FloatArray
from agent.domain.signals import PriceSignal
from agent.policy import Memory, Rule
from agent.service.metrics import Metrics
from agent.service.report import CycleReport
from agent.service.store import Store

__all__ = ["Recorder"]


class Recorder:
    """Writes each cycle's outcome to the store and the metrics (either may be absent)."""

    def __init__(self, fleet: Fleet, store: Store | None, metrics: Metrics | None) -> None:
        self.fleet = fleet
        self.store = store
        self.metrics = metrics
        self._saved_price: PriceSignal | None = None
        self._last_why: np.ndarray | None = None  # per device: (rule, reason) last audited

    def cycle(
        self,
        report: CycleReport,
        memory: Memory,
        applied_kw: FloatArray,
        changed: np.ndarray,
        failed_idx: np.ndarray,
        *,
        device_changes: list[tuple[str, str, str]] | None = None,
    ) -> None:
        if self.store is None:
            return
        store, decision, ids = self.store, report.decision, self.fleet.device_ids
        ok = np.setdiff1d(changed, failed_idx)
        with store.transaction():
            for device_id, change, reason in device_changes or ():
                store.audit(report.at_utc, f"device-{change.split()[0]}", device_id,
                            {"change": change, "reason": reason})  # fmt: skip
            self._audit_reasons(report)
            store.save_setpoints(
                [
                    (ids[i], float(memory.setpoint_kw[i]), float(memory.changed_at_s[i]))
                    for i in ok
                    if not np.isnan(memory.setpoint_kw[i])
                ]
            )
            store.save_state(
                "engine",
                {
                    "baselines_kw": dict(memory.baselines_kw),
                    "class_running": {
                        c.name: r
                        for c, r in zip(self.fleet.classes, memory.class_running, strict=True)
                    },
                    "decided_at_utc": report.at_utc.isoformat(),
                    "pool_serving": dict(memory.pool_serving),
                    "pool_capped_since_s": dict(memory.pool_capped_since_s),
                },
            )
            price = report.signals.price
            if price is not None and price != self._saved_price:
                store.save_price(price)
                store.audit(report.at_utc, "price", price.settlement_point, {
                    "price_usd_per_mwh": price.price_usd_per_mwh, "market": price.market,
                    "interval_start_utc": price.interval_start_utc.isoformat(),
                    "interval_end_utc": price.interval_end_utc.isoformat(),
                    "source": price.source,
                })  # fmt: skip
                self._saved_price = price
            if report.setpoints_changed or len(changed):
                store.audit(
                    report.at_utc,
                    "decision",
                    "site",
                    {
                        "planned_kw": round(decision.site_kw, 3),
                        "verified_kw": round(report.site_kw, 3),
                        "ceiling_kw": decision.site_ceiling_kw,
                        "price_usd_per_mwh": decision.price_usd_per_mwh,
                        "reasons": list(decision.reasons),
                        "commands": {ids[i]: round(float(applied_kw[i]), 3) for i in ok[:2000]},
                        "held_back": report.held_back,
                    },
                )
            for device_id, why in report.failed.items():
                store.audit(report.at_utc, "device-failed", device_id, {"error": why})

    def _audit_reasons(self, report: CycleReport) -> None:
        """A row per device whose binding rule or reason changed: `gridflex audit --device ID`
        answers why that device was off at 14:05."""
        assert self.store is not None
        d = report.decision
        reasons = np.array(d.reasons, dtype=object)[d.reason_index]
        why = np.char.add(d.rule.astype(str).astype(object), reasons)
        moved = (
            np.arange(len(why)) if self._last_why is None else np.flatnonzero(why != self._last_why)
        )
        ids = self.fleet.device_ids
        for i in moved.tolist():
            self.store.audit(report.at_utc, "setpoint", ids[i], {
                "kw": round(float(d.setpoint_kw[i]), 3),
                "rule": Rule(int(d.rule[i])).label, "reason": str(reasons[i]),
            })  # fmt: skip
        self._last_why = why

    def restore_batch(
        self,
        at: datetime,
        indices: np.ndarray,
        target: FloatArray,
        memory: Memory,
        failed: dict[str, str],
    ) -> None:
        if self.store is None:
            return
        ids = self.fleet.device_ids
        with self.store.transaction():
            self.store.save_setpoints(
                [(ids[i], float(target[i]), float(memory.changed_at_s[i]))
                 for i in indices if ids[i] not in failed]
            )  # fmt: skip
            self.store.audit(at, "restore-batch", "site",
                             {"devices": len(indices), "failed": failed})  # fmt: skip

    def observe(self, report: CycleReport, devices_available: int) -> None:
        m = self.metrics
        if m is None:
            return
        m.cycle_seconds.observe(report.duration_s)
        m.site_kw.set(report.site_kw)
        m.planned_kw.set(report.decision.site_kw)
        for name, kw in report.decision.class_kw_by_name().items():
            m.class_kw.labels(load_class=name).set(kw)
        if report.decision.price_usd_per_mwh is not None:
            m.price.set(report.decision.price_usd_per_mwh)
        m.devices_available.set(devices_available)
        m.devices_total.set(len(self.fleet))
        m.active_events.set(len(report.signals.obligations))
        m.commands.labels(result="ok").inc(len(report.commanded) - len(report.failed))
        m.commands.labels(result="failed").inc(len(report.failed))
        for pool in report.decision.pools:
            counts = {"needed": pool.needed, "serving": pool.serving, "lent": pool.lent,
                      "paused": pool.paused, "capped": pool.capped}  # fmt: skip
            for use, count in counts.items():
                m.pool_servers.labels(pool=pool.pool, use=use).set(count)
            m.pool_give_up_kw.labels(pool=pool.pool).set(pool.give_up_kw)
