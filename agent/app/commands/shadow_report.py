"""`gridflex shadow-report`: in shadow mode, what the site did against what gridflex would have
done, per event and over the span, from the service's database."""

from __future__ import annotations

import json
from pathlib import Path

import click

from agent.app.commands.events import _DB_HELP, _database, _open, _since

__all__ = ["shadow_report"]


@click.command("shadow-report")
@click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--database", type=click.Path(path_type=Path, dir_okay=False), help=_DB_HELP)
@click.option("--since", "since_text", default="7d", show_default=True,
              help="ISO time or 30m/2h/7d")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="one JSON object")
def shadow_report(
    config_path: Path | None, database: Path | None, since_text: str, as_json: bool
) -> None:
    """Shadow mode: what the site drew against what gridflex would have commanded, per event."""
    from agent.service.shadow_report import compare  # noqa: PLC0415 - keep --help fast

    store = _open(_database(config_path, database))
    rows = store.shadow_since(_since(since_text))
    store.close()
    if not rows:
        raise click.ClickException("no shadow-mode cycles in that span (service.mode: shadow?)")
    report = compare(rows)
    out = {"from": rows[0].at_utc.isoformat(), "to": rows[-1].at_utc.isoformat(),
           "total": report.total.as_dict(),
           "events": {e: c.as_dict() for e, c in report.events.items()}}  # fmt: skip
    if as_json:
        click.echo(json.dumps(out))
        return
    click.echo(f"shadow mode, {out['from']} to {out['to']}: no device was written")
    head = (f"{'':24} {'hours':>7} {'site kW':>9} {'would kW':>9} {'ceiling':>9} "
            f"{'site ok':>8} {'would ok':>8} {'site $':>10} {'would $':>10}")  # fmt: skip
    click.echo(head)
    for name, c in [("all cycles", report.total), *report.events.items()]:
        d = c.as_dict()
        ceiling = "" if c.ceiling_kw is None else f"{c.ceiling_kw:9.1f}"
        ok = (f"{c.site_under_ceiling}/{c.cycles}", f"{c.would_under_ceiling}/{c.cycles}") \
            if c.ceiling_kw is not None else ("", "")  # fmt: skip
        click.echo(f"{name[:24]:24} {c.hours:7.2f} {d['site_mean_kw']:9.1f} "
                   f"{d['would_mean_kw']:9.1f} {ceiling:>9} {ok[0]:>8} {ok[1]:>8} "
                   f"{c.site_cost_usd:10.2f} {c.would_cost_usd:10.2f}")  # fmt: skip
