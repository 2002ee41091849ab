"""What deploy/ ships is valid where it goes: the environment file as systemd reads an
EnvironmentFile (systemd.exec(5): NAME=value lines, comments on lines of their own, no shell),
and the units run commands that exist."""

from __future__ import annotations

import re
from pathlib import Path

from agent.cli import _COMMANDS

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=(?P<value>.*)$")


def test_the_environment_file_example_is_one_assignment_a_line_without_inline_comments() -> None:
    names = []
    for number, line in enumerate((DEPLOY / "gridflex.env.example").read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith(("#", ";")):
            continue
        match = _ASSIGNMENT.match(line)
        assert match, f"line {number} is no NAME=value: {line!r}"
        value = match["value"]
        # systemd keeps a '#' after a value as part of it, and does not split on spaces
        assert "#" not in value, f"line {number}: a comment after a value becomes the secret"
        assert " " not in value.strip(), f"line {number}: one assignment a line"
        names.append(line.split("=", 1)[0])
    assert {"GRIDFLEX_MQTT_PASSWORD", "GRIDFLEX_DISPATCH_HMAC"} <= set(names)


def test_the_units_run_gridflex_commands_that_exist() -> None:
    for unit in ("gridflex.service", "gridflex-node.service"):
        text = (DEPLOY / unit).read_text().replace("\\\n", " ")
        start = re.search(r"^ExecStart=\S*gridflex (\S+)", text, re.MULTILINE)
        assert start, unit
        assert start[1] in _COMMANDS, (unit, start[1])
