"""What `gridflex run` would refuse at start, found without starting: every device's driver
built as run builds it (profiles loaded, addresses parsed), the price source opened (a replay
file read and checked row by row), the TLS files present. `gridflex check-config` runs it, so
whatever run refuses, check-config refuses first. Nothing is connected to."""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import replace
from pathlib import Path

from adapters.transport.modbus_pool import ModbusPool
from adapters.transport.mqtt_session import MqttSession
from agent.app.drivers import build_drivers
from agent.app.mqtt_link import session_settings
from agent.app.prices import price_source
from agent.config import SiteConfig
from agent.errors import GridflexError
from agent.ports import utc_now

__all__ = ["database_problems", "preflight"]


def preflight(config: SiteConfig, *, on_site_host: bool = True) -> list[str]:
    """Every problem found, in words. `on_site_host=False` (checking a file away from its site)
    skips what only the site's host has: TLS files, credentials in the environment, the live
    price source."""
    problems = database_problems(config.service.database)
    session = None
    if config.mqtt is not None:
        tls = config.mqtt.tls
        files = [] if tls is None or not on_site_host else [tls.ca_file, tls.cert_file,
                                                             tls.key_file]  # fmt: skip
        for name, path in zip(("ca_file", "cert_file", "key_file"), files, strict=False):
            if path is not None and not Path(path).is_file():
                problems.append(f"mqtt.tls.{name}: no such file {path}")
        settings = session_settings(config.mqtt, config.topic_prefix, "check")
        if not on_site_host:
            settings = replace(settings, tls=None)
        if not problems:
            try:
                session = MqttSession(settings)
            except (GridflexError, OSError, ValueError) as exc:
                problems.append(f"mqtt: {exc}")
    try:
        build_drivers(config, ModbusPool(), mqtt=session, clock=utc_now)
    except (GridflexError, OSError, ValueError) as exc:
        problems.append(f"devices: {exc}")
    try:
        if on_site_host or config.prices.source == "replay":
            price_source(config)
    except (GridflexError, OSError, ValueError) as exc:
        problems.append(f"prices: {exc}")
    return problems


def database_problems(database: Path) -> list[str]:
    """The state directory must be the running user's to write (SQLite adds its -wal and -shm
    files beside the database): the problem and the one-line fix, or nothing."""
    if str(database) == ":memory:":
        return []
    if database.exists():
        if not os.access(database, os.R_OK | os.W_OK):
            return [f"service.database: {database} is not writable by {_me()}; as root: "
                    f"chown {_owner()} {database}"]  # fmt: skip
        folder = database.parent
    else:
        folder = database.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
    if os.access(folder, os.W_OK | os.X_OK):
        return []
    wanted = database.parent
    return [f"service.database: {folder} is not writable by {_me()}; as root: "
            f"install -d -o {_owner().replace(':', ' -g ')} -m 0750 {wanted}"]  # fmt: skip


def _me() -> str:
    uid = os.geteuid()
    try:
        return f"user {pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _owner() -> str:
    """user:group of the running process, as chown and install -o/-g take them."""
    try:
        user = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        user = str(os.geteuid())
    try:
        group = grp.getgrgid(os.getegid()).gr_name
    except KeyError:
        group = str(os.getegid())
    return f"{user}:{group}"
