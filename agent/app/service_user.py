"""Run a command as the service runs: with its environment file and as its user.

`sudo gridflex --env-file /etc/gridflex/gridflex.env --user gridflex check-config ...` reads the
secrets file as root (it is 0600, root's), then drops to the service user before anything else
happens, so check-config, a trial run, status, events and audit see exactly what systemd's
`EnvironmentFile=` and `User=` give the service: the same variables, the same permissions on
the state directory. The file is read the way systemd reads an EnvironmentFile: one NAME=value a
line, `#` and `;` comments on lines of their own, optional single or double quotes.
"""

from __future__ import annotations

import os
import pwd
import re
from pathlib import Path

__all__ = ["ServiceUserError", "become", "read_env_file"]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ServiceUserError(Exception):
    """An env file that cannot be read, or a user that cannot be become; the text says why."""


def read_env_file(path: Path) -> dict[str, str]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ServiceUserError(f"--env-file {path}: {exc.strerror or exc}") from None
    found: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        name, sep, value = line.partition("=")
        name = name.strip()
        if not sep or not _NAME.match(name):
            raise ServiceUserError(f"--env-file {path}:{number}: not NAME=value")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        found[name] = value
    return found


def become(user: str) -> None:
    """Drop to `user` (its uid, gid and groups, HOME and USER) or fail saying why. Already being
    that user is fine; only root can become another."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise ServiceUserError(f"--user {user}: no such user") from None
    if os.geteuid() == entry.pw_uid:
        return
    if os.geteuid() != 0:
        me = pwd.getpwuid(os.geteuid()).pw_name
        raise ServiceUserError(f"--user {user}: only root can switch users (this is {me}); "
                               "run it with sudo")  # fmt: skip
    os.initgroups(user, entry.pw_gid)
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    os.environ.update(HOME=entry.pw_dir, USER=user, LOGNAME=user)
