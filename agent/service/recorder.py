"""What a cycle leaves behind: setpoints and engine state in the store, an audit row, metrics.

The store is written in one transaction per cycle, so a restart resumes from a consistent state.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

import numpy as np

from agent.domain.fleet import Fleet, FloatArray
from agent.domain.signals import PriceSignal
from agent.policy import Memory, Rule
from agent.service.metrics import Metrics
from agent.service.records import ShadowRow
from agent.service.report import CycleReport
from agent.service.store import Store

__all__ = ["Recorder"]

_FIGURE = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?")
_CODES_KEPT = 10_000  # distinct reasons' words; beyond, numbering starts again (one full audit)


def _same_row(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rows equal, nan equal to nan (a setpoint not decided yet)."""
    same: np.ndarray = ((a == b) | (np.isnan(a) & np.isnan(b))).all(axis=1)
    return same


class Recorder:
    """Writes each cycle's outcome to the store and the metrics (either may be absent)."""

    def __init__(
        self, fleet: Fleet, store: Store | None, metrics: Metrics | None, *, shadow: bool = False
    ) -> None:
        self.fleet = fleet
        self.store = store
        self.metrics = metrics
        self.shadow = shadow  # shadow mode: would-be setpoints, and a row per cycle to compare
        self._minute = _Minute()  # the status page's history: a row a minute
        self._saved_price: PriceSignal | None = None
        self._last_key: np.ndarray | None = None  # per device: (kW, rule, reason code) audited
        self._codes: dict[str, int] = {}

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
        sent_kw = memory.setpoint_kw if self.shadow else applied_kw  # shadow: would have sent
        ok = np.setdiff1d(changed, failed_idx)
        with store.transaction():
            for device_id, change, reason in device_changes or ():
                store.audit(report.at_utc, f"device-{change.split()[0]}", device_id,
                            {"change": change, "reason": reason})  # fmt: skip
            self._audit_reasons(report)
            if self.shadow:  # no device holds these: a restart in control re-asserts all
                store.save_shadow(ShadowRow(
                    report.at_utc, decision.price_usd_per_mwh, report.site_kw, decision.site_kw,
                    decision.site_ceiling_kw, tuple(s.event_id for s in decision.obligations),
                ))  # fmt: skip
            else:
                kept = ok[~np.isnan(memory.setpoint_kw[ok])]  # columns at once: 10,000 outlets
                changed_ids = [ids[i] for i in kept.tolist()]
                kw, at_s = memory.setpoint_kw[kept].tolist(), memory.changed_at_s[kept].tolist()
                store.save_setpoints(list(zip(changed_ids, kw, at_s, strict=True)))
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
                        "commands": {ids[i]: round(float(sent_kw[i]), 3) for i in ok[:2000]},
                        "held_back": report.held_back,
                        **({"mode": "shadow: no command was sent"} if self.shadow else {}),
                    },
                )
            for device_id, why in report.failed.items():
                store.audit(report.at_utc, "device-failed", device_id, {"error": why})
            done = self._minute.add(report)
            if done is not None:
                store.save_history(*done)

    def _audit_reasons(self, report: CycleReport) -> None:
        """A row per device whose setpoint, binding rule or reason changed: `gridflex audit
        --device ID` answers why that device was off at 14:05. A reason is compared by its code
        (its words, figures aside): a new price rewrites every reason's figure, and must not
        write a row per device when no setpoint moved."""
        assert self.store is not None
        d = report.decision
        codes = np.array([self._reason_code(text) for text in d.reasons], dtype=np.int64)
        key = np.stack([np.round(d.setpoint_kw, 3), d.rule.astype(np.float64),
                        codes[d.reason_index].astype(np.float64)], axis=1)  # fmt: skip
        last = self._last_key
        if last is None or last.shape != key.shape:
            moved = np.arange(len(key))
        else:
            moved = np.flatnonzero(~(_same_row(key, last)))
        ids = self.fleet.device_ids
        # each row's detail is the JSON of {"kw", "reason", "rule"} (keys sorted, as Store.audit
        # writes them), the reason and rule texts encoded once each: a dispatch that moves
        # 10,000 outlets writes 10,000 rows, and a json.dumps per row cost a third of its cycle
        reasons = [json.dumps(text) for text in d.reasons]
        rules = {code: json.dumps(Rule(code).label) for code in np.unique(d.rule).tolist()}
        kw = np.round(d.setpoint_kw, 3).tolist()
        rule, reason_index = d.rule.tolist(), d.reason_index.tolist()
        self.store.audit_rows(report.at_utc, "setpoint", [
            (ids[i], f'{{"kw": {json.dumps(kw[i])}, "reason": {reasons[reason_index[i]]}, '
                     f'"rule": {rules[rule[i]]}}}')
            for i in moved.tolist()
        ])  # fmt: skip
        self._last_key = key

    def _reason_code(self, text: str) -> int:
        """A reason's words, figures aside, as a small number."""
        if len(self._codes) > _CODES_KEPT:
            self._codes.clear()
            self._last_key = None
        return self._codes.setdefault(_FIGURE.sub("#", text), len(self._codes))

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


class _Minute:
    """The means of one minute's cycles: site (verified) and planned kW, each class's planned
    kW, the lowest ceiling and the last price. `add` returns the minute just finished."""

    def __init__(self) -> None:
        self.start: datetime | None = None
        self._reset()

    def _reset(self) -> None:
        self.cycles = 0
        self.site_kw = self.planned_kw = 0.0
        self.class_kw: dict[str, float] = {}
        self.ceiling_kw: float | None = None
        self.price: float | None = None

    def add(self, report: CycleReport) -> tuple[datetime, dict[str, Any]] | None:
        minute = report.at_utc.replace(second=0, microsecond=0)
        done = None
        if self.start is not None and minute != self.start and self.cycles:
            done = (self.start, self._means())
        if minute != self.start:
            self._reset()
            self.start = minute
        d = report.decision
        self.cycles += 1
        self.site_kw += report.site_kw
        self.planned_kw += d.site_kw
        for name, kw in d.class_kw_by_name().items():
            self.class_kw[name] = self.class_kw.get(name, 0.0) + kw
        if d.site_ceiling_kw is not None:
            low = self.ceiling_kw
            self.ceiling_kw = d.site_ceiling_kw if low is None else min(low, d.site_ceiling_kw)
        self.price = d.price_usd_per_mwh
        return done

    def _means(self) -> dict[str, Any]:
        n = self.cycles
        return {"site_kw": round(self.site_kw / n, 3), "planned_kw": round(self.planned_kw / n, 3),
                "ceiling_kw": self.ceiling_kw, "price_usd_per_mwh": self.price,
                "class_kw": {k: round(v / n, 3) for k, v in self.class_kw.items()}}  # fmt: skip
