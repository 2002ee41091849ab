"""The checks a fleet command passes before its dispatch is taken (agent.service.fleet_commands),
as a table: each refusal with its reason in a rejected ack and nothing handed on; a command
taken hands its dispatch on, authenticated by its key; the last sequence number of each key
outlives a restart."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.service.fleet_commands import FleetCommands
from agent.service.messages import DispatchAck
from agent.service.store import Store
from tests.helpers.nats_fleet import command

NOW = datetime(2026, 12, 7, 18, 0, tzinfo=UTC)
KEY, OTHER_KEY = b"k" * 32, b"o" * 32
DISPATCH = {"event_id": "e1", "kind": "limit", "target_kw": 30.0, "issued_at": NOW.isoformat()}


def _command(seq: int = 1, *, site: str = "site-a", key_id: str = "hub-1", key: bytes = KEY,
             expires_s: float = 60.0) -> bytes:  # fmt: skip
    return command(site, seq, key_id, key, issued_at=NOW,
                   expires_at=NOW + timedelta(seconds=expires_s), dispatch=DISPATCH)  # fmt: skip


@dataclass
class Rig:
    commands_store: Store
    commands: FleetCommands
    handed: list[tuple[dict[str, Any], str, str]]
    acks: list[DispatchAck]


def _rig(store: Store) -> Rig:
    handed: list[tuple[dict[str, Any], str, str]] = []
    acks: list[DispatchAck] = []

    def dispatch(payload: bytes, source: str, authenticated: str) -> str:
        handed.append((json.loads(payload), source, authenticated))
        return "accepted"

    commands = FleetCommands("site-a", {"hub-1": KEY}, store, dispatch=dispatch, ack=acks.append)
    return Rig(store, commands, handed, acks)


def _tampered() -> bytes:
    body = json.loads(_command())
    body["dispatch"]["target_kw"] = 0.0
    return json.dumps(body).encode()


REFUSED = [
    ("not JSON", b"{", "bad JSON"),
    ("an unknown key", _command(key_id="someone"), "unknown key_id someone"),
    ("signed with another key", _command(key=OTHER_KEY), "bad signature (for site-a:fleet)"),
    ("changed after signing", _tampered(), "bad signature"),
    ("for another site", _command(site="site-b"), "bad signature (for site-a:fleet)"),
    ("expired", _command(expires_s=-1), "expired at 2026-12-07T17:59:59+00:00; not applied"),
]


@pytest.mark.parametrize(("payload", "reason"), [(p, r) for _, p, r in REFUSED],
                         ids=[name for name, _, _ in REFUSED])  # fmt: skip
def test_a_command_is_refused_with_its_reason(tmp_path: Path, payload: bytes, reason: str) -> None:
    store = Store(tmp_path / "db.sqlite3")
    rig = _rig(store)
    assert rig.commands.take(payload, NOW) == "rejected"
    store.close()
    assert rig.handed == []
    (ack,) = rig.acks
    assert ack.status == "rejected"
    assert reason in ack.reason, ack.reason


def test_a_command_hands_its_dispatch_on_once_and_the_sequence_outlives_a_restart(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "db.sqlite3")
    rig = _rig(store)
    assert rig.commands.take(_command(1), NOW) == "accepted"
    assert rig.handed == [(DISPATCH, "fleet", "fleet/hub-1")]
    assert rig.commands.take(_command(1), NOW) == "rejected"  # the same again
    assert "replayed or out of order: seq 1 from hub-1 after 1" in rig.acks[-1].reason
    assert rig.commands.take(_command(3), NOW) == "accepted"  # a gap is fine: ordered, not dense
    store.close()
    again = _rig(Store(tmp_path / "db.sqlite3"))  # a restart
    assert again.commands.take(_command(2), NOW) == "rejected"
    assert "seq 2 from hub-1 after 3" in again.acks[-1].reason
    assert again.commands.take(_command(4), NOW) == "accepted"
    again.commands_store.close()
