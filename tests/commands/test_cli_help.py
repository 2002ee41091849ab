"""`gridflex --help` answers without importing the commands (fast on a small box), and what it
lists is each command's own help."""

from __future__ import annotations

import importlib
import subprocess
import sys

from agent.cli import _COMMANDS, SHORT_HELP


def test_the_listed_help_is_each_commands_own_first_sentence() -> None:
    assert set(SHORT_HELP) == set(_COMMANDS)
    for name, target in _COMMANDS.items():
        module, attr = target.split(":")
        command = getattr(importlib.import_module(module), attr)
        text = " ".join((command.help or "").split())
        assert text.startswith(SHORT_HELP[name].rstrip(".")), name


def test_help_imports_no_command_module() -> None:
    probe = (
        "import sys; from agent.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('pandas', 'pymodbus', 'paho', 'agent.app') if m in sys.modules]\n"
        "print('HEAVY=' + ','.join(heavy))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True, timeout=60)  # fmt: skip
    assert done.stdout.strip().splitlines()[-1] == "HEAVY=", done.stdout
