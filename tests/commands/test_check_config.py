"""`gridflex check-config` through the installed console script."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers.cli import gridflex
from tests.helpers.config_cases import BROKEN, ENV, EXAMPLES, EXPECTED_PROBLEMS
from tests.helpers.peers import free_port


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_is_accepted_with_a_summary(path: Path) -> None:
    result = gridflex("check-config", "--away", str(path), env=ENV)
    assert result.returncode == 0, result.stderr
    assert "breakeven $/MWh" in result.stdout
    assert "OK" in result.stdout
    assert ENV["GRIDFLEX_MQTT_PASSWORD"] not in result.stdout + result.stderr


def test_the_summary_gives_kw_and_breakeven_per_class() -> None:
    result = gridflex("check-config", "--away", "deploy/examples/west-50mw.yaml", env=ENV)
    rows = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if "│" in line}
    assert "35,280.0" in rows["s21"]  # 10,080 outlets x 3.5 kW
    assert "114.33" in rows["s21"]  # 49 $/PH/day less 2 % at 17.5 J/TH
    assert "never curtailed" in rows["controls"]


def test_a_broken_file_exits_2_and_names_every_problem(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(BROKEN)
    result = gridflex("check-config", str(site))
    assert result.returncode == 2
    assert f"{len(EXPECTED_PROBLEMS)} problems" in result.stderr
    for line, path, _ in EXPECTED_PROBLEMS:
        assert f"site.yaml:{line}: {path}:" in result.stderr
    assert "(got 'blue')" in result.stderr


def test_a_missing_secret_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRIDFLEX_MQTT_PASSWORD", raising=False)
    result = gridflex("check-config", "--away", "deploy/examples/small-site.yaml")
    assert result.returncode == 2
    assert "environment variable GRIDFLEX_MQTT_PASSWORD is not set" in result.stderr


SECRET = "s3cret-value-that-must-never-print-0123456789"
LEAKY = """
site: {id: leak}
classes: {c: {priority: critical}}
devices: [{id: d, kind: other, class: c, rated_kw: 1}]
mqtt: {pasword: "${GF_SECRET}", port: "${GF_SECRET}", hmac_secret: "short-${GF_SECRET2}",
       tls: {ca_file: "/nonexistent/${GF_SECRET}"}}
"""


def test_no_output_of_a_failing_check_config_or_run_shows_a_secret(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(LEAKY)
    env = {**os.environ, "GF_SECRET": SECRET, "GF_SECRET2": "x"}
    for args in (("check-config", str(site)), ("run", "--config", str(site))):
        done = gridflex(*args, env=env)
        assert done.returncode != 0, args
        output = done.stdout + done.stderr
        assert "mqtt.pasword" in output  # the typo is named ...
        assert SECRET not in output, args  # ... and what came from the environment is not
        assert SECRET[:12] not in output, args


def test_a_yaml_alias_bomb_is_refused_before_it_is_built(tmp_path: Path) -> None:
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    site = tmp_path / "bomb.yaml"
    site.write_text("\n".join(lines) + "\n")  # 350 bytes, 387 million nodes expanded
    done = gridflex("check-config", str(site))
    assert done.returncode != 0
    assert "aliases (*name) expand to more than" in done.stdout + done.stderr


STARTS_BADLY = """
site: {{id: pre}}
classes: {{c: {{priority: critical}}, m: {{priority: interruptible,
           economics: {{kind: fixed, value_usd_per_mwh: 50}}}}}}
devices:
  - {{id: d, kind: other, class: c, rated_kw: 1}}
  - {{id: pdu, kind: pdu_outlet, class: m, count: 2, rated_kw: 3,
     driver: {{type: modbus, host: 127.0.0.1, profile: {profile}}}}}
prices: {{source: replay}}
mqtt: {{host: 127.0.0.1, tls: {{ca_file: /nonexistent/ca.pem}}}}
"""


def test_check_config_refuses_what_run_would_refuse_at_start(tmp_path: Path) -> None:
    cases = [
        ("rack_pdu_swtiched", "no device profile 'rack_pdu_swtiched'"),
        ("../../etc/passwd", "neither a shipped profile's name"),
    ]
    for profile, fragment in cases:
        site = tmp_path / "site.yaml"
        site.write_text(STARTS_BADLY.format(profile=profile))
        done = gridflex("check-config", str(site))
        assert done.returncode == 2
        assert fragment in done.stderr
        assert "prices.replay_path is required" in done.stderr
        assert "mqtt.tls.ca_file: no such file" in done.stderr


def test_check_config_refuses_duplicate_keys_bad_hosts_and_binary_files(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    cases = [
        (b"site: {id: a}\nsite: {id: b}\n", "duplicate key 'site' on line 2 (first on line 1)"),
        (b"site: {id: a}\nclasses: {c: {priority: critical}}\ndevices: [{id: d, kind: other, "
         b"class: c, rated_kw: 1, driver: {type: modbus, host: 127.0.0.999, profile: x}}]\n",
         "'127.0.0.999' is neither an IP address nor a host name"),
        (b"\x00\x01\xff\xfe binary", "not a UTF-8 text file"),
    ]  # fmt: skip
    for content, fragment in cases:
        site.write_bytes(content)
        done = gridflex("check-config", "--away", str(site))
        assert done.returncode == 2, content
        assert fragment in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


def test_a_secret_written_in_the_file_is_warned_about_and_reading_commands_need_no_secret(
    tmp_path: Path,
) -> None:
    site = tmp_path / "site.yaml"
    db = tmp_path / "db.sqlite3"
    site.write_text(
        "site: {id: w}\nclasses: {c: {priority: critical}}\n"
        "devices: [{id: d, kind: other, class: c, rated_kw: 1}]\nprices: {source: none}\n"
        "mqtt: {password: literal-password, hmac_secret: '${GF_UNSET_KEY}'}\n"
        f'service: {{database: "{db}"}}\n'
    )
    done = gridflex("audit", "--config", str(site), "--since", "1h")
    assert "GF_UNSET_KEY" not in done.stderr  # audit reads service.database alone
    assert "no database at" in done.stderr
    site.write_text(site.read_text().replace("'${GF_UNSET_KEY}'", "'${GF_KEY}'"))
    done = gridflex("check-config", "--away", str(site), env={"GF_KEY": "k" * 32})
    assert done.returncode == 0, done.stderr
    assert "mqtt.password is written in the site file" in done.stdout
    assert "mqtt.hmac_secret is written" not in done.stdout


def test_status_says_so_when_no_service_answers(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(
        "site: {id: quiet}\nclasses: {c: {priority: critical}}\n"
        "devices: [{id: d, kind: other, class: c, rated_kw: 1}]\n"
        f"mqtt: {{host: 127.0.0.1, port: {free_port()}}}\n"
        f'service: {{database: "{tmp_path / "db.sqlite3"}"}}\n'
    )
    done = gridflex("status", "--config", str(site), "--wait-s", "1")
    assert done.returncode == 1
    assert "no telemetry within 1 s: is `gridflex run` running?" in done.stderr
    assert "Traceback" not in done.stderr
