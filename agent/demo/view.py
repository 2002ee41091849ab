"""What `gridflex demo` shows: the live terminal view, its plain lines, and the day's summary."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from zoneinfo import ZoneInfo

import numpy as np
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from agent.app.assembly import Service
from agent.policy import Rule
from agent.service.cycle import CycleReport
from agent.service.messages import DispatchAck

__all__ = ["DemoSummary", "NoLive", "View", "print_summary"]


LINE_WIDTH = 80


@dataclass
class DemoSummary:
    cycles: int = 0
    energy_mwh: float = 0.0
    cost_usd: float = 0.0
    flat_energy_mwh: float = 0.0
    flat_cost_usd: float = 0.0
    max_price: float = 0.0
    commands: int = 0
    failed_devices: set[str] = field(default_factory=set)
    acks: list[DispatchAck] = field(default_factory=list)
    wall_s: float = 0.0
    max_cycle_s: float = 0.0
    mqtt: str = "not used"  # where the demo published, or why it did not
    mqtt_prefix: str | None = None
    # revenue the curtailed load would have earned (each class at its own $/MWh value)
    forgone_usd: float = 0.0
    peak_site_kw: float = 0.0  # the highest measured site load


class NoLive:
    def __enter__(self) -> NoLive:
        return self

    def __exit__(self, *_exc: object) -> None:
        return None

    def update(self, *_args: object, **_kwargs: object) -> None:
        return None


class View:
    """The live terminal view: price, site kW against its ceiling, classes, reasons, events."""

    def __init__(self, service: Service, zone: ZoneInfo, target_kw: float) -> None:
        self._service = service
        self._zone = zone
        # the site's load is shown against what it may draw: the import limit, when it has one
        limit_kw = service.config.site.import_limit_kw
        self._rated_kw = float(service.shell.fleet.rated_kw.sum()) if limit_kw is None else limit_kw
        self._of = "rated" if limit_kw is None else "import limit"
        self._target_kw = target_kw
        self._notes: list[str] = []
        self.fresh_notes = False
        self._history: list[float] = []
        self._seen_statuses: set[str] = set()
        self._down: set[int] = set()

    def note(self, at: datetime, text: str) -> None:
        self._notes.append(f"{at.astimezone(self._zone):%H:%M} {text}")
        self.fresh_notes = True

    def observe(self, report: CycleReport) -> None:
        self._history.append(self._service.shell.site_kw())
        for event in self._service.events.live:
            key = f"{event.event_id}:{event.status}"
            if key not in self._seen_statuses:
                self._seen_statuses.add(key)
                self.note(report.at_utc, f"event {event.event_id} {event.status}: {event.reason}")
        down = set(np.flatnonzero(~self._service.shell.devices.planned_available).tolist())
        if down - self._down:
            self.note(
                report.at_utc,
                f"{len(down - self._down)} device(s) draw more than commanded or fail "
                "verification: planned around at their measured kW, others shed instead",
            )
        if self._down - down:
            self.note(report.at_utc, f"{len(self._down - down)} device(s) recovered")
        self._down = down

    def line(self, report: CycleReport) -> str:
        d = report.decision
        local = report.at_utc.astimezone(self._zone)
        price = "  n/a " if d.price_usd_per_mwh is None else f"{d.price_usd_per_mwh:8.2f}"
        ceiling = "" if d.site_ceiling_kw is None else f"  ceiling {d.site_ceiling_kw:6.0f} kW"
        notes = "".join(f"\n  - {n}" for n in self._notes[-3:]) if self.fresh_notes else ""
        head = f"{local:%H:%M} {price} $/MWh {self._service.shell.site_kw():7.1f} kW{ceiling} "
        reason = _top_reason(report)
        room = max(10, LINE_WIDTH - len(head) - 2)
        if len(reason) > room:  # one line per hour: it fits an 80-column terminal
            reason = reason[: room - 3] + "..."
        return f"{head}| {reason}{notes}"

    def render(self, report: CycleReport | None, summary: DemoSummary) -> Panel:
        if report is None:
            return Panel("starting the simulated site...", title="gridflex demo")
        d = report.decision
        local = report.at_utc.astimezone(self._zone)
        site_kw = self._service.shell.site_kw()
        head = Table.grid(padding=(0, 2))
        head.add_row(
            Text(f"{local:%Y-%m-%d %H:%M} {local.tzname()}", style="bold"),
            Text(
                "price n/a" if d.price_usd_per_mwh is None
                else f"price {d.price_usd_per_mwh:,.2f} $/MWh",
                style="red bold" if (d.price_usd_per_mwh or 0) > 200 else "green",
            ),
            Text(f"site {site_kw:,.0f} kW of {self._rated_kw:,.0f} {self._of}", style="bold"),
            Text("" if d.site_ceiling_kw is None else f"ceiling {d.site_ceiling_kw:,.0f} kW",
                 style="yellow bold"),
        )  # fmt: skip
        bar = _bar(site_kw, self._rated_kw, d.site_ceiling_kw)
        classes = Table(box=None, show_header=True, header_style="dim")
        classes.add_column("class")
        classes.add_column("kW", justify="right")
        for name, kw in d.class_kw_by_name().items():
            classes.add_row(name, f"{kw:,.0f}")
        reasons = Table(box=None, show_header=True, header_style="dim")
        reasons.add_column("devices", justify="right")
        reasons.add_column("why")
        for count, rule, text in _reasons(report)[:6]:
            reasons.add_row(str(count), f"[dim]{rule}[/dim] {text}")
        available = int(self._service.shell.available.sum())
        status = Text(
            f"devices {available}/{len(self._service.shell.fleet)} available   "
            f"commands {summary.commands}   cycles {summary.cycles}   "
            f"cost so far ${summary.cost_usd:,.0f} (run-flat ${summary.flat_cost_usd:,.0f})",
            style="dim",
        )
        notes = Text("\n".join(self._notes[-5:]) or "-", style="cyan")
        spark = Text(_sparkline(self._history[-96:]), style="blue")
        return Panel(
            Group(head, bar, spark, classes, reasons, notes, status),
            title="gridflex demo: ERCOT HB_HUBAVG real-time prices, simulated Modbus site",
        )


def _reasons(report: CycleReport) -> list[tuple[int, str, str]]:
    d = report.decision
    counts = np.bincount(d.reason_index, minlength=len(d.reasons))
    rules: dict[int, str] = {}
    for i, r in zip(d.reason_index, d.rule, strict=True):
        rules.setdefault(int(i), Rule(int(r)).label)
    rows = [(int(c), rules.get(i, ""), d.reasons[i]) for i, c in enumerate(counts) if c]
    return sorted(rows, key=lambda row: -row[0])


def _top_reason(report: CycleReport) -> str:
    rows = [r for r in _reasons(report) if r[1] not in ("critical", "protected")]
    if not rows:
        return "all running"
    count, _rule, text = rows[0]
    return f"{count} dev: {text}"


def _bar(site_kw: float, rated_kw: float, ceiling_kw: float | None, width: int = 60) -> Text:
    filled = min(width, round(width * site_kw / rated_kw)) if rated_kw else 0
    text = Text("█" * filled + "·" * (width - filled), style="green")
    if ceiling_kw is not None and rated_kw:
        mark = min(width - 1, round(width * ceiling_kw / rated_kw))
        text.stylize("yellow", mark, mark + 1)
    return text


def _sparkline(values: list[float]) -> str:
    if not values:
        return ""
    blocks = " ▁▂▃▄▅▆▇█"
    top = max(values) or 1.0
    return "".join(blocks[round(8 * v / top)] for v in values)


def print_summary(console: Console, summary: DemoSummary, service: Service, day: date) -> None:
    avoided = summary.flat_cost_usd - summary.cost_usd
    curtailed = summary.flat_energy_mwh - summary.energy_mwh
    net = avoided - summary.forgone_usd
    table = Table(title=f"gridflex demo: {day.isoformat()} in {summary.wall_s:.1f} s")
    table.add_column("the simulated day")
    table.add_column("", justify="right")
    table.add_row("cycles (5 simulated minutes each)", str(summary.cycles))
    table.add_row("highest real-time price", f"{summary.max_price:,.2f} $/MWh")
    table.add_row("energy drawn / curtailed", f"{summary.energy_mwh:,.2f} / {curtailed:,.2f} MWh")
    # flat out: every device that would have run, within the import limit
    table.add_row("energy cost: as run / flat out", f"${summary.cost_usd:,.0f} / "
                  f"${summary.flat_cost_usd:,.0f}")  # fmt: skip
    table.add_row("energy cost avoided by curtailing", f"${avoided:,.0f}")
    table.add_row("revenue forgone (mining, inference)", f"-${summary.forgone_usd:,.0f}")
    table.add_row("program payments (RRS)", "not modelled")
    table.add_row("net earned by curtailing", f"${net:,.0f}")
    table.add_row("device commands sent, verified", f"{summary.commands:,}")
    table.add_row("devices planned around", str(len(summary.failed_devices)))  # fmt: skip
    table.add_row("slowest cycle", f"{summary.max_cycle_s * 1000:.0f} ms")
    limit = service.config.site.import_limit_kw
    peak = f"{summary.peak_site_kw:,.0f} kW" + ("" if limit is None else f" / {limit:,.0f} kW")
    table.add_row("peak measured load / import limit", peak)
    table.add_row("MQTT", summary.mqtt)
    for ack in summary.acks:
        achieved = "" if ack.achieved_kw is None else f", achieved {ack.achieved_kw:,.0f} kW"
        table.add_row(
            f"dispatch {ack.event_id}: {ack.status}",
            f"{ack.at.astimezone(ZoneInfo(service.config.site.timezone)):%H:%M}{achieved}",
        )
    console.print(table)
