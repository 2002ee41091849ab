"""`gridflex --env-file F --user U`: the environment file read as systemd reads one, then the
service user become; each refusal is one line naming the problem."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest
from click.testing import CliRunner

from agent.app.service_user import ServiceUserError, become, read_env_file
from agent.cli import main


def test_an_env_file_is_read_as_systemd_reads_one(tmp_path: Path) -> None:
    env = tmp_path / "gridflex.env"
    lines = ["# the broker", "GRIDFLEX_MQTT_PASSWORD=pw with spaces", "; a comment", "",
             'QUOTED="a b"', "SINGLE='c'", "TRAILING=x # stays part of the value"]  # fmt: skip
    env.write_text("\n".join(lines) + "\n")
    assert read_env_file(env) == {
        "GRIDFLEX_MQTT_PASSWORD": "pw with spaces",
        "QUOTED": "a b",
        "SINGLE": "c",
        "TRAILING": "x # stays part of the value",
    }


@pytest.mark.parametrize(
    ("text", "problem"),
    [("export A=1\n", ":1: not NAME=value"), ("A=1\nnonsense\n", ":2: not NAME=value")],
)
def test_a_bad_line_is_refused_with_its_number(tmp_path: Path, text: str, problem: str) -> None:
    env = tmp_path / "bad.env"
    env.write_text(text)
    with pytest.raises(ServiceUserError, match=problem):
        read_env_file(env)


def test_the_env_file_reaches_the_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = tmp_path / "gridflex.env"
    env.write_text("GRIDFLEX_DISPATCH_HMAC=" + "k" * 40 + "\n")
    monkeypatch.delenv("GRIDFLEX_DISPATCH_HMAC", raising=False)
    site = tmp_path / "site.yaml"
    site.write_text(
        "site: {id: t}\nclasses:\n  m: {priority: interruptible, economics: {kind: fixed, "
        "value_usd_per_mwh: 60}}\ndevices:\n  - {id: d, kind: miner, class: m, rated_kw: 3}\n"
        f"mqtt: {{hmac_secret: '${{GRIDFLEX_DISPATCH_HMAC}}'}}\nservice: {{database: "
        f"'{tmp_path / 'db.sqlite3'}'}}\nprices: {{source: none}}\n"
    )
    without = CliRunner().invoke(main, ["check-config", "--away", str(site)])
    assert without.exit_code == 2
    assert "GRIDFLEX_DISPATCH_HMAC" in without.output
    with_it = CliRunner().invoke(main, ["--env-file", str(env), "check-config", "--away",
                                        str(site)])  # fmt: skip
    assert with_it.exit_code == 0, with_it.output
    os.environ.pop("GRIDFLEX_DISPATCH_HMAC", None)


def test_an_unreadable_env_file_and_an_unknown_user_are_one_line_each(tmp_path: Path) -> None:
    missing = CliRunner().invoke(main, ["--env-file", str(tmp_path / "none.env"), "events"])
    assert missing.exit_code == 2
    assert "none.env" in missing.output
    assert "Traceback" not in missing.output
    nobody = CliRunner().invoke(main, ["--user", "no-such-user-gfx", "events"])
    assert nobody.exit_code == 2
    assert "--user no-such-user-gfx: no such user" in nobody.output


def test_being_the_user_already_is_fine() -> None:
    become(pwd.getpwuid(os.geteuid()).pw_name)  # no switch, no error
