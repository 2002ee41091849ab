"""sd_notify(3) without a library: one datagram to $NOTIFY_SOCKET (no-op outside systemd)."""

from __future__ import annotations

import os
import socket

__all__ = ["notify", "watchdog_interval_s"]


def notify(state: str) -> bool:
    """Send `state` ("READY=1", "WATCHDOG=1", "STOPPING=1") to systemd; False when not under it."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError:
        return False
    return True


def watchdog_interval_s() -> float | None:
    """How often to kick systemd's watchdog: half of WatchdogSec ($WATCHDOG_USEC), as sd_watchdog_
    enabled(3) advises; None when no watchdog is set (or it is meant for another process)."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(int(usec), 1) / 2e6
    except ValueError:
        return None
