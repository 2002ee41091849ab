"""`gridflex events` and `gridflex audit --since ...`: what the service did, from its database."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click

from agent.config.load import database_of
from agent.errors import ConfigError

__all__ = ["audit", "events"]

_DB_HELP = "the service's database (default: the site file's service.database)"


def _database(config_path: Path | None, database: Path | None) -> Path:
    """The database of `--database`, or the site file's `service.database`: read alone, so a
    command that only reads the audit needs none of the secrets the service uses."""
    if database is not None:
        return database
    if config_path is None:
        raise click.UsageError("give --config SITE.yaml or --database PATH")
    try:
        return database_of(config_path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _open(path: Path):  # type: ignore[no-untyped-def]
    from agent.service.store import Store  # noqa: PLC0415 - keep --help fast

    if not path.exists():
        raise click.ClickException(f"no database at {path} (has the service run?)")
    return Store(path)


@click.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--database", type=click.Path(path_type=Path, dir_okay=False), help=_DB_HELP)
@click.option("--live", is_flag=True, help="only events still accepted or active")
def events(config_path: Path | None, database: Path | None, live: bool) -> None:
    """Dispatch events with their status, requested and achieved kW."""
    store = _open(_database(config_path, database))
    rows = store.events(live_only=live)
    store.close()
    if not rows:
        click.echo("no events")
        return
    click.echo(f"{'event':24} {'kind':6} {'status':10} {'req kW':>9} {'got kW':>9}  updated (UTC)")
    for r in rows:
        achieved = "" if r.achieved_kw is None else f"{r.achieved_kw:9.1f}"
        click.echo(
            f"{r.event_id[:24]:24} {r.kind:6} {r.status:10} {r.requested_kw:9.1f} "
            f"{achieved:>9}  {r.updated_at_utc:%Y-%m-%d %H:%M:%S}  {r.reason}"
        )


def _since(text: str) -> datetime:
    """ISO time, or a span back from now: 30m, 2h, 7d."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text[-1:] in units and text[:-1].isdigit():
        return datetime.now(UTC) - timedelta(seconds=int(text[:-1]) * units[text[-1]])
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter("an ISO time or a span such as 30m, 2h, 7d") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


@click.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--database", type=click.Path(path_type=Path, dir_okay=False), help=_DB_HELP)
@click.option(
    "--since", "since_text", default="1h", show_default=True, help="ISO time or 30m/2h/7d"
)
@click.option("--json", "as_json", is_flag=True, help="one JSON object a line")
@click.option("--device", "device_id", help="only this device (or event, override) id")
@click.option("--limit", default=10_000, show_default=True, type=click.IntRange(1),
              help="rows per page")  # fmt: skip
@click.option("--after", "after_id", default=0, type=click.IntRange(0),
              help="start after this row (the next page: printed when there is one)")  # fmt: skip
def audit(  # noqa: PLR0917 - one parameter per click option
    config_path: Path | None,
    database: Path | None,
    since_text: str,
    as_json: bool,
    device_id: str | None,
    limit: int,
    after_id: int,
) -> None:
    """The audit log: every signal, decision, command and result, with when, why and from whom."""
    store = _open(_database(config_path, database))
    rows = store.audit_since(_since(since_text), limit + 1, subject=device_id, after_id=after_id)
    store.close()
    more = len(rows) > limit
    rows = rows[:limit]
    for row in rows:
        if as_json:
            click.echo(json.dumps({"at": row.at_utc.isoformat(), "kind": row.kind,
                                   "subject": row.subject, "source": row.source,
                                   "detail": row.detail}))  # fmt: skip
            continue
        detail = json.dumps(row.detail, sort_keys=True)
        if len(detail) > 160:
            detail = detail[:157] + "..."
        source = f" from {row.source}" if row.source else ""
        click.echo(f"{row.at_utc:%Y-%m-%d %H:%M:%S} {row.kind:18} {row.subject}{source} {detail}")
    if more:  # never cut short in silence
        click.echo(f"more rows follow: run again with --after {rows[-1].row_id}", err=True)
